"""Platt scaling and its cross-fitted form: known parameters recovered, no answer recalibrated with its own
label, and a base-rate shift that no temperature undoes taken out."""

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.metrics import roc_auc_score

from calibtune.calibration import PlattScaler, TemperatureScaler, cross_fitted
from calibtune.metrics import ece


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_platt_scaling_recovers_a_known_slope_and_bias_and_matches_an_independent_fit():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 20_000)
    y = (rng.uniform(size=len(z)) < _sigmoid(2 * z - 0.5)).astype(int)
    scaler = PlattScaler.fit(_sigmoid(z), y)

    def nll(ab):
        s = ab[0] * z + ab[1]
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    reference = minimize(nll, x0=[1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    assert scaler.slope == pytest.approx(reference[0], abs=1e-3)
    assert scaler.bias == pytest.approx(reference[1], abs=1e-3)
    assert scaler.slope == pytest.approx(2.0, abs=0.1) and scaler.bias == pytest.approx(-0.5, abs=0.1)
    assert PlattScaler.fit(np.array([0.3, 0.6]), np.array([1, 1])) == PlattScaler()


def test_cross_fitting_never_uses_an_answers_own_label():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 300)
    y = (rng.uniform(size=300) < p).astype(int)
    before = cross_fitted(p, y, folds=5, seed=3)
    for i in (0, 17, 299):
        flipped = y.copy()
        flipped[i] = 1 - flipped[i]
        after = cross_fitted(p, flipped, folds=5, seed=3)
        assert after[i] == before[i]  # its own value is fitted on the other folds only
        assert (after != before).sum() > 0  # while the answers of other folds see the change
    assert np.isnan(cross_fitted(p[:12], np.r_[np.ones(8), np.zeros(4)].astype(int))).all()  # 4 < 5 folds


def test_cross_fitted_platt_removes_a_base_rate_shift_that_no_temperature_can():
    rng = np.random.default_rng(2)
    n = 4_000
    z = rng.normal(0, 1.0, n)
    p = _sigmoid(z)  # what the estimator says
    y = (rng.uniform(size=n) < _sigmoid(z + 1.0)).astype(int)  # answers are right more often than it says
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    best_temperature = min(ece(TemperatureScaler(float(t)).transform(p), y) for t in grid)
    refitted = cross_fitted(p, y)
    assert ece(p, y) > 0.15 and best_temperature > 0.1
    assert ece(refitted, y) < 0.03
    assert roc_auc_score(y, refitted) == pytest.approx(roc_auc_score(y, p), abs=0.01)  # monotone within each fold
