"""Bootstrap intervals: the vectorised resample metrics against the scalar ones and sklearn."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from calibtune import bootstrap as B
from calibtune import metrics as M


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _data(rng, n=200, signal=0.3, tied=False):
    y = (rng.uniform(size=n) < 0.6).astype(int)
    p = np.clip(0.5 + signal * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    if tied:
        p = p.round(1)
    return p, y


def _scalar(name, p, y, n_bins=10):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return M.metric_value(name, p, y, n_bins=n_bins)


# ---- vectorised metrics per resample -------------------------------------------------


def test_vectorised_auroc_equals_sklearn_on_each_resample(rng):
    for tied in (False, True):
        p, y = _data(rng, n=300, tied=tied)
        idx = B.resample_indices(len(p), 8, seed=3)
        values = B.resampled_metrics(p, y, idx, ["auroc"])["auroc"]
        for r in range(8):
            assert values[r] == pytest.approx(roc_auc_score(y[idx[r]], p[idx[r]]), abs=1e-12)


def test_vectorised_sklearn_metrics_on_each_resample(rng):
    p, y = _data(rng, n=150, tied=True)
    p[:3] = [0.0, 1.0, 1.0]
    idx = B.resample_indices(len(p), 6, seed=4)
    values = B.resampled_metrics(p, y, idx)
    for r in range(6):
        pr, yr = p[idx[r]], y[idx[r]]
        assert values["auprc"][r] == pytest.approx(average_precision_score(yr, pr))
        assert values["auprc_incorrect"][r] == pytest.approx(average_precision_score(1 - yr, 1 - pr))
        assert values["brier"][r] == pytest.approx(brier_score_loss(yr, pr))
        assert values["nll"][r] == pytest.approx(log_loss(yr, np.clip(pr, M.NLL_EPS, 1 - M.NLL_EPS), labels=[0, 1]))


@pytest.mark.parametrize("n_bins", [3, 10])
@pytest.mark.parametrize("kind", ["uniform", "tied", "small", "extremes"])
def test_every_vectorised_metric_equals_the_scalar_one(rng, kind, n_bins):
    if kind == "small":
        p, y = rng.choice([0.2, 0.5, 0.7], size=7), rng.integers(0, 2, size=7)
    elif kind == "extremes":
        p, y = rng.choice([0.0, 0.5, 1.0], size=40), rng.integers(0, 2, size=40)
    else:
        p, y = _data(rng, n=120, tied=kind == "tied")
    idx = B.resample_indices(len(p), 25, seed=5)
    values = B.resampled_metrics(p, y, idx, n_bins=n_bins)
    assert list(values) == list(M.METRICS)
    for name, arr in values.items():
        assert arr.shape == (25,)
        for r in range(25):
            expected = _scalar(name, p[idx[r]], y[idx[r]], n_bins)
            if math.isnan(expected):
                assert math.isnan(arr[r]), (name, r)
            else:
                assert arr[r] == pytest.approx(expected, abs=1e-10), (name, r)


def test_resampled_metrics_one_class_resamples_are_nan():
    p, y = np.array([0.2, 0.7, 0.9]), np.array([0, 1, 1])
    idx = np.array([[0, 1, 2], [1, 2, 2], [0, 0, 0]])
    values = B.resampled_metrics(p, y, idx, ["auroc", "auprc", "auprc_incorrect", "brier"])
    assert values["auroc"][0] == 1.0 and np.isnan(values["auroc"][1:]).all()
    assert values["auprc"][1] == 1.0 and np.isnan(values["auprc"][2])
    assert np.isnan(values["auprc_incorrect"][1]) and values["auprc_incorrect"][2] == 1.0
    assert np.isfinite(values["brier"]).all()


def test_fallback_loop_for_a_metric_without_a_vectorised_form(rng, monkeypatch):
    p, y = _data(rng, n=50)
    idx = B.resample_indices(50, 10, seed=1)
    fast = B.resampled_metrics(p, y, idx, ["aurc"])["aurc"]
    monkeypatch.delitem(B.VECTORISED, "aurc")
    np.testing.assert_allclose(B.resampled_metrics(p, y, idx, ["aurc"])["aurc"], fast)


def test_resampled_metrics_validation(rng):
    p, y = _data(rng, n=10)
    with pytest.raises(ValueError, match="unknown metric"):
        B.resampled_metrics(p, y, B.resample_indices(10, 2), ["nope"])
    with pytest.raises(ValueError, match="indices"):
        B.resampled_metrics(p, y, np.array([[0, 10]]))
    with pytest.raises(ValueError, match="indices"):
        B.resampled_metrics(p, y, np.array([0, 1]))
    with pytest.raises(ValueError, match="n_resamples"):
        B.resample_indices(10, 0)


# ---- bootstrap_intervals -------------------------------------------------------------


def test_bootstrap_intervals_points_and_brackets(rng):
    p, y = _data(rng, n=300)
    result = B.bootstrap_intervals(p, y, n_resamples=300)
    assert list(result) == list(M.METRICS)
    for name, (point, low, high) in result.items():
        assert point == pytest.approx(_scalar(name, p, y))
        assert low <= high
        assert low - 1e-9 <= point <= high + 1e-9 or name == "mce", name  # max statistics can sit outside
    point, low, high = result["auroc"]
    assert high - low < 0.2


def test_bootstrap_intervals_reproducible_and_seeded(rng):
    p, y = _data(rng, n=150)
    a = B.bootstrap_intervals(p, y, n_resamples=200, seed=11)
    b = B.bootstrap_intervals(p, y, n_resamples=200, seed=11)
    c = B.bootstrap_intervals(p, y, n_resamples=200, seed=12)
    assert a == b
    assert a["auroc"] != c["auroc"]
    np.testing.assert_array_equal(B.resample_indices(150, 5, 11), B.resample_indices(150, 5, 11))


def test_bootstrap_intervals_use_the_same_resamples_for_every_metric(rng):
    p, y = _data(rng, n=80)
    idx = B.resample_indices(80, 100, seed=2)
    values = B.resampled_metrics(p, y, idx, ["auroc", "brier"])
    result = B.bootstrap_intervals(p, y, ["auroc", "brier"], n_resamples=100, seed=2, level=0.9)
    for name in ("auroc", "brier"):
        assert result[name][1:] == pytest.approx(tuple(np.percentile(values[name], [5, 95])))


def test_bootstrap_intervals_undefined_metric():
    p, y = np.linspace(0.1, 0.9, 20), np.ones(20, dtype=int)
    with pytest.warns(UserWarning, match="one class"):
        result = B.bootstrap_intervals(p, y, ["auroc", "brier"], n_resamples=50)
    assert all(math.isnan(v) for v in result["auroc"])
    assert all(math.isfinite(v) for v in result["brier"])


def test_interval_needs_half_the_resamples_valid():
    values = np.r_[np.linspace(0, 1, 5), np.full(5, np.nan)]
    assert B.percentile_interval(values, 0.95) == pytest.approx((0.025, 0.975))
    assert all(math.isnan(v) for v in B.percentile_interval(values[1:], 0.95))  # 4 valid of 9
    assert all(math.isnan(v) for v in B.percentile_interval(np.full(3, np.nan), 0.95))


def test_bootstrap_intervals_skip_one_class_resamples():
    # one wrong answer among 6: about a third of the resamples miss it and are skipped
    p, y = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.array([1, 1, 1, 1, 1, 0])
    idx = B.resample_indices(6, 400, seed=0)
    valid = np.isfinite(B.resampled_metrics(p, y, idx, ["auroc"])["auroc"])
    assert 0.5 < valid.mean() < 0.9
    _, low, high = B.bootstrap_intervals(p, y, ["auroc"], n_resamples=400, seed=0)["auroc"]
    assert low == high == 1.0  # every valid resample ranks the wrong answer last


# ---- paired bootstrap ----------------------------------------------------------------


def test_paired_bootstrap_identical_methods_give_zero(rng):
    p, y = _data(rng, n=200, tied=True)
    result = B.paired_bootstrap(p, p.copy(), y, n_resamples=200)
    for name, (diff, low, high) in result.items():
        assert diff == low == high == 0.0, name


def test_paired_bootstrap_detects_a_better_method(rng):
    y = rng.integers(0, 2, 400)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.15, 400), 0, 1)
    noise = rng.uniform(size=400)
    result = B.paired_bootstrap(good, noise, y, n_resamples=500)
    diff, low, high = result["auroc"]
    assert low <= diff <= high and low > 0
    assert result["brier"][2] < 0  # better is lower
    assert result["aurc"][2] < 0
    assert result["auprc"][1] > 0


def test_paired_bootstrap_matches_paired_auroc_difference_point(rng):
    p_a, y = _data(rng, n=150)
    p_b, _ = _data(rng, n=150, signal=0.1)
    diff = B.paired_bootstrap(p_a, p_b, y, ["auroc"], n_resamples=100)["auroc"][0]
    assert diff == pytest.approx(roc_auc_score(y, p_a) - roc_auc_score(y, p_b))
    assert diff == pytest.approx(M.paired_auroc_difference(p_a, p_b, y, n_resamples=10)[0])


# ---- tables --------------------------------------------------------------------------


def _scores(rng, n=60, subjects=("algebra", "biology", "chemistry")):
    frames = []
    for model in ("E1", "E2"):
        y = (rng.uniform(size=n) < 0.6).astype(int)
        subject = np.array(subjects)[np.arange(n) % len(subjects)]
        for method, signal in (("lora_prompt", 0.4), ("probe", 0.1)):
            p = np.clip(0.5 + signal * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
            frames.append(pd.DataFrame({
                "method": method, "model": model, "trained_on": "T", "evaluated_on": "T",
                "question_id": [f"q{i:03d}" for i in range(n)], "subject": subject, "p_correct": p, "label": y,
            }))
    return pd.concat(frames, ignore_index=True)


def test_bootstrap_table_matches_metrics_table(rng):
    scores = _scores(rng)
    table = B.bootstrap_table(scores, n_resamples=100)
    assert list(table.columns[:5]) == ["method", "model", "trained_on", "evaluated_on", "n"]
    for name in M.METRICS:
        assert {name, f"{name}_low", f"{name}_high"} <= set(table.columns)
    points = M.metrics_table(scores)
    pd.testing.assert_frame_equal(table[points.columns], points, check_dtype=False)
    assert (table["auroc_low"] <= table["auroc_high"]).all()
    # rows sorted per cell by question_id first: shuffling the input changes nothing
    shuffled = B.bootstrap_table(scores.sample(frac=1, random_state=0), n_resamples=100)
    pd.testing.assert_frame_equal(shuffled, table)


def test_bootstrap_table_one_class_cell_warns_with_its_name(rng):
    scores = _scores(rng, n=20)
    scores.loc[scores.model == "E2", "label"] = 1
    with pytest.warns(UserWarning, match="model=E2"):
        table = B.bootstrap_table(scores, n_resamples=50, metrics=["auroc", "ece"])
    e2 = table[table.model == "E2"]
    assert e2[["auroc", "auroc_low", "auroc_high"]].isna().all().all()
    assert e2["ece_low"].notna().all()


def test_bootstrap_table_empty_and_errors(rng):
    scores = _scores(rng, n=10)
    empty = B.bootstrap_table(scores.iloc[:0])
    assert empty.empty and "auroc_high" in empty.columns
    with pytest.raises(ValueError, match="p_correct"):
        B.bootstrap_table(scores.drop(columns=["p_correct"]))
    bad = scores.copy()
    bad.loc[0, "p_correct"] = 2.0
    with pytest.raises(ValueError, match="method=lora_prompt"):
        B.bootstrap_table(bad, n_resamples=10)


def test_paired_table_aligns_by_question(rng):
    scores = _scores(rng)
    table = B.paired_table(scores.sample(frac=1, random_state=1), [("lora_prompt", "probe")], n_resamples=200)
    assert list(table[["a", "b", "model"]].itertuples(index=False, name=None)) == [
        ("lora_prompt", "probe", "E1"), ("lora_prompt", "probe", "E2")]
    assert "accuracy_diff" not in table.columns
    for row in table.itertuples():
        cell = scores[scores.model == row.model]
        a = cell[cell.method == "lora_prompt"].sort_values("question_id")
        b = cell[cell.method == "probe"].sort_values("question_id")
        expected = B.paired_bootstrap(a.p_correct.to_numpy(), b.p_correct.to_numpy(), a.label.to_numpy(),
                                      n_resamples=200)
        for name, (diff, low, high) in expected.items():
            if name == "accuracy":
                continue
            assert getattr(row, f"{name}_diff") == pytest.approx(diff)
            assert getattr(row, f"{name}_diff_low") == pytest.approx(low)
            assert getattr(row, f"{name}_diff_high") == pytest.approx(high)
        assert row.auroc_diff_low > 0


def test_paired_table_rejects_different_questions(rng):
    scores = _scores(rng, n=20)
    drop = scores[(scores.method == "probe") & (scores.model == "E2") & (scores.question_id == "q005")].index
    with pytest.raises(ValueError, match="same questions.*q005"):
        B.paired_table(scores.drop(drop), [("lora_prompt", "probe")], n_resamples=10)
    relabel = scores.copy()
    relabel.loc[drop, "label"] = 1 - relabel.loc[drop, "label"]
    with pytest.raises(ValueError, match="label"):
        B.paired_table(relabel, [("lora_prompt", "probe")], n_resamples=10)
    with pytest.raises(ValueError, match="'lora'"):
        B.paired_table(scores, [("lora", "probe")], n_resamples=10)
    # a cell only one method has is left out
    only_a = scores[~((scores.method == "probe") & (scores.model == "E2"))]
    assert list(B.paired_table(only_a, [("lora_prompt", "probe")], n_resamples=10).model) == ["E1"]


def test_subject_breakdown_macro_and_micro(rng):
    scores = _scores(rng, n=60)
    # chemistry all right for lora_prompt on E1: one class there
    mask = (scores.model == "E1") & (scores.subject == "chemistry")
    scores.loc[mask, "label"] = 1
    table = B.subject_breakdown(scores)
    cell = table[(table.method == "lora_prompt") & (table.model == "E1")]
    assert list(cell.subject) == ["algebra", "biology", "chemistry", B.MACRO_LABEL, B.MICRO_LABEL]
    assert list(cell.row) == ["subject", "subject", "subject", "macro", "micro"]
    subjects, macro, micro = cell.iloc[:3], cell.iloc[3], cell.iloc[4]
    assert math.isnan(subjects.iloc[2].auroc)
    assert macro.auroc == pytest.approx(subjects.auroc.iloc[:2].mean())
    assert macro.ece == pytest.approx(subjects.ece.mean())
    assert macro.accuracy == pytest.approx(subjects.accuracy.mean())
    assert (macro.n_subjects, macro.n_subjects_auroc) == (3, 2)
    assert pd.isna(subjects.iloc[0].n_subjects)
    raw = scores[(scores.method == "lora_prompt") & (scores.model == "E1")]
    assert macro.n == micro.n == len(raw) == subjects.n.sum()
    assert micro.auroc == pytest.approx(roc_auc_score(raw.label, raw.p_correct))
    assert micro.ece == pytest.approx(M.ece(raw.p_correct, raw.label))
    assert micro.accuracy == pytest.approx(raw.label.mean())
    for s in subjects.itertuples():
        part = raw[raw.subject == s.subject]
        assert s.n == len(part)
        assert s.ece == pytest.approx(M.ece(part.p_correct, part.label))
        if not math.isnan(s.auroc):
            assert s.auroc == pytest.approx(roc_auc_score(part.label, part.p_correct))


def test_subject_breakdown_needs_the_subject_column(rng):
    scores = _scores(rng, n=10)
    with pytest.raises(ValueError, match="topic"):
        B.subject_breakdown(scores, subject_column="topic")
    renamed = B.subject_breakdown(scores.rename(columns={"subject": "topic"}), subject_column="topic")
    assert len(renamed) == 4 * (3 + 2)
