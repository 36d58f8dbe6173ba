"""The public face of every fitted estimator: P(correct) of proposed answers to questions.

Each method's saved estimator, loaded onto its estimator model with
``calibtune.estimators.load_estimator``, is an ``AnswerEstimator``: it asks the question
the way its training answers were asked (the prompt template and answer separator it
recorded) and returns P(correct) for each proposed answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from calibtune.records import Question


@runtime_checkable
class AnswerEstimator(Protocol):
    """A fitted estimator bound to its estimator model."""

    def estimate(self, questions: Sequence[Question | str], answers: Sequence[str]) -> np.ndarray:
        """P(correct) of each proposed answer to its question (a Question, or its plain text when the estimator's
        prompt does not show the options); the estimator adds its prompt."""
        ...


def check_estimator_model(info: dict, lm, folder) -> None:
    """Refuse to load a saved estimator onto a model other than the one it was trained on.

    The saved JSON records the estimator model's fingerprint (its weights, or a hub commit),
    so a renamed or moved copy of the same weights loads, and changed weights do not.
    """
    from calibtune.errors import CalibtuneError
    from calibtune.models import model_fingerprint

    recorded = info.get("estimator_model")
    expected = info.get("estimator_fingerprint")
    if expected is None:  # saved by calibtune 0.1, which recorded only the name
        if recorded and recorded != lm.name:
            raise CalibtuneError(f"{folder} was trained on estimator model '{recorded}', not '{lm.name}'")
        return
    actual = model_fingerprint(lm.name)
    if actual != expected:
        raise CalibtuneError(f"{folder} was trained on estimator model '{recorded}' (fingerprint {expected}), "
                             f"not on '{lm.name}' ({actual}): load the model it was trained on")
