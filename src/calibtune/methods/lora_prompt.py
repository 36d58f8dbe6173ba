"""LoRA + Prompt (calibration tuning): adapters trained so that the estimator model answers the query well."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from calibtune.methods.adapters import AdapterConfig, adapter_training_set, fit_and_score, study_adapter_config
from calibtune.methods.base import CellContext, CellScores, Method
from calibtune.prompts import DEFAULT_OPTIONS, DEFAULT_QUERY

if TYPE_CHECKING:
    from calibtune.estimators.base import AnswerEstimator
    from calibtune.models import LoadedModel


class LoraPromptConfig(AdapterConfig):
    """The query, and the divergence that keeps the adapted model close to the base model on answer text.

    ``divergence``: ``js`` (Jensen-Shannon), ``forward_kl`` KL(base || adapted) or
    ``reverse_kl`` KL(adapted || base), weighted by ``kl_weight``.
    """

    query: str = DEFAULT_QUERY
    options: tuple[str, str] = DEFAULT_OPTIONS
    kl_weight: float = Field(1.0, ge=0)
    divergence: Literal["js", "forward_kl", "reverse_kl"] = "js"


def make_cell(ctx: CellContext) -> CellScores:
    """Train adapters on T's graded training answers; score T's evaluation answers and the held-out ones."""
    from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries

    lm = ctx.model()
    settings = study_adapter_config(ctx)
    assert isinstance(settings, LoraPromptConfig)
    train = adapter_training_set(ctx, settings)
    y_train = ctx.labels(train)
    seqs = encode_queries(lm.tokenizer, *ctx.prompts(train), settings.query)
    est = LoraPromptEstimator(lm, settings, seed=ctx.study.seed, meta=ctx.meta(len(train)))
    eval_seqs = encode_queries(lm.tokenizer, *ctx.prompts(ctx.inputs.eval), settings.query)
    scores = fit_and_score(ctx, est, seqs, y_train, eval_seqs)
    log = est.log
    ctx.log(f"LoRA + Prompt {ctx.estimator_model} on {ctx.answering_model}: {log.steps} steps, best validation "
            f"loss {log.best_val_loss:.4f} at step {log.best_step}, {log.seconds:.0f} s")
    return scores


def load(folder: Path, info: dict, lm: LoadedModel) -> AnswerEstimator:
    """Saved adapters on their estimator model."""
    from calibtune.estimators.lora_prompt import LoraPromptEstimator

    return LoraPromptEstimator.load(folder, lm)


METHOD = Method(name="lora_prompt", label="LoRA + Prompt", make_cell=make_cell, config=LoraPromptConfig,
                saved_file="lora_prompt.json", load=load)
