"""Verbalized confidence: the answering model is asked how likely its own answer is to be right."""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from calibtune.methods.base import CellContext, CellScores, Method
from calibtune.settings import Settings
from calibtune.verbalized import VERBALIZED_PROMPT


class VerbalizedConfig(Settings):
    """The question put to the answering model about its answer, and how long its reply may be."""

    prompt: str = VERBALIZED_PROMPT
    max_new_tokens: int = Field(8, ge=1)

    @field_validator("prompt")
    @classmethod
    def _has_fields(cls, prompt: str) -> str:
        if "{question}" not in prompt or "{answer}" not in prompt:
            raise ValueError("the verbalized prompt must contain the fields {question} and {answer}")
        return prompt


def make_cell(ctx: CellContext) -> CellScores:
    """The stated probability on T's evaluation answers and a calibration sample; NaN where none was stated."""
    from calibtune.open_ended import verbalized_confidence

    settings = ctx.settings
    assert isinstance(settings, VerbalizedConfig)
    lm = ctx.model()
    cal = ctx.calibration_sample()
    questions = ctx.inputs.eval + cal
    given = [ctx.answers[q.id] for q in questions]
    p, replies = verbalized_confidence(lm, questions, given, settings.max_new_tokens, ctx.study.batch_size,
                                       settings.prompt)
    ctx.log(f"verbalized {ctx.answering_model}: {int(np.isnan(p).sum())} of {len(p)} replies had no parseable "
            f"probability, e.g. {next((r for r, v in zip(replies, p) if np.isnan(v)), '')!r}")
    n = len(ctx.inputs.eval)
    return CellScores(p[:n], p[n:], ctx.labels(cal))


METHOD = Method(name="verbalized", label="Verbalized", make_cell=make_cell, scope="answerer",
                config=VerbalizedConfig, study_settings=("zero_shot_calibration",), may_leave_out=True)
