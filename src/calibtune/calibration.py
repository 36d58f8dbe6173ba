"""Temperature scaling: a post-hoc recalibration of any method's P(correct).

One scalar T is fitted on a held-out calibration split (disjoint from the evaluation
set) by minimising the negative log-likelihood of ``sigmoid(logit(p) / T)``. Being
monotone, it leaves AUROC unchanged and only moves calibration (ECE, Brier, NLL).
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
