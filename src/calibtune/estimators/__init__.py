"""Fitted estimators, and the one way to load a saved one: ``load_estimator``.

A saved estimator folder (``estimators/<method>/<E>__on__<T>`` in a run folder) holds the
method's JSON (every setting, and how its training answers were made) beside its weights
(safetensors). Loaded onto its estimator model, it is an ``AnswerEstimator``:
``estimate(questions, answers) -> P(correct)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from calibtune.errors import CalibtuneError, first_line
from calibtune.estimators.base import AnswerEstimator, check_estimator_model

if TYPE_CHECKING:
    from calibtune.models import LoadedModel


def estimator_info(folder: Path) -> tuple[str, dict]:
    """The method and saved settings of an estimator folder."""
    from calibtune.methods import METHODS

    folder = Path(folder)
    saved = {m.saved_file: name for name, m in METHODS.items() if m.saved_file}
    for file_name, method in saved.items():
        path = folder / file_name
        if path.is_file():
            try:
                return method, json.loads(path.read_text())
            except ValueError as exc:
                raise CalibtuneError(f"{path} is not valid JSON: {first_line(exc)}") from exc
    raise CalibtuneError(f"{folder} holds no saved estimator (none of {', '.join(saved)})")


def load_estimator(folder: Path, lm: LoadedModel | None = None, dtype: str = "auto",
                   device: str = "auto") -> AnswerEstimator:
    """A saved estimator on its estimator model (loaded from the reference the estimator recorded,
    unless ``lm`` is given); the model is checked against the recorded fingerprint."""
    from calibtune.methods import METHODS
    from calibtune.models import load_model

    method, info = estimator_info(folder)
    if lm is None:
        name = info.get("estimator_model")
        if not name:
            raise CalibtuneError(f"{folder}: the estimator does not record its estimator model")
        lm = load_model(name, dtype=dtype, device=device)
    check_estimator_model(info, lm, folder)
    return METHODS[method].load(Path(folder), info, lm)


__all__ = ["AnswerEstimator", "estimator_info", "load_estimator"]
