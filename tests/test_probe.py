"""The Probe estimator on synthetic features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from calibtune.errors import CalibtuneError
from calibtune.estimators.probe import ProbeConfig, ProbeEstimator


def _data(n: int, informative_layer: int, seed: int = 0):
    """Three layers of 16-d features; only one layer carries the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3, 16)).astype(np.float32)
    x[:, informative_layer, 0] += 1.5 * (2 * y - 1)
    return x, y


def test_probe_learns_and_auto_picks_the_informative_layer():
    x, y = _data(600, informative_layer=1)
    xt, yt = _data(300, informative_layer=1, seed=1)
    probe = ProbeEstimator(ProbeConfig(max_epochs=60), layers=(4, 8, 12)).fit(x, y)
    assert probe.layer == 8
    p = probe.predict_proba(xt)
    assert p.shape == (300,) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(yt, p) > 0.8
    assert probe.layer_scores[8] > max(probe.layer_scores[4], probe.layer_scores[12])


def test_probe_last_and_fixed_layer():
    x, y = _data(200, informative_layer=2)
    assert ProbeEstimator(ProbeConfig(layer="last", max_epochs=5), layers=(4, 8, 12)).fit(x, y).layer == 12
    assert ProbeEstimator(ProbeConfig(layer=4, max_epochs=5), layers=(4, 8, 12)).fit(x, y).layer == 4
    with pytest.raises(CalibtuneError, match="not among the extracted layers"):
        ProbeEstimator(ProbeConfig(layer=5), layers=(4, 8, 12)).fit(x, y)


def test_linear_head_and_explicit_validation_set():
    x, y = _data(300, informative_layer=0)
    xv, yv = _data(100, informative_layer=0, seed=2)
    probe = ProbeEstimator(ProbeConfig(hidden_size=0, max_epochs=50), layers=(1, 2, 3)).fit(x, y, xv, yv)
    assert probe.layer == 1


def test_save_load_round_trip(tmp_path):
    x, y = _data(200, informative_layer=1)
    probe = ProbeEstimator(ProbeConfig(max_epochs=20), layers=(4, 8, 12), meta={"estimator_model": "m"}).fit(x, y)
    probe.save(tmp_path / "p")
    info = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert info["chosen_layer"] == probe.layer and info["estimator_model"] == "m"
    assert info["config"]["hidden_size"] == 64
    assert not list(tmp_path.glob("p/*.pkl")) and not list(tmp_path.glob("p/*.pt"))
    loaded = ProbeEstimator.load(tmp_path / "p")
    np.testing.assert_array_equal(loaded.predict_proba(x), probe.predict_proba(x))
    assert loaded.meta["estimator_model"] == "m"


def test_deterministic_for_a_seed():
    x, y = _data(200, informative_layer=1)
    a = ProbeEstimator(ProbeConfig(max_epochs=10), layers=(4, 8, 12)).fit(x, y).predict_proba(x)
    b = ProbeEstimator(ProbeConfig(max_epochs=10), layers=(4, 8, 12)).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)


def test_errors(tmp_path):
    x, y = _data(50, informative_layer=1)
    with pytest.raises(CalibtuneError, match="one class only"):
        ProbeEstimator(layers=(4, 8, 12)).fit(x, np.ones_like(y))
    with pytest.raises(CalibtuneError, match="shape"):
        ProbeEstimator(layers=(4, 8)).fit(x, y)
    with pytest.raises(CalibtuneError, match="not fitted"):
        ProbeEstimator(layers=(4, 8, 12)).predict_proba(x)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "probe.json").write_text("{not json")
    with pytest.raises(CalibtuneError, match="cannot load probe"):
        ProbeEstimator.load(tmp_path / "bad")
