"""Sampling consistency: the share of sampled answers equivalent to the greedy one (open-ended only)."""

from __future__ import annotations

from pydantic import Field

from calibtune.methods.base import CellContext, CellScores, Method
from calibtune.settings import Settings


class SamplingConfig(Settings):
    """How many answers are sampled, how hot, and how long."""

    k: int = Field(5, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(24, ge=1)


def make_cell(ctx: CellContext) -> CellScores:
    """Sample k answers per question the way T's answers were asked; compare each with T's greedy answer."""
    from calibtune.generate import GenerationSettings
    from calibtune.open_ended import OpenEndedPrompt, equivalence, sampling_consistency

    settings = ctx.settings
    assert isinstance(settings, SamplingConfig)
    study = ctx.study
    lm = ctx.model()
    cal = ctx.calibration_sample()
    questions = ctx.inputs.eval + cal
    given = [ctx.answers[q.id] for q in questions]
    prompt = OpenEndedPrompt(study.prompt, tuple(ctx.inputs.exemplars), study.open_ended.chat_template)
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=study.batch_size)
    p = sampling_consistency(lm, questions, given, prompt, equivalence(ctx.grader()), settings.k,
                             settings.temperature, study.seed, generation)
    n = len(ctx.inputs.eval)
    return CellScores(p[:n], p[n:], ctx.labels(cal))


METHOD = Method(name="sampling", label="Sampling consistency", make_cell=make_cell, scope="answerer",
                config=SamplingConfig, tasks=frozenset({"open_ended"}),
                study_settings=("zero_shot_calibration", "open_ended"))
