"""The Probe estimator on synthetic features: layer choice, the scikit-learn interface, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from calibtune.errors import CalibtuneError
from calibtune.estimator_settings import ProbeConfig
from calibtune.estimators.probe import ProbeEstimator, _head_p
from calibtune.estimators.splits import validation_split


def _data(n: int, informative_layer: int, seed: int = 0):
    """Three layers of 16-d features; only one layer carries the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3, 16)).astype(np.float32)
    x[:, informative_layer, 0] += 1.5 * (2 * y - 1)
    return x, y


def test_probe_learns_and_auto_picks_the_layer_with_the_best_validation_auroc():
    x, y = _data(600, informative_layer=1)
    xt, yt = _data(300, informative_layer=1, seed=1)
    probe = ProbeEstimator(ProbeConfig(max_epochs=60, folds=1), layers=(4, 8, 12)).fit(x, y)
    assert probe.layer_ == 8 == max(probe.layer_scores_, key=probe.layer_scores_.get)
    p = probe.p_correct(xt)
    assert p.shape == (300,) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(yt, p) > 0.8
    # the recorded validation AUROC is that of the chosen head on the held-out training rows
    val = probe.val_indices_
    _, expected_val = validation_split(y, 0.2, 0)
    np.testing.assert_array_equal(val, expected_val)
    assert probe.layer_scores_[8] == pytest.approx(roc_auc_score(y[val], probe.p_correct(x[val])))
    np.testing.assert_array_equal(probe.held_out_[0], np.sort(val))


def test_the_ensemble_is_the_mean_of_its_fold_heads_and_holds_out_every_answer_once():
    """Each head is the one-head probe trained on the other folds and stopped on its own, seeded seed + k; the
    held-out P(correct) of an answer is its fold's head's, and the layer is chosen on those."""
    from sklearn.model_selection import StratifiedKFold

    x, y = _data(300, informative_layer=1)
    xt, _ = _data(100, informative_layer=1, seed=1)
    config = ProbeConfig(max_epochs=30)
    probe = ProbeEstimator(config, layers=(4, 8, 12), seed=2).fit(x, y)
    assert len(probe.heads_) == 10 and probe.layer_ == 8
    held, p_held = probe.held_out_
    np.testing.assert_array_equal(held, np.arange(300))
    singles = []
    for k, (train, val) in enumerate(StratifiedKFold(10, shuffle=True, random_state=2).split(x, y)):
        single = ProbeEstimator(config.model_copy(update={"layer": 8}), layers=(4, 8, 12), seed=2 + k)
        single.fit(x[train], y[train], x[val], y[val])
        np.testing.assert_allclose(p_held[val], single.p_correct(x[val]), rtol=0, atol=1e-6)
        singles.append(single.p_correct(xt))
    np.testing.assert_allclose(probe.p_correct(xt), np.mean(singles, axis=0), rtol=0, atol=1e-6)
    assert probe.layer_scores_[8] == pytest.approx(roc_auc_score(y, p_held))
    assert probe.layer_scores_[8] == max(probe.layer_scores_.values())


def _one_head_alone(x, y, xv, yv, config: ProbeConfig, seed: int):
    """The reference: one head trained alone, a plain torch loop (the Probe's recipe), returned as a function."""
    import torch

    torch.manual_seed(seed)
    xt = torch.from_numpy(x).float()
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    xt, xvt = (xt - mean) / std, (torch.from_numpy(xv).float() - mean) / std
    yt, yvt = torch.from_numpy(y).float(), torch.from_numpy(yv).float()
    head = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], config.hidden_size), torch.nn.GELU(),
                               torch.nn.Dropout(config.dropout), torch.nn.Linear(config.hidden_size, 1))
    opt = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn, order = torch.nn.BCEWithLogitsLoss(), torch.Generator().manual_seed(seed)
    best, state, since = float("inf"), None, 0
    for _ in range(config.max_epochs):
        head.train()
        for batch in torch.randperm(len(yt), generator=order).split(config.batch_size):
            opt.zero_grad()
            loss_fn(head(xt[batch]).squeeze(-1), yt[batch]).backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            loss = float(loss_fn(head(xvt).squeeze(-1), yvt))
        if loss < best - 1e-5:
            best, since, state = loss, 0, {k: v.clone() for k, v in head.state_dict().items()}
        else:
            since += 1
            if since >= config.patience:
                break
    head.load_state_dict(state)
    head.eval()
    return lambda z: torch.sigmoid(head((torch.from_numpy(z).float() - mean) / std).squeeze(-1)).detach().numpy()


def test_heads_trained_together_are_each_the_head_trained_alone():
    """The ensemble steps its heads together (batched products, each head its own batches, dropout and early
    stopping); each must be the head a plain loop trains alone. 712 answers in ten folds leave heads 640 or
    641 answers, so some heads have a batch more per epoch than others."""
    from sklearn.model_selection import StratifiedKFold

    x, y = _data(712, informative_layer=1)
    xt, _ = _data(100, informative_layer=1, seed=1)
    config = ProbeConfig(layer=8, max_epochs=12, patience=3)
    probe = ProbeEstimator(config, layers=(4, 8, 12), seed=4).fit(x, y)
    sizes = set()
    for k, (train, val) in enumerate(StratifiedKFold(10, shuffle=True, random_state=4).split(x, y)):
        sizes.add(len(train))
        alone = _one_head_alone(x[train, 1], y[train], x[val, 1], y[val], config, seed=4 + k)
        np.testing.assert_allclose(_head_p(probe.heads_[k], xt), alone(xt[:, 1]), rtol=0, atol=1e-5)
    assert sizes == {640, 641}


def test_probe_last_and_fixed_layer():
    x, y = _data(200, informative_layer=2)
    assert ProbeEstimator(ProbeConfig(layer="last", max_epochs=5), layers=(4, 8, 12)).fit(x, y).layer_ == 12
    assert ProbeEstimator(ProbeConfig(layer=4, max_epochs=5), layers=(4, 8, 12)).fit(x, y).layer_ == 4
    with pytest.raises(CalibtuneError, match="not among the extracted layers"):
        ProbeEstimator(ProbeConfig(layer=5), layers=(4, 8, 12)).fit(x, y)


def test_linear_head_agrees_with_logistic_regression():
    x, y = _data(600, informative_layer=0)
    xv, yv = _data(200, informative_layer=0, seed=2)
    xt, yt = _data(400, informative_layer=0, seed=3)
    probe = ProbeEstimator(ProbeConfig(hidden_size=0, max_epochs=200, weight_decay=0.0), layers=(1, 2, 3))
    probe.fit(x, y, xv, yv)
    assert probe.layer_ == 1 and probe.val_indices_ is None  # a validation set given: nothing held out
    reference = LogisticRegression(C=1e6, max_iter=1000).fit(x[:, 0], y).predict_proba(xt[:, 0])[:, 1]
    ours = probe.p_correct(xt)
    # early stopping keeps the head short of the unregularised optimum, but it ranks the same way
    assert abs(roc_auc_score(yt, ours) - roc_auc_score(yt, reference)) < 0.01
    weights = probe.fitted_.head.weight.detach().numpy()[0]
    assert np.argmax(np.abs(weights)) == 0 and weights[0] > 0  # the informative feature, the right sign


def test_scikit_learn_interface():
    x, y = _data(400, informative_layer=1)
    probe = ProbeEstimator(ProbeConfig(max_epochs=20), layers=(4, 8, 12), seed=3)
    assert probe.get_params()["seed"] == 3 and probe.get_params()["config"].max_epochs == 20
    probe.fit(x, y)
    proba = probe.predict_proba(x)
    assert proba.shape == (400, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(proba[:, 1], probe.p_correct(x))
    np.testing.assert_array_equal(probe.predict(x), (proba[:, 1] >= 0.5).astype(int))
    np.testing.assert_array_equal(probe.classes_, [0, 1])
    # clone: the same settings, not fitted; fitting it again gives the same probe
    twin = clone(probe)
    assert twin.get_params()["config"] == probe.config and not hasattr(twin, "fitted_")
    np.testing.assert_array_equal(twin.fit(x, y).p_correct(x), probe.p_correct(x))
    assert probe.set_params(seed=5) is probe and probe.seed == 5
    # CalibratedClassifierCV fits clones on folds and calibrates them
    calibrated = CalibratedClassifierCV(ProbeEstimator(ProbeConfig(max_epochs=10), layers=(4, 8, 12)), cv=3)
    xt, yt = _data(200, informative_layer=1, seed=1)
    p = calibrated.fit(x, y).predict_proba(xt)
    assert p.shape == (200, 2) and len(calibrated.calibrated_classifiers_) == 3
    assert roc_auc_score(yt, p[:, 1]) > 0.8


def test_non_finite_features_are_zeroed_with_a_warning_in_fit_and_predict():
    x, y = _data(200, informative_layer=1)
    probe = ProbeEstimator(ProbeConfig(max_epochs=5), layers=(4, 8, 12)).fit(x, y)
    bad = x[:3].copy()
    bad[0, 1, 0] = np.nan
    bad[1, 0, 2] = np.inf
    with pytest.warns(UserWarning, match="non-finite features in 2 of 3 rows"):
        p = probe.p_correct(bad)
    fixed = np.nan_to_num(bad, nan=0.0, posinf=0.0, neginf=0.0)
    np.testing.assert_array_equal(p, probe.p_correct(fixed))
    assert np.isfinite(p).all()
    with pytest.warns(UserWarning, match="non-finite"):
        ProbeEstimator(ProbeConfig(max_epochs=2), layers=(4, 8, 12)).fit(np.concatenate([bad, x[3:]]), y)


def test_save_load_round_trip(tmp_path):
    x, y = _data(200, informative_layer=1)
    probe = ProbeEstimator(ProbeConfig(max_epochs=20), layers=(4, 8, 12), seed=2, meta={"estimator_model": "m"})
    probe.fit(x, y)
    probe.save(tmp_path / "p")
    info = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert info["chosen_layer"] == probe.layer_ and info["estimator_model"] == "m" and info["seed"] == 2
    assert info["config"] == ProbeConfig(max_epochs=20).model_dump(mode="json")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["probe.json", "probe.safetensors"]
    assert info["heads"] == 10 and len(info["epochs_by_head"]) == 10
    loaded = ProbeEstimator.load(tmp_path / "p")
    np.testing.assert_array_equal(loaded.p_correct(x), probe.p_correct(x))
    assert loaded.meta["estimator_model"] == "m" and loaded.seed == 2 and loaded.config == probe.config
    # a one-head probe saved by an earlier calibtune (no "heads" in its JSON) loads too
    one = ProbeEstimator(ProbeConfig(max_epochs=20, folds=1), layers=(4, 8, 12)).fit(x, y).save(tmp_path / "one")
    info = json.loads((one / "probe.json").read_text())
    for key in ("heads", "epochs_by_head"):
        info.pop(key)
    (one / "probe.json").write_text(json.dumps(info))
    old = ProbeEstimator.load(one)
    assert len(old.heads_) == 1 and "heads" not in old.meta
    np.testing.assert_array_equal(old.p_correct(x), ProbeEstimator(ProbeConfig(max_epochs=20, folds=1),
                                                                   layers=(4, 8, 12)).fit(x, y).p_correct(x))


def test_deterministic_for_a_seed_and_different_for_another():
    x, y = _data(200, informative_layer=1)
    a = ProbeEstimator(ProbeConfig(max_epochs=10), layers=(4, 8, 12)).fit(x, y).p_correct(x)
    b = ProbeEstimator(ProbeConfig(max_epochs=10), layers=(4, 8, 12)).fit(x, y).p_correct(x)
    c = ProbeEstimator(ProbeConfig(max_epochs=10), layers=(4, 8, 12), seed=1).fit(x, y).p_correct(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


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


def test_a_class_with_one_example_is_a_one_line_error():
    x, y = _data(20, informative_layer=1)
    y = np.zeros(20, dtype=int)
    y[3] = 1
    with pytest.raises(CalibtuneError) as err:
        ProbeEstimator(layers=(4, 8, 12)).fit(x, y)
    assert "stratified" in str(err.value) and "1 correct, 19 wrong" in str(err.value)
    # a smaller class with fewer answers than folds: as many heads as it has answers
    y[[5, 7]] = 1
    assert len(ProbeEstimator(ProbeConfig(max_epochs=2), layers=(4, 8, 12)).fit(x, y).heads_) == 3
    assert "\n" not in str(err.value)
    with pytest.raises(CalibtuneError, match="stratified"):
        validation_split(np.array([0, 1, 0, 1, 0]), 0.2, 0)  # too few to hold out one of each class
