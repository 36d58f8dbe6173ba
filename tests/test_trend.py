"""The data-scale trend: slope per doubling and gap to the Probe, against independent computations."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from calibtune.bootstrap import resample_indices
from calibtune.trend import per_doubling, scale_trend, trend_table

SIZES = [100, 200, 400, 800]


def _scores(n: int = 300, seed: int = 0, strengths=(0.2, 0.5, 1.0, 1.5)):
    """Labels and, per size, scores that separate them more as the size grows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    noise = rng.normal(size=(len(strengths), n))
    p = 1 / (1 + np.exp(-(np.asarray(strengths)[:, None] * (2 * y - 1) + noise)))
    return p, y


def test_per_doubling_is_the_least_squares_slope_against_log2_of_the_size():
    values = 0.5 + 0.03 * np.log2(SIZES)
    assert per_doubling(SIZES, values) == pytest.approx(0.03)
    noisy = np.array([0.51, 0.55, 0.52, 0.61])
    assert per_doubling(SIZES, noisy) == pytest.approx(np.polyfit(np.log2(SIZES), noisy, 1)[0])
    columns = np.stack([noisy, 2 * noisy], axis=1)  # one slope per column
    np.testing.assert_allclose(per_doubling(SIZES, columns), [np.polyfit(np.log2(SIZES), noisy, 1)[0],
                                                              2 * np.polyfit(np.log2(SIZES), noisy, 1)[0]])
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        per_doubling([100, 100], [0.5, 0.6])


def test_the_slope_and_gap_match_a_loop_over_the_same_resamples():
    p, y = _scores()
    ref_y_p = 1 / (1 + np.exp(-(np.array([1.0, 1.1, 1.2, 1.3])[:, None] * (2 * y - 1)
                                + np.random.default_rng(2).normal(size=(4, y.size)))))
    result = scale_trend(SIZES, p, y, ref_y_p, n_resamples=200, seed=3)

    x = np.log2(SIZES)
    auroc = [roc_auc_score(y, row) for row in p]
    ref_auroc = [roc_auc_score(y, row) for row in ref_y_p]
    gaps = np.subtract(auroc, ref_auroc)
    assert result["slope"][0] == pytest.approx(np.polyfit(x, auroc, 1)[0])
    assert result["gap_slope"][0] == pytest.approx(np.polyfit(x, gaps, 1)[0])
    assert result["gap_first"][0] == pytest.approx(gaps[0]) and result["gap_last"][0] == pytest.approx(gaps[-1])

    slopes, gap_slopes, last = [], [], []
    for idx in resample_indices(y.size, 200, 3):
        a = [roc_auc_score(y[idx], row[idx]) for row in p]
        b = [roc_auc_score(y[idx], row[idx]) for row in ref_y_p]
        slopes.append(np.polyfit(x, a, 1)[0])
        gap_slopes.append(np.polyfit(x, np.subtract(a, b), 1)[0])
        last.append(a[-1] - b[-1])
    for name, values in (("slope", slopes), ("gap_slope", gap_slopes), ("gap_last", last)):
        assert result[name][1:] == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-9)
    assert result["slope"][1] > 0  # the scores separate better with size: the interval excludes 0
    assert result["gap_slope"][0] > 0  # and gain on a reference that barely improves


def test_scores_that_do_not_change_with_size_have_a_slope_of_exactly_zero():
    p, y = _scores(strengths=(0.7,) * 4)
    same = np.repeat(p[:1], 4, axis=0)
    result = scale_trend(SIZES, same, y, n_resamples=100)
    assert result["slope"] == (0.0, 0.0, 0.0) and "gap_slope" not in result


def _frame(p, y, method, sizes=SIZES):
    return pd.DataFrame([{"method": method, "model": "m", "trained_on": "m", "evaluated_on": "m",
                          "question_id": f"q{i:03d}", "p_correct": p[s, i], "label": y[i], "train_size": size}
                         for s, size in enumerate(sizes) for i in range(y.size)])


def test_the_table_has_a_row_per_method_with_the_gap_to_the_probe():
    p, y = _scores(n=120)
    probe, _ = _scores(n=120, seed=5)
    scores = pd.concat([_frame(p, y, "lora_prompt"), _frame(probe, y, "probe")], ignore_index=True)
    table = trend_table(scores, n_resamples=100, seed=1).set_index("method")
    direct = scale_trend(SIZES, p, y, probe, n_resamples=100, seed=1)
    row = table.loc["lora_prompt"]
    assert row.sizes == "100 200 400 800" and row.n == 120
    for name, (point, low, high) in direct.items():
        assert (row[name], row[f"{name}_low"], row[f"{name}_high"]) == pytest.approx((point, low, high))
    assert np.isnan(table.loc["probe", "gap_slope"])
    assert table.loc["probe", "slope"] == pytest.approx(scale_trend(SIZES, probe, y, n_resamples=100, seed=1)
                                                        ["slope"][0])


def test_only_questions_scored_at_every_size_count_and_labels_must_agree():
    p, y = _scores(n=120)
    scores = _frame(p, y, "lora_prompt")
    dropped = scores[~((scores.question_id == "q000") & (scores.train_size == 400))]
    row = trend_table(dropped, n_resamples=50).iloc[0]
    assert row.n == 119
    assert row.slope == pytest.approx(scale_trend(SIZES, p[:, 1:], y[1:], n_resamples=50)["slope"][0])
    flipped = scores.copy()
    flipped.loc[(flipped.question_id == "q003") & (flipped.train_size == 800), "label"] = 1 - y[3]
    with pytest.raises(ValueError, match="q003"):
        trend_table(flipped, n_resamples=50)
    assert trend_table(scores[scores.train_size == 100], n_resamples=50).empty  # one size: no trend
