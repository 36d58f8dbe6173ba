"""How estimators hold out part of their training answers (one way), and how they may weight the rest."""

from __future__ import annotations

from collections.abc import Sequence

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


def balanced_weights(labels: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Example weights under which every group (dataset) has as much weight on its right answers as on its
    wrong ones, so that which group an answer comes from says nothing about whether it is right.

    Weights are ``0.5 / share`` of the example's class within its group, scaled to average 1; a group
    whose answers are all right (or all wrong) keeps weight 1, having no balance to restore.
    """
    y = np.asarray(labels).astype(int)
    g = np.asarray(list(groups))
    w = np.ones(len(y), dtype=np.float64)
    for group in np.unique(g):
        members = g == group
        share = y[members].mean()
        if 0 < share < 1:
            w[members] = np.where(y[members] == 1, 0.5 / share, 0.5 / (1 - share))
    return w / w.mean()
