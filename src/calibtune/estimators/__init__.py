"""Fitted estimators, and the one way to load a saved one: ``load_estimator``.

A saved estimator folder (``estimators/<method>/<E>__on__<T>`` in a run folder) holds the
method's JSON (every setting, and how its training answers were made) beside its weights
(safetensors). Loaded onto its estimator model, it is an ``AnswerEstimator``:
``estimate(questions, answers) -> P(correct)``. A study also writes the temperature it fitted
for the cell beside it (``temperature.json``, ``StudyTemperature``), which ``calibtune ask`` applies.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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


TEMPERATURE_FILE = "temperature.json"
FITTED_ON = ("calibration set", "held-out answers")


@dataclass(frozen=True)
class StudyTemperature:
    """The temperature a study fitted on top of a cell's estimator (what its ``p_correct_ts`` is), and on what:
    ``fitted_on`` is ``"calibration set"`` (the study's ``calibrate:`` answers, ``answers`` of them) or
    ``"held-out answers"`` (the method's own, disjoint from the evaluation set)."""

    temperature: float
    fitted_on: str
    answers: int | None = None

    def apply(self, p: np.ndarray) -> np.ndarray:
        """P(correct) scaled by this temperature, as the study scaled the cell's evaluation answers."""
        from calibtune.calibration import TemperatureScaler

        return TemperatureScaler(self.temperature).transform(p)


def write_study_temperature(folder: Path, temperature: StudyTemperature) -> None:
    """Record the study's temperature beside a saved estimator (``TEMPERATURE_FILE``)."""
    (Path(folder) / TEMPERATURE_FILE).write_text(json.dumps(asdict(temperature), indent=2))


def study_temperature(folder: Path) -> StudyTemperature | None:
    """The temperature a study recorded beside the estimator in ``folder``; None when there is none (an
    estimator saved outside a study, or a study run with ``temperature_scaling: false``)."""
    path = Path(folder) / TEMPERATURE_FILE
    if not path.is_file():
        return None
    try:
        recorded = StudyTemperature(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CalibtuneError(f"{path} is not a study temperature: {first_line(exc)}") from exc
    t = recorded.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise CalibtuneError(f"{path}: temperature {t!r} is not a number")
    try:
        positive = math.isfinite(float(t)) and t > 0
    except OverflowError:  # an integer past float's range
        positive = False
    if not positive:
        raise CalibtuneError(f"{path}: temperature {t} is not a positive number")
    if recorded.fitted_on not in FITTED_ON:
        raise CalibtuneError(f"{path}: fitted_on {recorded.fitted_on!r} is not one of {', '.join(FITTED_ON)}")
    if recorded.answers is not None and (isinstance(recorded.answers, bool) or not isinstance(recorded.answers, int)):
        raise CalibtuneError(f"{path}: answers {recorded.answers!r} is not a count")
    return recorded


__all__ = ["AnswerEstimator", "StudyTemperature", "estimator_info", "load_estimator", "study_temperature",
           "write_study_temperature"]
