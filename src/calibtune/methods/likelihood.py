"""Two baselines read off the answer's own log-probabilities: sequence likelihood and inverse perplexity."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from calibtune.methods.base import CellContext, CellScores, Method
from calibtune.records import Answer


def _from_answers(score: Callable[[Answer], float]) -> Callable[[CellContext], CellScores]:
    def make_cell(ctx: CellContext) -> CellScores:
        train, evaluation = ctx.inputs.train, ctx.inputs.eval
        p = np.array([score(ctx.answers[q.id]) for q in evaluation])
        return CellScores(p, np.array([score(ctx.answers[q.id]) for q in train]), ctx.labels(train))

    return make_cell


def _likelihood(answer: Answer) -> float:
    from calibtune.open_ended import likelihood_confidence

    return likelihood_confidence(answer)


def _perplexity(answer: Answer) -> float:
    from calibtune.open_ended import perplexity_confidence

    return perplexity_confidence(answer)


LIKELIHOOD = Method(name="likelihood", label="Sequence likelihood", make_cell=_from_answers(_likelihood),
                    scope="answerer", needs_model=False)
PERPLEXITY = Method(name="perplexity", label="Inverse perplexity", make_cell=_from_answers(_perplexity),
                    scope="answerer", needs_model=False)
