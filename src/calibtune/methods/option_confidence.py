"""Option confidence (the paper's "Logits" baseline for multiple choice): the chosen option's share of
probability across the options, read off the answering model's own cloze scores."""

from __future__ import annotations

import numpy as np

from calibtune.methods.base import CellContext, CellScores, Method


def make_cell(ctx: CellContext) -> CellScores:
    """The softmax share of the chosen option; its temperature is fitted on the training answers."""
    from calibtune.answer import option_confidence

    select = ctx.study.select
    train, evaluation = ctx.inputs.train, ctx.inputs.eval
    p = np.array([option_confidence(ctx.answers[q.id], select) for q in evaluation])
    p_cal = np.array([option_confidence(ctx.answers[q.id], select) for q in train])
    return CellScores(p, p_cal, ctx.labels(train))


METHOD = Method(name="option_confidence", label="Option confidence", make_cell=make_cell, scope="answerer",
                tasks=frozenset({"multiple_choice"}), study_settings=("select",), needs_model=False)
