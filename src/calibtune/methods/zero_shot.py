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


def query_sequences(ctx: CellContext, settings: ZeroShotConfig):
    """The zero-shot query on T's evaluation answers and on the calibration sample, and its option tokens."""
    from calibtune.estimators.lora_prompt import encode_queries
    from calibtune.estimators.query import option_token_ids

    lm = ctx.model()
    questions = ctx.inputs.eval + ctx.calibration_sample()
    return (encode_queries(lm.tokenizer, *ctx.prompts(questions), settings.query),
            option_token_ids(lm.tokenizer, settings.query, settings.options))


def make_cell(ctx: CellContext) -> CellScores:
    """P(yes) of the base model on T's evaluation answers, and on a calibration sample for its temperature.

    Read through the estimator model's shared base readings: when LoRA + Prompt of the same
    (E, T) ran first with the same query, its base-model pass has read these sequences already.
    """
    from calibtune.estimators.lora_prompt import BaseReadings
    from calibtune.estimators.query import p_yes

    settings = ctx.settings
    assert isinstance(settings, ZeroShotConfig)
    seqs, tokens = query_sequences(ctx, settings)
    readings = ctx.shared.setdefault("base_readings", BaseReadings())
    two_way, _ = readings.read(ctx.model(), seqs, tokens, answers=False, batch_size=ctx.study.batch_size)
    p_all = p_yes(two_way)
    n = len(ctx.inputs.eval)
    cal = len(seqs) - n
    return CellScores(p_all[:n], p_all[n:] if cal else None, ctx.labels(ctx.calibration_sample()) if cal else None)


METHOD = Method(name="zero_shot", label="Zero-shot query", make_cell=make_cell, config=ZeroShotConfig,
                study_settings=("zero_shot_calibration",))
