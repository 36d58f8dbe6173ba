"""The one way estimators hold out part of their training answers."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from calibtune.errors import CalibtuneError


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train_indices, val_indices)``; the same labels, fraction and seed give the same split.

    Every estimator uses it for early stopping, and temperature scaling is fitted on the
    same held-out part, so all methods of a cell calibrate on the same answers. A split
    that cannot be stratified (a class with a single answer, or too few answers to hold
    out one of each) is a one-line error.
    """
    y = np.asarray(labels)
    correct, wrong = int((y == 1).sum()), int((y != 1).sum())
    n_val = int(np.ceil(fraction * len(y)))
    problem = (f"cannot hold out a stratified validation split ({fraction:g} of {len(y)} training answers: "
               f"{correct} correct, {wrong} wrong): each class needs at least 2 answers and each part at least "
               "one of each class; train on more answers or change val_fraction")
    if min(correct, wrong) < 2 or not 2 <= n_val <= len(y) - 2:
        raise CalibtuneError(problem)
    try:
        return tuple(train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y))
    except ValueError as exc:  # any other split scikit-learn cannot stratify
        raise CalibtuneError(problem) from exc
