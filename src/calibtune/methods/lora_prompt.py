"""LoRA + Prompt (calibration tuning): adapters trained so that the estimator model answers the query well."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calibtune.estimator_settings import LoraPromptConfig
from calibtune.methods.adapters import adapter_training_set, fit_and_score, study_adapter_config
from calibtune.methods.base import CellContext, CellScores, Method

if TYPE_CHECKING:
    from calibtune.estimators.base import AnswerEstimator
    from calibtune.models import LoadedModel


def make_cell(ctx: CellContext) -> CellScores:
    """Train adapters on T's graded training answers; score T's evaluation answers and the held-out ones."""
    return train_cell(ctx, None, "LoRA + Prompt")


def train_cell(ctx: CellContext, readout: int | None, label: str) -> CellScores:
    """LoRA + Prompt's cell, reading the query's answer after the last layer (``readout`` None) or after
    ``readout`` layers."""
    from calibtune.estimators.lora_prompt import BaseReadings, LoraPromptEstimator, encode_queries
    from calibtune.methods.zero_shot import query_sequences

    lm = ctx.model()
    settings = study_adapter_config(ctx)
    assert isinstance(settings, LoraPromptConfig)
    train = adapter_training_set(ctx, settings)
    y_train = ctx.labels(train)
    seqs = encode_queries(lm.tokenizer, *ctx.prompts(train), settings.query)
    est = LoraPromptEstimator(lm, settings, seed=ctx.study.seed, meta=ctx.meta(len(train)), readout=readout)
    eval_seqs = encode_queries(lm.tokenizer, *ctx.prompts(ctx.inputs.eval), settings.query)
    readings = ctx.shared.setdefault("base_readings", BaseReadings())
    zero_shot = ctx.study.zero_shot
    if (readout is None and ctx.pending("zero_shot")
            and (zero_shot.query, zero_shot.options) == (settings.query, settings.options)):
        # the zero-shot query of this (E, T) is still to come and asks the same: one base-model pass reads both
        # (the frozen layers' states of the evaluation answers too, when adapters sit on the upper layers only)
        zs_seqs, tokens = query_sequences(ctx, zero_shot)
        start = est.kept_states_start(readings, list(seqs) + zs_seqs, ctx.parallel)
        readings.read(lm, zs_seqs, tokens, answers=False, batch_size=settings.batch_size * 2, start=start)
    scores = fit_and_score(ctx, est, seqs, y_train, eval_seqs, base=readings, groups=[q.dataset for q in train])
    log = est.log
    at = "" if readout is None else f"read out after layer {readout}, "
    ctx.log(f"{label} {ctx.estimator_model} on {ctx.answering_model}: {at}{log.steps} steps, best validation "
            f"{log.criterion} {log.best_val_loss:.4f} at step {log.best_step}, {log.seconds:.0f} s")
    return scores


def load(folder: Path, info: dict, lm: LoadedModel) -> AnswerEstimator:
    """Saved adapters on their estimator model."""
    from calibtune.estimators.lora_prompt import LoraPromptEstimator

    return LoraPromptEstimator.load(folder, lm)


METHOD = Method(name="lora_prompt", label="LoRA + Prompt", make_cell=make_cell, config=LoraPromptConfig,
                saved_file="lora_prompt.json", load=load, data_parallel=True)
