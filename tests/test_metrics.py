"""Metrics against independent references: hand-computed cases, loops, and sklearn."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from calibtune import metrics as M


def ece_reference(p, y, n_bins=10):
    """The textbook loop: bins [k/n, (k+1)/n), the last one closed."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        if k == n_bins - 1:
            in_bin = [i for i in range(len(p)) if lo <= p[i] <= hi]
        else:
            in_bin = [i for i in range(len(p)) if lo <= p[i] < hi]
        if not in_bin:
            continue
        conf = sum(p[i] for i in in_bin) / len(in_bin)
        acc = sum(y[i] for i in in_bin) / len(in_bin)
        total += len(in_bin) / len(p) * abs(acc - conf)
    return total


def top_label_reference(p, y, n_bins=10):
    conf = [max(q, 1 - q) for q in p]
    hit = [int((q >= 0.5) == bool(t)) for q, t in zip(p, y, strict=True)]
    return ece_reference(conf, hit, n_bins)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---- ECE -----------------------------------------------------------------------------


def test_ece_hand_computed_one_per_bin():
    p = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
    y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    # each bin holds one example: gaps are p for y=0 and 1-p for y=1
    expected = (
        0.05 + 0.15 + 0.25 + 0.35 + 0.45 + 0.45 + 0.35 + 0.25 + 0.15 + 0.05
    ) / 10
    assert M.ece(p, y) == pytest.approx(expected)
    assert expected == pytest.approx(0.25)


def test_ece_hand_computed_shared_bin():
    # bin [0.8, 0.9): mean p 0.85, accuracy 1/2 -> gap 0.35, weight 2/4
    # bin [0.1, 0.2): mean p 0.1, accuracy 0 -> gap 0.1, weight 1/4
    # bin [0.9, 1.0]: p 1.0, y 1 -> gap 0, weight 1/4
    p = [0.8, 0.9 - 1e-9, 0.1, 1.0]
    y = [1, 0, 0, 1]
    assert M.ece(p, y) == pytest.approx(0.5 * 0.35 + 0.25 * 0.1 + 0.0, abs=1e-8)


def test_ece_bin_edges_are_left_closed():
    # 0.3 belongs to [0.3, 0.4), 1.0 to the last bin, 0.0 to the first
    p = [0.3, 0.3, 1.0, 0.0]
    y = [1, 0, 1, 0]
    assert M.ece(p, y) == pytest.approx(ece_reference(p, y))
    assert M.ece(p, y) == pytest.approx(0.5 * 0.2)


def test_ece_perfectly_calibrated_is_zero():
    assert M.ece([0.5, 0.5, 1.0, 0.0], [1, 0, 1, 0]) == pytest.approx(0.0)


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_ece_matches_loop_reference_on_random_data(rng, n_bins):
    for _ in range(5):
        p = rng.uniform(size=300)
        y = (rng.uniform(size=300) < p**1.5).astype(int)
        assert M.ece(p, y, n_bins=n_bins) == pytest.approx(ece_reference(p, y, n_bins))


def test_ece_on_grid_values_matches_reference(rng):
    # values that sit exactly on bin edges are where float binning goes wrong
    p = rng.choice(np.arange(11) / 10, size=200)
    y = rng.integers(0, 2, size=200)
    assert M.ece(p, y) == pytest.approx(ece_reference(p, y))


# ---- top-label ECE -------------------------------------------------------------------


def test_ece_top_label_hand_computed():
    # p=0.9,y=1: conf .9 hit 1 | p=0.1,y=0: conf .9 hit 1 | p=0.2,y=1: conf .8 hit 0
    # p=0.6,y=0: conf .6 hit 0
    p = [0.9, 0.1, 0.2, 0.6]
    y = [1, 0, 1, 0]
    # bin [0.9,1]: 2 examples, conf .9, acc 1 -> gap .1 ; bin [0.8,0.9): gap .8 ;
    # bin [0.6,0.7): gap .6
    expected = 0.5 * 0.1 + 0.25 * 0.8 + 0.25 * 0.6
    assert M.ece_top_label(p, y) == pytest.approx(expected)


def test_ece_top_label_threshold_half_predicts_correct():
    # p == 0.5 predicts "correct" with confidence 0.5
    assert M.ece_top_label([0.5], [1]) == pytest.approx(0.5)
    assert M.ece_top_label([0.5], [0]) == pytest.approx(0.5)


def test_ece_top_label_matches_reference_on_random_data(rng):
    p = rng.uniform(size=500)
    y = rng.integers(0, 2, size=500)
    assert M.ece_top_label(p, y) == pytest.approx(top_label_reference(p, y))


# ---- AUROC, Brier, NLL against sklearn -----------------------------------------------


def test_auroc_brier_nll_match_sklearn_on_random_data(rng):
    p = rng.uniform(size=400)
    y = (rng.uniform(size=400) < p).astype(int)
    assert M.auroc(p, y) == pytest.approx(roc_auc_score(y, p))
    assert M.brier(p, y) == pytest.approx(brier_score_loss(y, p))
    assert M.nll(p, y) == pytest.approx(log_loss(y, p))


def test_auroc_with_ties_and_all_equal_scores(rng):
    p = rng.choice([0.2, 0.5, 0.8], size=100)
    y = rng.integers(0, 2, size=100)
    assert M.auroc(p, y) == pytest.approx(roc_auc_score(y, p))
    assert M.auroc(np.full(10, 0.7), [0, 1] * 5) == pytest.approx(0.5)


def test_auroc_perfect_and_reversed():
    assert M.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert M.auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


@pytest.mark.parametrize("label", [0, 1])
def test_auroc_one_class_is_nan_with_warning(label):
    with pytest.warns(UserWarning, match="one class"):
        value = M.auroc([0.2, 0.4, 0.9], [label] * 3)
    assert math.isnan(value)


def test_nll_is_finite_at_zero_and_one():
    value = M.nll([0.0, 1.0], [1, 0])  # maximally wrong
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert M.nll([0.0, 1.0], [0, 1]) == pytest.approx(-math.log1p(-1e-7))
    p = np.array([0.0, 1.0, 0.3, 1.0])
    y = np.array([1, 1, 0, 0])
    expected = log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])
    assert M.nll(p, y) == pytest.approx(expected)


def test_brier_one_class_and_extremes():
    assert M.brier([1.0, 0.0], [1, 0]) == 0.0
    assert M.brier([0.1, 0.3], [1, 1]) == pytest.approx((0.81 + 0.49) / 2)


def test_accuracy_and_mean_confidence():
    assert M.accuracy([1, 0, 1, 1]) == 0.75
    assert M.accuracy(np.array([True, False])) == 0.5
    assert M.mean_confidence([0.2, 0.4]) == pytest.approx(0.3)


# ---- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, y, match",
    [
        ([0.1, 0.2], [1], "length"),
        ([], [], "empty"),
        ([0.1, 1.2], [0, 1], r"\[0, 1\]"),
        ([-0.1, 0.5], [0, 1], r"\[0, 1\]"),
        ([0.1, float("nan")], [0, 1], "finite"),
        ([0.1, float("inf")], [0, 1], "finite"),
        ([0.1, 0.2], [0, 2], "0/1"),
        ([0.1, 0.2], [0, float("nan")], "0/1"),
    ],
)
@pytest.mark.parametrize("name", sorted(M.METRICS))
def test_invalid_input_raises_value_error(name, p, y, match):
    with pytest.raises(ValueError, match=match):
        M.METRICS[name](p, y)


def test_accuracy_and_mean_confidence_validate():
    with pytest.raises(ValueError):
        M.accuracy([])
    with pytest.raises(ValueError):
        M.mean_confidence([1.5])


# ---- cell_metrics and metrics_table --------------------------------------------------


def test_cell_metrics_keys_and_values(rng):
    p = rng.uniform(size=50)
    y = rng.integers(0, 2, size=50)
    out = M.cell_metrics(p, y)
    assert list(out) == [
        "n",
        "auroc",
        "ece",
        "ece_top_label",
        "brier",
        "nll",
        "accuracy",
        "mean_p",
    ]
    assert out["n"] == 50
    assert out["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert out["ece"] == pytest.approx(ece_reference(p, y))
    assert out["accuracy"] == pytest.approx(y.mean())
    assert out["mean_p"] == pytest.approx(p.mean())


def _scores():
    rows = []
    cells = {
        ("probe", "E2", "T1"): ([0.9, 0.2, 0.7], [1, 0, 0]),
        ("probe", "E1", "T1"): ([0.8, 0.3, 0.6, 0.1], [1, 0, 1, 0]),
        ("lora", "E1", "T1"): ([0.4, 0.6], [1, 1]),  # one class: AUROC NaN
    }
    for (method, model, trained_on), (p, y) in cells.items():
        for i, (pi, yi) in enumerate(zip(p, y, strict=True)):
            rows.append(
                {
                    "method": method,
                    "model": model,
                    "trained_on": trained_on,
                    "evaluated_on": trained_on,
                    "question_id": f"q{i}",
                    "p_correct": pi,
                    "label": yi,
                }
            )
    return pd.DataFrame(rows), cells


def test_metrics_table_groups_and_sorts():
    scores, cells = _scores()
    with pytest.warns(UserWarning, match="method=lora"):
        table = M.metrics_table(scores)
    assert list(table.columns) == [
        "method",
        "model",
        "trained_on",
        "evaluated_on",
        "n",
        "auroc",
        "ece",
        "ece_top_label",
        "brier",
        "nll",
        "accuracy",
        "mean_p",
    ]
    assert list(zip(table["method"], table["model"], strict=True)) == [
        ("lora", "E1"),
        ("probe", "E1"),
        ("probe", "E2"),
    ]
    for row in table.itertuples():
        p, y = cells[(row.method, row.model, row.trained_on)]
        assert row.n == len(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = M.cell_metrics(p, y)
        for key, value in expected.items():
            got = getattr(row, key)
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(
                value
            )
    assert math.isnan(table.loc[0, "auroc"])


def test_metrics_table_empty_and_missing_columns():
    scores, _ = _scores()
    empty = M.metrics_table(scores.iloc[:0])
    assert empty.empty and "auroc" in empty.columns
    with pytest.raises(ValueError, match="p_correct"):
        M.metrics_table(scores.drop(columns=["p_correct"]))
    bad = scores.copy()
    bad.loc[0, "p_correct"] = 2.0
    with pytest.raises(ValueError, match="method=probe"):
        M.metrics_table(bad)


def test_paired_auroc_difference_brackets_the_point_and_detects_a_real_gap():
    from calibtune.metrics import paired_auroc_difference

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.15, 400), 0, 1)
    noise = rng.uniform(size=400)
    d, lo, hi = paired_auroc_difference(good, noise, y, n_resamples=300)
    assert lo <= d <= hi and lo > 0
    d, lo, hi = paired_auroc_difference(good, good, y, n_resamples=50)
    assert d == lo == hi == 0.0
    assert all(np.isnan(paired_auroc_difference(good, noise, np.ones(400, dtype=int))))
