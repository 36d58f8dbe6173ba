"""The zero-shot query: ask the untrained estimator model whether the proposed answer is correct."""

from __future__ import annotations

from calibtune.methods.base import CellContext, CellScores, Method
from calibtune.prompts import DEFAULT_OPTIONS, DEFAULT_QUERY
from calibtune.settings import Settings


class ZeroShotConfig(Settings):
    """The query appended after "question + proposed answer", and its (no, yes) options.

    The defaults are LoRA + Prompt's: the zero-shot query is that method before training.
    """

    query: str = DEFAULT_QUERY
    options: tuple[str, str] = DEFAULT_OPTIONS


def make_cell(ctx: CellContext) -> CellScores:
    """P(yes) of the base model on T's evaluation answers, and on a calibration sample for its temperature."""
    from calibtune.estimators.lora_prompt import encode_queries, query_p_correct
    from calibtune.estimators.query import option_token_ids

    settings = ctx.settings
    assert isinstance(settings, ZeroShotConfig)
    lm = ctx.model()
    tokens = option_token_ids(lm.tokenizer, settings.query, settings.options)
    cal = ctx.calibration_sample()
    seqs = encode_queries(lm.tokenizer, *ctx.prompts(ctx.inputs.eval + cal), settings.query)
    p_all = query_p_correct(lm, seqs, tokens, ctx.study.batch_size,
                            f"zero-shot query {ctx.estimator_model} on {ctx.answering_model}")
    n = len(ctx.inputs.eval)
    return CellScores(p_all[:n], p_all[n:] if cal else None, ctx.labels(cal) if cal else None)


METHOD = Method(name="zero_shot", label="Zero-shot query", make_cell=make_cell, config=ZeroShotConfig,
                study_settings=("zero_shot_calibration",))
