"""Metrics of an uncertainty estimator: pure functions of ``p`` and ``y``.

``p`` is the estimator's P(correct) for each example (floats in [0, 1]) and ``y`` the
graded label (1 = the answering model was right, 0 = wrong). Every function takes
array-likes and returns a plain ``float``; none of them touches a model, so every
metric can be recomputed from a run's scores alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

NLL_EPS = 1e-7
GROUP_KEYS: tuple[str, ...] = ("method", "model", "trained_on", "evaluated_on")
SCORE_COLUMNS: tuple[str, ...] = (*GROUP_KEYS, "question_id", "p_correct", "label")
DEFAULT_BINS = 10
# Registry entries that take an ``n_bins`` keyword.
BINNED_METRICS: frozenset[str] = frozenset({"ece", "ece_top_label", "ece_equal_mass", "mce"})


def _check_p(p: ArrayLike) -> np.ndarray:
    arr = np.asarray(p, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("p is empty: a metric needs at least one example")
    if not np.all(np.isfinite(arr)):
        raise ValueError("p contains NaN or infinite values; P(correct) must be finite")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            f"p must lie in [0, 1] (it is P(correct)); got values in "
            f"[{arr.min():g}, {arr.max():g}]"
        )
    return arr


def _check_y(y: ArrayLike) -> np.ndarray:
    arr = np.asarray(y).ravel()
    if arr.size == 0:
        raise ValueError("y is empty: a metric needs at least one example")
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y must hold 0/1 labels; got dtype {arr.dtype}") from exc
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"y must hold 0/1 labels (1 = correct); found {arr[bad][0]!r} "
            f"among {int(bad.sum())} invalid value(s)"
        )
    return arr.astype(int)


def _check(p: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p_arr, y_arr = _check_p(p), _check_y(y)
    if p_arr.shape != y_arr.shape:
        raise ValueError(f"p and y differ in length: {p_arr.size} vs {y_arr.size}")
    return p_arr, y_arr


def auroc(p: ArrayLike, y: ArrayLike) -> float:
    """Area under the ROC curve of ``p`` as a score for ``y == 1``.

    0.5 is chance, 1.0 a perfect ranking of right answers above wrong ones. When
    ``y`` holds one class only the AUROC is undefined: this returns NaN and emits a
    ``UserWarning`` instead of raising.
    """
    p_arr, y_arr = _check(p, y)
    if np.unique(y_arr).size < 2:
        warnings.warn(
            f"AUROC is undefined when all {y_arr.size} labels are {y_arr[0]} "
            "(one class only); returning NaN",
            UserWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(roc_auc_score(y_arr, p_arr))


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Edges are k / n_bins (exact float division), so p == 0.3 lands in [0.3, 0.4)
    # rather than slipping below 0.30000000000000004 as a linspace edge would have
    # it. Only the n_bins - 1 inner edges count, which puts p == 1 in the last bin.
    inner_edges = np.arange(1, n_bins) / n_bins
    return np.searchsorted(inner_edges, p, side="right")


def _check_bins(n_bins: int) -> None:
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")


def _equal_mass_bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # A tied block of p values goes whole into the bin of its first sorted position s
    # (s = how many values are strictly smaller), bin = floor(s * n_bins / N). That
    # depends on the multiset of p only, never on the input order.
    start = np.searchsorted(np.sort(p), p, side="left")
    return (start * n_bins) // p.size


def _bin_gaps(conf: np.ndarray, hit: np.ndarray, idx: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and |mean(hit) - mean(conf)| of the non-empty bins given each example's bin."""
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=hit, minlength=n_bins)
    filled = counts > 0
    return counts[filled], np.abs(hit_sum[filled] - conf_sum[filled]) / counts[filled]


def _binned_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    _check_bins(n_bins)
    counts, gap = _bin_gaps(conf, hit, _bin_index(conf, n_bins), n_bins)
    return float(np.sum(counts / conf.size * gap))


def ece(p: ArrayLike, y: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error of P(correct), with equal-width bins.

    The bins are [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1] (p == 1 falls in the last
    one). ECE = sum over non-empty bins of (bin size / N) * |mean(y) - mean(p)|.
    """
    p_arr, y_arr = _check(p, y)
    return _binned_ece(p_arr, y_arr.astype(float), n_bins)


def ece_top_label(p: ArrayLike, y: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE, the variant the paper reports.

    Treats the estimator as a binary classifier: it predicts "correct" when
    p >= 0.5, with confidence max(p, 1 - p). The ECE is then the equal-width binned
    gap between that confidence and whether the prediction matches ``y``.
    """
    p_arr, y_arr = _check(p, y)
    conf = np.maximum(p_arr, 1.0 - p_arr)
    hit = ((p_arr >= 0.5).astype(int) == y_arr).astype(float)
    return _binned_ece(conf, hit, n_bins)


def ece_equal_mass(p: ArrayLike, y: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error of P(correct), with equal-mass (equal-count) bins.

    The examples are sorted by ``p`` and cut into ``n_bins`` bins of (nearly) equal
    size: an example whose sorted position is s (0-based) goes to bin
    floor(s * n_bins / N). Ties are never split: every example of a block of equal
    ``p`` takes the bin of the block's first position (s = the number of strictly
    smaller values), so the result does not depend on the input order; a large tied
    block makes its bin bigger and can leave later bins empty. With N < n_bins each
    distinct value is its own bin. ECE = sum over non-empty bins of
    (bin size / N) * |mean(y) - mean(p)|.
    """
    p_arr, y_arr = _check(p, y)
    _check_bins(n_bins)
    counts, gap = _bin_gaps(p_arr, y_arr.astype(float), _equal_mass_bin_index(p_arr, n_bins), n_bins)
    return float(np.sum(counts / p_arr.size * gap))


def mce(p: ArrayLike, y: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """Maximum calibration error: the largest |mean(y) - mean(p)| over non-empty bins.

    Uses the same equal-width bins as :func:`ece` ([k/n, (k+1)/n), p == 1 in the last
    bin); empty bins are ignored.
    """
    p_arr, y_arr = _check(p, y)
    _check_bins(n_bins)
    _, gap = _bin_gaps(p_arr, y_arr.astype(float), _bin_index(p_arr, n_bins), n_bins)
    return float(gap.max())


def auprc(p: ArrayLike, y: ArrayLike) -> float:
    """Average precision of ``p`` as a score for ``y == 1`` (the "correct" class).

    sklearn's ``average_precision_score``: sum over distinct thresholds, from high
    to low, of (recall gain) * precision. Chance level is the accuracy. Undefined
    when no label is 1: returns NaN with a ``UserWarning`` (all labels 1 gives 1.0).
    """
    p_arr, y_arr = _check(p, y)
    if not y_arr.any():
        warnings.warn(
            f"AUPRC is undefined when all {y_arr.size} labels are 0 (one class only); returning NaN",
            UserWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(average_precision_score(y_arr, p_arr))


def auprc_incorrect(p: ArrayLike, y: ArrayLike) -> float:
    """Average precision for finding the wrong answers: ``y == 0`` is positive, scored by ``1 - p``.

    Chance level is the error rate. Undefined when every label is 1: returns NaN
    with a ``UserWarning``.
    """
    p_arr, y_arr = _check(p, y)
    if y_arr.all():
        warnings.warn(
            f"AUPRC (incorrect) is undefined when all {y_arr.size} labels are 1 (one class only); returning NaN",
            UserWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(average_precision_score(1 - y_arr, 1.0 - p_arr))


def risk_coverage_curve(p: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Selective-prediction curve: keep the k most confident examples, k = 1..N.

    Returns ``(coverage, risk)``, two arrays of length N: coverage[k-1] = k / N and
    risk[k-1] = the error rate (fraction of ``y == 0``) among the k examples with the
    highest ``p``. Examples with equal ``p`` form a block that is kept or dropped as
    a whole in expectation: inside a block the error count grows linearly, by the
    block's error rate per example, which is the average over every ordering of the
    tied examples. At a block's end the value is exact, and nothing depends on the
    input order (all-equal ``p`` gives the overall error rate at every coverage).
    """
    p_arr, y_arr = _check(p, y)
    values, inverse, counts = np.unique(p_arr, return_inverse=True, return_counts=True)
    errors = np.bincount(inverse, weights=1.0 - y_arr, minlength=values.size)
    counts, errors = counts[::-1], errors[::-1]  # most confident block first
    starts = np.cumsum(counts) - counts
    errors_before = np.cumsum(errors) - errors
    block = np.repeat(np.arange(values.size), counts)
    k = np.arange(1, p_arr.size + 1)
    cum_errors = errors_before[block] + (k - starts[block]) * errors[block] / counts[block]
    return k / p_arr.size, cum_errors / k


def aurc(p: ArrayLike, y: ArrayLike) -> float:
    """Area under the risk-coverage curve: the mean of the risk over coverages k/N, k = 1..N.

    AURC = (1/N) * sum_k risk(k / N), with the tie handling of
    :func:`risk_coverage_curve`. Lower is better; a perfect ranking of a model with
    error rate e scores about e + (1 - e) * ln(1 - e), a random one scores e.
    """
    _, risk = risk_coverage_curve(p, y)
    return float(np.mean(risk))


def _coverage_count(n: int, coverage: float) -> int:
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1]; got {coverage!r}")
    # The small slack keeps 0.7 * 10 = 7.000000000000001 at 7 examples, not 8.
    return max(1, int(np.ceil(coverage * n - 1e-9)))


def accuracy_at_coverage(p: ArrayLike, y: ArrayLike, coverage: float) -> float:
    """Accuracy on the ceil(coverage * N) examples with the highest ``p`` (at least one).

    ``coverage`` lies in (0, 1]; 1 gives the plain accuracy. A tied block that
    straddles the cut counts with its mean accuracy (see :func:`risk_coverage_curve`),
    so the result does not depend on the input order.
    """
    _, risk = risk_coverage_curve(p, y)
    return float(1.0 - risk[_coverage_count(risk.size, coverage) - 1])


def accuracy_at_50(p: ArrayLike, y: ArrayLike) -> float:
    """Accuracy on the most confident half of the examples (:func:`accuracy_at_coverage` 0.5)."""
    return accuracy_at_coverage(p, y, 0.5)


def accuracy_at_80(p: ArrayLike, y: ArrayLike) -> float:
    """Accuracy on the most confident 80% of the examples (:func:`accuracy_at_coverage` 0.8)."""
    return accuracy_at_coverage(p, y, 0.8)


def brier(p: ArrayLike, y: ArrayLike) -> float:
    """Brier score: mean of (p - y)^2. Lower is better; 0 is perfect."""
    p_arr, y_arr = _check(p, y)
    return float(brier_score_loss(y_arr, p_arr, labels=[0, 1]))


def nll(p: ArrayLike, y: ArrayLike) -> float:
    """Mean binary cross-entropy (natural log) of ``p`` against ``y``.

    ``p`` is clipped to [1e-7, 1 - 1e-7] first, so a confident mistake at p = 0 or
    p = 1 costs about 16.1 nats rather than infinity.
    """
    p_arr, y_arr = _check(p, y)
    pc = np.clip(p_arr, NLL_EPS, 1.0 - NLL_EPS)
    return float(-np.mean(y_arr * np.log(pc) + (1 - y_arr) * np.log1p(-pc)))


def accuracy(y: ArrayLike) -> float:
    """Fraction of labels that are 1: the answering model's accuracy."""
    return float(np.mean(_check_y(y)))


def mean_confidence(p: ArrayLike) -> float:
    """Mean predicted P(correct); above :func:`accuracy` means overconfident."""
    return float(np.mean(_check_p(p)))


def _accuracy_metric(p: ArrayLike, y: ArrayLike) -> float:
    """Answering model's accuracy (mean of ``y``); ``p`` is only length-checked."""
    _check(p, y)
    return accuracy(y)


def _mean_p_metric(p: ArrayLike, y: ArrayLike) -> float:
    """Mean P(correct); ``y`` is only length-checked."""
    _check(p, y)
    return mean_confidence(p)


# Every entry takes (p, y) so callers can loop over the registry uniformly.
METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "auroc": auroc,
    "ece": ece,
    "ece_top_label": ece_top_label,
    "brier": brier,
    "nll": nll,
    "accuracy": _accuracy_metric,
    "mean_p": _mean_p_metric,
    "auprc": auprc,
    "auprc_incorrect": auprc_incorrect,
    "ece_equal_mass": ece_equal_mass,
    "mce": mce,
    "aurc": aurc,
    "acc_at_50": accuracy_at_50,
    "acc_at_80": accuracy_at_80,
}


def metric_value(name: str, p: ArrayLike, y: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """One registry metric by name, passing ``n_bins`` to the binned ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    if name in BINNED_METRICS:
        return METRICS[name](p, y, n_bins=n_bins)  # type: ignore[call-arg]
    return METRICS[name](p, y)


def cell_metrics(p: ArrayLike, y: ArrayLike, n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Every metric in :data:`METRICS` for one set of scores, plus ``n``.

    Returns a dict with keys n, auroc, ece, ece_top_label, brier, nll, accuracy,
    mean_p, auprc, auprc_incorrect, ece_equal_mass, mce, aurc, acc_at_50, acc_at_80.
    ``auroc`` and the AUPRCs are NaN (with a warning) when ``y`` holds one class only.
    ``n_bins`` goes to every binned metric.
    """
    p_arr, y_arr = _check(p, y)
    out: dict[str, float] = {"n": int(p_arr.size)}
    for name in METRICS:
        out[name] = metric_value(name, p_arr, y_arr, n_bins=n_bins)
    return out


def metrics_table(scores: pd.DataFrame, n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """One row of :func:`cell_metrics` per (method, model, trained_on, evaluated_on).

    ``scores`` has one row per scored example with columns method, model,
    trained_on, evaluated_on, question_id, p_correct and label. The result holds the
    four group keys followed by n and every metric, sorted by method, model,
    trained_on (then evaluated_on). An empty ``scores`` gives an empty table.
    """
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores is missing column(s): {', '.join(missing)}")
    columns = [*GROUP_KEYS, "n", *METRICS]
    if scores.empty:
        return pd.DataFrame(columns=columns)

    rows = []
    for keys, group in scores.groupby(list(GROUP_KEYS), sort=False, dropna=False):
        where = ", ".join(f"{k}={v}" for k, v in zip(GROUP_KEYS, keys, strict=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = cell_metrics(group["p_correct"].to_numpy(), group["label"].to_numpy(), n_bins=n_bins)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
        # Re-emit with the cell named, so a one-class warning says which cell it is.
        for w in caught:
            warnings.warn(f"{where}: {w.message}", w.category, stacklevel=2)
        rows.append({**dict(zip(GROUP_KEYS, keys, strict=True)), **values})

    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(list(GROUP_KEYS), kind="stable").reset_index(drop=True)
    table["n"] = table["n"].astype(int)
    return table


def paired_auroc_difference(
    p_a: ArrayLike, p_b: ArrayLike, y: ArrayLike, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) on the same examples, with a 95% paired bootstrap interval.

    Both methods are scored on each resample of the same examples, so the interval is of
    the difference itself; resamples with one class only are skipped.
    Returns ``(difference, low, high)``.
    """
    pa, y_arr = _check(p_a, y)
    pb, _ = _check(p_b, y)
    if np.unique(y_arr).size < 2:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(y_arr), len(y_arr))
        if np.unique(y_arr[idx]).size < 2:
            continue
        diffs.append(roc_auc_score(y_arr[idx], pa[idx]) - roc_auc_score(y_arr[idx], pb[idx]))
    point = roc_auc_score(y_arr, pa) - roc_auc_score(y_arr, pb)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(point), float(low), float(high)


__all__ = [
    "BINNED_METRICS",
    "DEFAULT_BINS",
    "METRICS",
    "accuracy",
    "accuracy_at_50",
    "accuracy_at_80",
    "accuracy_at_coverage",
    "auprc",
    "auprc_incorrect",
    "aurc",
    "auroc",
    "brier",
    "cell_metrics",
    "ece",
    "ece_equal_mass",
    "ece_top_label",
    "mce",
    "mean_confidence",
    "metric_value",
    "metrics_table",
    "nll",
    "paired_auroc_difference",
    "risk_coverage_curve",
]
