"""The one way estimators hold out part of their training answers."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train_indices, val_indices)``; the same labels, fraction and seed give the same split.

    Every estimator uses it for early stopping, and temperature scaling is fitted on the
    same held-out part, so all methods of a cell calibrate on the same answers.
    """
    y = np.asarray(labels)
    return tuple(train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y))
