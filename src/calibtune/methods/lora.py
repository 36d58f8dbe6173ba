"""LoRA: the Probe's kind of head on a hidden state, with LoRA adapters on the layers below it, trained jointly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calibtune.estimator_settings import LoraHeadConfig, ProbeConfig
from calibtune.methods.adapters import adapter_training_set, fit_and_score, study_adapter_config
from calibtune.methods.base import CellContext, CellScores, Method

if TYPE_CHECKING:
    from calibtune.estimators.base import AnswerEstimator
    from calibtune.models import LoadedModel


def make_cell(ctx: CellContext) -> CellScores:
    """Train adapters and head on T's graded training answers; score T's evaluation answers."""
    from calibtune.estimators.lora_head import LoraHeadEstimator
    from calibtune.features import answer_sequences

    lm = ctx.model()
    settings = study_adapter_config(ctx)
    assert isinstance(settings, LoraHeadConfig)
    train = adapter_training_set(ctx, settings)
    y_train = ctx.labels(train)
    seqs = answer_sequences(lm, *ctx.prompts(train))
    est = LoraHeadEstimator(lm, settings, seed=ctx.study.seed, meta=ctx.meta(len(train)))
    probe = starting_probe(ctx, settings, est.layer, train, y_train) if settings.init_from_probe else None
    scores = fit_and_score(ctx, est, seqs, y_train, answer_sequences(lm, *ctx.prompts(ctx.inputs.eval)),
                           probe=probe, groups=[q.dataset for q in train])
    log = est.log
    ctx.log(f"LoRA {ctx.estimator_model} on {ctx.answering_model}: layer {est.layer}, {log.steps} steps, best "
            f"validation {log.criterion} {log.best_val_loss:.4f} at step {log.best_step}, {log.seconds:.0f} s")
    return scores


def starting_probe(ctx: CellContext, settings: LoraHeadConfig, layer: int, train, labels):
    """A Probe with the head's size fitted on E's features (at the head's layer) of the answers LoRA trains on,
    with one head and LoRA's validation fraction and seed, so it holds out the same answers LoRA validates on. Its other
    settings are the Probe's defaults: LoRA's cells depend on LoRA's settings alone."""
    from calibtune.estimators.probe import ProbeEstimator
    from calibtune.features import extract_features

    table = ctx.probe_features()
    if layer in table.layers:
        x = table.of(train)[:, [table.layers.index(layer)]]
    else:
        x = extract_features(ctx.model(), *ctx.prompts(train), [layer], token=ctx.study.features.token)
    config = ProbeConfig(layer=layer, hidden_size=settings.hidden_size, dropout=settings.head_dropout,
                         folds=1, val_fraction=settings.val_fraction)
    return ProbeEstimator(config, layers=(layer,), seed=ctx.study.seed).fit(x, labels)


def load(folder: Path, info: dict, lm: LoadedModel) -> AnswerEstimator:
    """Saved adapters and head on their estimator model."""
    from calibtune.estimators.lora_head import LoraHeadEstimator

    return LoraHeadEstimator.load(folder, lm)


METHOD = Method(name="lora", label="LoRA", make_cell=make_cell, config=LoraHeadConfig, saved_file="lora.json",
                load=load, study_settings=("features",), data_parallel=True)
