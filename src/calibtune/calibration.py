"""Post-hoc recalibration of any method's P(correct): temperature scaling and Platt scaling.

Temperature scaling: one scalar T is fitted on a held-out calibration split (disjoint from
the evaluation set) by minimising the negative log-likelihood of ``sigmoid(logit(p) / T)``.
Platt scaling adds a bias, and ``cross_fitted`` fits it out-of-fold on the evaluation
answers themselves. Being monotone, both leave AUROC unchanged and only move calibration
(ECE, Brier, NLL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class TemperatureScaler:
    """``fit(p, y)`` finds the temperature; ``transform(p)`` applies it."""

    temperature: float = 1.0

    @classmethod
    def fit(cls, p: np.ndarray, y: np.ndarray) -> TemperatureScaler:
        """The temperature in [0.05, 20] (searched in log space) that minimises NLL on (p, y)."""
        z, y = _logit(p), np.asarray(y, dtype=np.float64)
        if len(z) == 0 or len(np.unique(y)) < 2:
            return cls(1.0)

        def nll(log_t: float) -> float:
            s = z / np.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, s) - y * s))

        result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        return cls(float(np.exp(result.x)))

    def transform(self, p: np.ndarray) -> np.ndarray:
        """Recalibrated probabilities."""
        return 1.0 / (1.0 + np.exp(-_logit(p) / self.temperature))


@dataclass(frozen=True)
class PlattScaler:
    """Platt scaling on the logit: ``sigmoid(slope * logit(p) + bias)``. Unlike a temperature, the bias
    moves the mean P(correct), so it can undo a base rate that differs between where it was fitted and
    where it is applied; being monotone for a positive slope, it too leaves AUROC unchanged."""

    slope: float = 1.0
    bias: float = 0.0

    @classmethod
    def fit(cls, p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> PlattScaler:
        """The unpenalised logistic regression of y on logit(p), each answer weighted by ``weights`` if given."""
        return cls.fit_logits(_logit(p), y, weights)

    @classmethod
    def fit_logits(cls, z: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> PlattScaler:
        """As ``fit``, from the logits themselves (no clipping of P(correct) near 0 or 1)."""
        from sklearn.linear_model import LogisticRegression

        z, y = np.asarray(z, dtype=np.float64), np.asarray(y)
        if len(z) == 0 or len(np.unique(y)) < 2:
            return cls()
        fitted = LogisticRegression(C=np.inf).fit(z[:, None], y, sample_weight=weights)
        return cls(float(fitted.coef_[0, 0]), float(fitted.intercept_[0]))

    def transform(self, p: np.ndarray) -> np.ndarray:
        """Recalibrated probabilities."""
        return 1.0 / (1.0 + np.exp(-self.transform_logit(_logit(p))))

    def transform_logit(self, z: np.ndarray) -> np.ndarray:
        """Recalibrated logits."""
        return self.slope * np.asarray(z, dtype=np.float64) + self.bias


def cross_fitted(p: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each answer's P(correct) after Platt scaling fitted on the *other* folds of the same answers.

    This is recalibration on labelled answers from the evaluation's own distribution (what a user with a
    few hundred graded answers of the target task can do), with no answer's recalibrated value depending
    on its own label: the folds are drawn from the seed alone, not stratified by label. NaN everywhere
    when a class has fewer than ``folds`` answers.
    """
    from sklearn.model_selection import KFold

    p, y = np.asarray(p, dtype=np.float64), np.asarray(y)
    out = np.full(len(p), np.nan)
    if len(p) == 0 or np.bincount(y.astype(int), minlength=2).min() < folds:
        return out
    for fit_rows, apply_rows in KFold(folds, shuffle=True, random_state=seed).split(p):
        out[apply_rows] = PlattScaler.fit(p[fit_rows], y[fit_rows]).transform(p[apply_rows])
    return out
