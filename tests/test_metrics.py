"""Metrics against independent references: hand-computed cases, loops, and sklearn."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from calibtune import metrics as M

# The original columns first, in their original order, then the ones added for issue 6.
ALL_METRICS = [
    "auroc",
    "ece",
    "ece_top_label",
    "brier",
    "nll",
    "accuracy",
    "mean_p",
    "auprc",
    "auprc_incorrect",
    "ece_equal_mass",
    "mce",
    "aurc",
    "acc_at_50",
    "acc_at_80",
]


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
    assert list(out) == ["n", *ALL_METRICS]
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
    assert list(table.columns) == ["method", "model", "trained_on", "evaluated_on", "n", *ALL_METRICS]
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


def test_metrics_registry_names():
    assert list(M.METRICS) == ALL_METRICS
    assert M.BINNED_METRICS <= set(M.METRICS)


def test_metrics_table_passes_n_bins():
    scores, cells = _scores()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = M.metrics_table(scores, n_bins=3)
    row = table[(table.method == "probe") & (table.model == "E1")].iloc[0]
    p, y = cells[("probe", "E1", "T1")]
    assert row.ece == pytest.approx(ece_reference(p, y, 3))
    assert row.mce == pytest.approx(M.mce(p, y, n_bins=3))


# ---- AUPRC ---------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_auprc_matches_sklearn(rng, tied):
    from sklearn.metrics import average_precision_score

    for _ in range(5):
        p = rng.choice([0.0, 0.2, 0.5, 0.8, 1.0], size=300) if tied else rng.uniform(size=300)
        y = (rng.uniform(size=300) < p).astype(int)
        assert M.auprc(p, y) == pytest.approx(average_precision_score(y, p))
        assert M.auprc_incorrect(p, y) == pytest.approx(average_precision_score(1 - y, 1 - p))


def test_auprc_hand_computed():
    # sorted by p descending: y = 1, 0, 1, 0 -> precision at the two hits 1/1 and 2/3
    p, y = [0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]
    assert M.auprc(p, y) == pytest.approx((1.0 + 2 / 3) / 2)
    # incorrect class, by 1 - p descending (p ascending): y = 0, 1, 0, 1 -> 1/1 and 2/3
    assert M.auprc_incorrect(p, y) == pytest.approx((1.0 + 2 / 3) / 2)
    # all tied: precision is the prevalence at the single threshold
    assert M.auprc([0.5] * 4, [1, 0, 0, 0]) == pytest.approx(0.25)
    assert M.auprc_incorrect([0.5] * 4, [1, 0, 0, 0]) == pytest.approx(0.75)


def test_auprc_one_class():
    with pytest.warns(UserWarning, match="one class"):
        assert math.isnan(M.auprc([0.2, 0.9], [0, 0]))
    with pytest.warns(UserWarning, match="one class"):
        assert math.isnan(M.auprc_incorrect([0.2, 0.9], [1, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.auprc([0.2, 0.9], [1, 1]) == 1.0  # every threshold is all right answers
        assert M.auprc_incorrect([0.2, 0.9], [0, 0]) == 1.0


# ---- ECE and MCE against torchmetrics ------------------------------------------------


def _torchmetrics_ce(p, y, n_bins, norm):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    metric = tm.BinaryCalibrationError(n_bins=n_bins, norm=norm)
    return float(metric(torch.tensor(p, dtype=torch.float64), torch.tensor(y)))


def _away_from_edges(p, n_bins):
    """torchmetrics bins with torch.linspace edges and puts p == 1 in a bin of its own; keep p off the edges."""
    frac = (p * n_bins) % 1.0
    return p[(frac > 1e-6) & (frac < 1 - 1e-6)]


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_and_mce_match_torchmetrics(rng, n_bins):
    for _ in range(3):
        p = _away_from_edges(rng.uniform(size=400) ** 0.7, n_bins)
        y = (rng.uniform(size=p.size) < p**1.3).astype(int)
        assert M.ece(p, y, n_bins=n_bins) == pytest.approx(_torchmetrics_ce(p, y, n_bins, "l1"), abs=1e-10)
        assert M.mce(p, y, n_bins=n_bins) == pytest.approx(_torchmetrics_ce(p, y, n_bins, "max"), abs=1e-10)


def test_ece_matches_torchmetrics_at_zero_but_not_one():
    # p == 0 is in the first bin for both; p == 1 is its own bin in torchmetrics but
    # shares the last bin [0.9, 1] here, as the docstring says.
    p, y = np.array([0.0, 0.05, 0.95]), np.array([0, 1, 1])
    assert M.ece(p, y) == pytest.approx(_torchmetrics_ce(p, y, 10, "l1"))
    assert M.ece(p, y) == pytest.approx(2 / 3 * abs(0.5 - 0.025) + 1 / 3 * 0.05)
    p, y = np.array([0.95, 1.0]), np.array([1, 0])
    assert M.ece(p, y) == pytest.approx(ece_reference(p, y))
    assert M.ece(p, y) == pytest.approx(abs(0.5 - 0.975))  # one bin [0.9, 1]
    assert _torchmetrics_ce(p, y, 10, "l1") == pytest.approx(0.5 * 0.05 + 0.5 * 1.0)  # two bins there


def test_mce_hand_computed_and_edges():
    # bins [0.1,0.2): gap 0.1 ; [0.8,0.9): mean p 0.85, acc 0.5 -> 0.35 ; [0.9,1]: p 1, y 1 -> 0
    p, y = [0.8, 0.9 - 1e-9, 0.1, 1.0], [1, 0, 0, 1]
    assert M.mce(p, y) == pytest.approx(0.35, abs=1e-8)
    assert M.mce([1.0, 0.0], [1, 0]) == 0.0
    assert M.mce([1.0, 0.0], [0, 1]) == 1.0
    assert M.mce([0.7] * 4, [1, 1, 1, 0]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="n_bins"):
        M.mce([0.5], [1], n_bins=0)


# ---- equal-mass ECE ------------------------------------------------------------------


def equal_mass_reference(p, y, n_bins):
    """Loop reference for distinct p: sorted position s goes to bin floor(s * n_bins / N)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    bins = {}
    for s, i in enumerate(order):
        bins.setdefault(s * n_bins // len(p), []).append(i)
    return sum(len(b) / len(p) * abs(np.mean([y[i] for i in b]) - np.mean([p[i] for i in b])) for b in bins.values())


def test_ece_equal_mass_hand_computed():
    # two bins of two: {0.1, 0.2} gap |0.5 - 0.15| ; {0.3, 0.4} gap |0.5 - 0.35|
    assert M.ece_equal_mass([0.4, 0.1, 0.3, 0.2], [1, 0, 0, 1], n_bins=2) == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)
    # 10 examples in 3 bins: sizes 4, 3, 3 (positions 0-3, 4-6, 7-9)
    p = np.arange(1, 11) / 11
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])
    expected = 0.4 * abs(0.25 - p[:4].mean()) + 0.3 * abs(2 / 3 - p[4:7].mean()) + 0.3 * abs(1.0 - p[7:].mean())
    assert M.ece_equal_mass(p, y, n_bins=3) == pytest.approx(expected)


def test_ece_equal_mass_keeps_ties_together_whatever_the_order(rng):
    # the block of three 0.2s starts at position 0 -> all in bin 0; 0.8 starts at 3 -> bin 1
    p, y = np.array([0.2, 0.2, 0.2, 0.8]), np.array([1, 0, 0, 1])
    expected = 0.75 * abs(1 / 3 - 0.2) + 0.25 * abs(1 - 0.8)
    for _ in range(6):
        perm = rng.permutation(4)
        assert M.ece_equal_mass(p[perm], y[perm], n_bins=2) == pytest.approx(expected)
    # a large tied block fills its bin and leaves later bins empty
    p = rng.choice([0.1, 0.5, 0.9], size=200)
    y = rng.integers(0, 2, size=200)
    perms = [rng.permutation(200) for _ in range(5)]
    values = {round(M.ece_equal_mass(p[perm], y[perm], n_bins=10), 12) for perm in perms}
    assert len(values) == 1
    assert values.pop() == pytest.approx(ece_reference(p, y, 10))  # one bin per distinct value here


@pytest.mark.parametrize("n_bins", [1, 3, 10, 1000])
def test_ece_equal_mass_matches_loop_reference(rng, n_bins):
    p = rng.uniform(size=250)
    y = (rng.uniform(size=250) < p).astype(int)
    assert M.ece_equal_mass(p, y, n_bins=n_bins) == pytest.approx(equal_mass_reference(p, y, n_bins))
    if n_bins == 1:
        assert M.ece_equal_mass(p, y, n_bins=1) == pytest.approx(abs(y.mean() - p.mean()))
    if n_bins >= 250:
        assert M.ece_equal_mass(p, y, n_bins=n_bins) == pytest.approx(np.mean(np.abs(y - p)))


def test_ece_equal_mass_edges():
    assert M.ece_equal_mass([0.0, 1.0], [0, 1]) == 0.0
    assert M.ece_equal_mass([0.0, 1.0], [1, 0]) == 1.0
    assert M.ece_equal_mass([0.5] * 6, [1, 1, 1, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="n_bins"):
        M.ece_equal_mass([0.5], [1], n_bins=0)


# ---- selective prediction ------------------------------------------------------------


def average_over_orderings(p, y, fn):
    """Mean of fn over every ordering of the input, each sorted stably by p descending (breaks ties by order)."""
    import itertools

    values = []
    for perm in itertools.permutations(range(len(p))):
        order = sorted(perm, key=lambda i: -p[i])  # stable: ties keep the permutation's order
        values.append(fn(np.array([y[i] for i in order])))
    return np.mean(values, axis=0)


def naive_risk(y_sorted):
    k = np.arange(1, len(y_sorted) + 1)
    return np.cumsum(1 - y_sorted) / k


def test_risk_coverage_hand_computed():
    # p descending: 0.9 (right), 0.8 (wrong), 0.3 (wrong), 0.1 (right)
    coverage, risk = M.risk_coverage_curve([0.1, 0.8, 0.9, 0.3], [1, 0, 1, 0])
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 2 / 3, 0.5])
    assert M.aurc([0.1, 0.8, 0.9, 0.3], [1, 0, 1, 0]) == pytest.approx((0 + 0.5 + 2 / 3 + 0.5) / 4)
    assert M.accuracy_at_coverage([0.1, 0.8, 0.9, 0.3], [1, 0, 1, 0], 0.5) == pytest.approx(0.5)
    assert M.accuracy_at_coverage([0.1, 0.8, 0.9, 0.3], [1, 0, 1, 0], 0.25) == 1.0
    assert M.accuracy_at_coverage([0.1, 0.8, 0.9, 0.3], [1, 0, 1, 0], 0.3) == pytest.approx(0.5)  # ceil -> 2


def test_risk_coverage_ties_are_a_block():
    # 0.9 right, then a block of 0.8 with one wrong of two, then 0.3 wrong
    p, y = [0.8, 0.3, 0.9, 0.8], [0, 0, 1, 1]
    _, risk = M.risk_coverage_curve(p, y)
    np.testing.assert_allclose(risk, [0.0, 0.5 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(risk, average_over_orderings(p, y, naive_risk))
    assert M.aurc(p, y) == pytest.approx(np.mean(risk))
    assert M.accuracy_at_coverage(p, y, 0.5) == pytest.approx(0.75)


def test_risk_coverage_is_the_mean_over_tie_orderings(rng):
    for _ in range(4):
        p = rng.choice([0.2, 0.6, 0.9], size=6)
        y = rng.integers(0, 2, size=6)
        _, risk = M.risk_coverage_curve(p, y)
        np.testing.assert_allclose(risk, average_over_orderings(list(p), list(y), naive_risk))
        perm = rng.permutation(6)
        np.testing.assert_allclose(M.risk_coverage_curve(p[perm], y[perm])[1], risk)


def test_risk_coverage_without_ties_matches_naive(rng):
    p = rng.uniform(size=300)
    y = (rng.uniform(size=300) < p).astype(int)
    coverage, risk = M.risk_coverage_curve(p, y)
    np.testing.assert_allclose(risk, naive_risk(y[np.argsort(-p)]))
    np.testing.assert_allclose(coverage, np.arange(1, 301) / 300)
    assert M.aurc(p, y) == pytest.approx(naive_risk(y[np.argsort(-p)]).mean())
    top = y[np.argsort(-p)]
    assert M.accuracy_at_coverage(p, y, 0.5) == pytest.approx(top[:150].mean())
    assert M.accuracy_at_coverage(p, y, 0.8) == pytest.approx(top[:240].mean())
    assert M.METRICS["acc_at_50"](p, y) == M.accuracy_at_coverage(p, y, 0.5)
    assert M.METRICS["acc_at_80"](p, y) == M.accuracy_at_coverage(p, y, 0.8)
    assert M.accuracy_at_coverage(p, y, 1.0) == pytest.approx(y.mean())


def test_selective_edges():
    # all-equal scores: a random selector, risk = error rate everywhere
    _, risk = M.risk_coverage_curve([0.5] * 4, [1, 0, 1, 1])
    np.testing.assert_allclose(risk, 0.25)
    assert M.aurc([0.5] * 4, [1, 0, 1, 1]) == pytest.approx(0.25)
    assert M.accuracy_at_coverage([0.5] * 4, [1, 0, 1, 1], 0.5) == pytest.approx(0.75)
    # a single class, and p at 0 / 1
    assert M.aurc([0.0, 1.0, 0.3], [1, 1, 1]) == 0.0
    assert M.aurc([0.0, 1.0, 0.3], [0, 0, 0]) == 1.0
    assert M.aurc([1.0, 0.0], [1, 0]) == pytest.approx(0.25)  # perfect: e + (1 - e) ln(1 - e) would be the limit
    assert M.aurc([0.0, 1.0], [1, 0]) == pytest.approx(0.75)
    assert M.accuracy_at_coverage([0.3], [1], 0.01) == 1.0
    # 0.7 * 10 is 7.000000000000001 in floats: still 7 examples
    p = np.linspace(1, 0.1, 10)
    y = np.array([1] * 7 + [0] * 3)
    assert M.accuracy_at_coverage(p, y, 0.7) == 1.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="coverage"):
            M.accuracy_at_coverage([0.3], [1], bad)


EDGE_CASES = {
    "perfect, at the extremes": ([0.0, 1.0, 1.0, 0.0], [0, 1, 1, 0]),
    "maximally wrong": ([0.0, 1.0, 1.0, 0.0], [1, 0, 0, 1]),
    "all equal": ([0.5] * 5, [1, 0, 1, 0, 1]),
    "one example": ([0.3], [1]),
    "one class": ([0.2, 0.9, 0.4], [1, 1, 1]),
}
NAN = float("nan")
# Worked by hand from each metric's definition (10 bins; NLL clips p to [1e-7, 1 - 1e-7]).
EXPECTED = {
    "auroc": [1.0, 0.0, 0.5, NAN, NAN],
    "ece": [0.0, 1.0, 0.1, 0.7, (0.8 + 0.1 + 0.6) / 3],
    "ece_top_label": [0.0, 1.0, 0.1, 0.7, (0.8 + 0.1 + 0.6) / 3],
    "brier": [0.0, 1.0, 0.25, 0.49, (0.64 + 0.01 + 0.36) / 3],
    "nll": [-math.log1p(-1e-7), -math.log(1e-7), math.log(2), -math.log(0.3),
            -(math.log(0.2) + math.log(0.9) + math.log(0.4)) / 3],
    "accuracy": [0.5, 0.5, 0.6, 1.0, 1.0],
    "mean_p": [0.5, 0.5, 0.5, 0.3, 0.5],
    "auprc": [1.0, 0.5, 0.6, 1.0, 1.0],
    "auprc_incorrect": [1.0, 0.5, 0.4, NAN, NAN],
    "ece_equal_mass": [0.0, 1.0, 0.1, 0.7, (0.8 + 0.1 + 0.6) / 3],
    "mce": [0.0, 1.0, 0.1, 0.7, 0.8],
    # risk at k = 1..N, then its mean: perfect 0, 0, 1/3, 1/2; wrong 1, 1, 2/3, 1/2; tied 0.4 throughout
    "aurc": [5 / 24, 19 / 24, 0.4, 0.0, 0.0],
    "acc_at_50": [1.0, 0.0, 0.6, 1.0, 1.0],
    "acc_at_80": [0.5, 0.5, 0.6, 1.0, 1.0],
}


def test_the_edge_cases_cover_every_metric():
    assert sorted(EXPECTED) == sorted(ALL_METRICS)


@pytest.mark.parametrize("name", ALL_METRICS)
def test_every_metric_on_edge_cases_has_its_known_value(name):
    for (case, (p, y)), expected in zip(EDGE_CASES.items(), EXPECTED[name], strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = M.metric_value(name, p, y)
        if math.isnan(expected):
            assert math.isnan(value), (name, case, value)
        else:
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, case, value)


def test_metric_value_unknown_name():
    with pytest.raises(ValueError, match="unknown metric"):
        M.metric_value("nope", [0.5], [1])
