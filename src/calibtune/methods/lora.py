"""LoRA: the Probe's kind of head on a hidden state, with LoRA adapters on the layers below it, trained jointly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from calibtune.methods.adapters import AdapterConfig, adapter_training_set, fit_and_score, study_adapter_config
from calibtune.methods.base import CellContext, CellScores, Method

if TYPE_CHECKING:
    from calibtune.estimators.base import AnswerEstimator
    from calibtune.models import LoadedModel


class LoraHeadConfig(AdapterConfig):
    """Which hidden state the head reads, and the head itself."""

    layer: int = Field(-1, ge=-1, description="hidden-state layer; -1 means the middle layer")
    hidden_size: int = Field(64, ge=1)
    head_dropout: float = Field(0.1, ge=0, lt=1)


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
    scores = fit_and_score(ctx, est, seqs, y_train, answer_sequences(lm, *ctx.prompts(ctx.inputs.eval)))
    log = est.log
    ctx.log(f"LoRA {ctx.estimator_model} on {ctx.answering_model}: layer {est.layer}, {log.steps} steps, best "
            f"validation loss {log.best_val_loss:.4f} at step {log.best_step}, {log.seconds:.0f} s")
    return scores


def load(folder: Path, info: dict, lm: LoadedModel) -> AnswerEstimator:
    """Saved adapters and head on their estimator model."""
    from calibtune.estimators.lora_head import LoraHeadEstimator

    return LoraHeadEstimator.load(folder, lm)


METHOD = Method(name="lora", label="LoRA", make_cell=make_cell, config=LoraHeadConfig, saved_file="lora.json",
                load=load)
