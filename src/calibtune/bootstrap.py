"""Bootstrap intervals for every metric, per cell and paired between methods.

All metrics of one cell are computed on the same seeded resamples: one
``(n_resamples, N)`` index matrix is drawn, turned into a matrix of how often each
example is drawn, and every metric is evaluated for all resamples at once from
those counts (:class:`ResampleStats`). Point estimates are the plain metrics of
:mod:`calibtune.metrics` on the full data, so a table here agrees with
:func:`calibtune.metrics.metrics_table` in every point value.

The module is longer than most (about 590 lines) on purpose: the vectorised form of
every metric, the intervals built on it and the per-cell tables share private helpers
(resampling counts, the level and metric-name checks, the cell grouping), and keeping
them in one file keeps those helpers private.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property, partial

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from calibtune.metrics import (
    DEFAULT_BINS,
    GROUP_KEYS,
    METRICS,
    NLL_EPS,
    SCORE_COLUMNS,
    _bin_index,
    _check,
    _check_bins,
    _coverage_count,
    ece,
    metric_value,
)

CELL_KEYS: tuple[str, ...] = ("model", "trained_on", "evaluated_on")
MACRO_LABEL = "macro average (over subjects)"
MICRO_LABEL = "micro average (over questions)"


class ResampleStats:
    """Every registry metric for many bootstrap resamples of one set of scores at once.

    ``indices`` is an ``(R, N)`` matrix of example indices (row r = resample r). The
    examples are grouped into blocks of equal ``p`` (ascending) and each resample is
    reduced to how many right and wrong answers it draws from each block; every
    metric follows from those ``(R, G)`` counts. Each metric method returns an array
    of R values, NaN where the metric is undefined on that resample (AUROC or AUPRC
    with one class only). The values equal the scalar metric of
    :mod:`calibtune.metrics` on ``p[indices[r]], y[indices[r]]`` up to float rounding.
    """

    def __init__(self, p: ArrayLike, y: ArrayLike, indices: ArrayLike, n_bins: int = DEFAULT_BINS):
        p_arr, y_arr = _check(p, y)
        _check_bins(n_bins)
        idx = np.asarray(indices)
        if idx.ndim != 2 or idx.shape[1] == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be a non-empty integer (n_resamples, N) matrix; got {idx.dtype}{idx.shape}")
        if idx.min() < 0 or idx.max() >= p_arr.size:
            raise ValueError(f"indices must lie in [0, {p_arr.size}); got [{idx.min()}, {idx.max()}]")
        self.block_p, block_of = np.unique(p_arr, return_inverse=True)
        self.n_bins = n_bins
        self.n_resamples, self.n = idx.shape
        g = self.block_p.size
        # code = 2 * block + label, offset by 2G per resample: one bincount gives both counts.
        code = 2 * block_of + y_arr
        flat = (code[idx] + np.arange(self.n_resamples)[:, None] * (2 * g)).ravel()
        both = np.bincount(flat, minlength=self.n_resamples * 2 * g).reshape(self.n_resamples, g, 2)
        self.block_neg = both[:, :, 0].astype(float)  # (R, G) draws with y == 0 per block
        self.block_pos = both[:, :, 1].astype(float)  # (R, G) draws with y == 1 per block
        self.block_n = self.block_neg + self.block_pos

    # -- cumulative counts over blocks, ascending p (inclusive) --------------------------------

    @cached_property
    def cum_n(self) -> np.ndarray:
        """(R, G) draws with p <= the block's p."""
        return np.cumsum(self.block_n, axis=1)

    @cached_property
    def cum_pos(self) -> np.ndarray:
        """(R, G) draws with y == 1 and p <= the block's p."""
        return np.cumsum(self.block_pos, axis=1)

    @property
    def cum_neg(self) -> np.ndarray:
        """(R, G) draws with y == 0 and p <= the block's p."""
        return self.cum_n - self.cum_pos

    @property
    def n_pos(self) -> np.ndarray:
        """(R,) draws with y == 1."""
        return self.cum_pos[:, -1]

    @property
    def n_neg(self) -> np.ndarray:
        """(R,) draws with y == 0."""
        return self.n - self.n_pos

    # -- ranking ---------------------------------------------------------------------------

    def auroc(self) -> np.ndarray:
        """Mann-Whitney AUROC with ties counted one half (sklearn's value), from the block counts."""
        neg_below = self.cum_neg - self.block_neg
        u = np.sum(self.block_pos * (neg_below + 0.5 * self.block_neg), axis=1)
        return _divide(u, self.n_pos * self.n_neg)

    def auprc(self) -> np.ndarray:
        """Average precision for y == 1: sum over blocks of (pos / n_pos) * precision at p >= block."""
        pos_at_or_above = self.n_pos[:, None] - self.cum_pos + self.block_pos
        all_at_or_above = self.n - self.cum_n + self.block_n
        precision = _divide(pos_at_or_above, all_at_or_above, fill=0.0)
        return _divide(np.sum(self.block_pos * precision, axis=1), self.n_pos)

    def auprc_incorrect(self) -> np.ndarray:
        """Average precision for y == 0 scored by 1 - p: blocks taken from the lowest p up."""
        precision = _divide(self.cum_neg, self.cum_n, fill=0.0)
        return _divide(np.sum(self.block_neg * precision, axis=1), self.n_neg)

    # -- sums over examples: proper scores, rates and equal-width bins ---------------------

    @cached_property
    def _sums(self) -> dict[str, np.ndarray]:
        """Every per-example sum, as one product of the block counts with a (G, K) table each."""
        p, b = self.block_p, self.n_bins
        pc = np.clip(p, NLL_EPS, 1.0 - NLL_EPS)
        width = np.eye(b)[_bin_index(p, b)]  # (G, B) one-hot equal-width bin of each block
        conf = np.maximum(p, 1.0 - p)
        top = np.eye(b)[_bin_index(conf, b)]
        says_right = (p >= 0.5)[:, None]  # a hit is a right answer there, a wrong one below 0.5
        # columns: brier, nll, mean_p | width count, conf, hit | top-label count, conf, hit
        per_draw = np.hstack([(p**2)[:, None], -np.log1p(-pc)[:, None], p[:, None],
                              width, width * p[:, None], np.zeros_like(width),
                              top, top * conf[:, None], np.where(says_right, 0.0, top)])
        per_right = np.hstack([(1.0 - 2.0 * p)[:, None], (np.log1p(-pc) - np.log(pc))[:, None], np.zeros((p.size, 1)),
                               np.zeros_like(width), np.zeros_like(width), width,
                               np.zeros_like(top), np.zeros_like(top), np.where(says_right, top, -top)])
        total = self.block_n @ per_draw + self.block_pos @ per_right
        names = ["brier", "nll", "mean_p", "width_n", "width_conf", "width_hit", "top_n", "top_conf", "top_hit"]
        cuts = np.cumsum([1, 1, 1, b, b, b, b, b])
        return dict(zip(names, np.split(total, cuts, axis=1), strict=True))

    def brier(self) -> np.ndarray:
        """Mean squared error of p against y: sum of n p^2 + pos (1 - 2p) over blocks, over N."""
        return self._sums["brier"][:, 0] / self.n

    def nll(self) -> np.ndarray:
        """Binary cross-entropy with p clipped as in :func:`calibtune.metrics.nll`."""
        return self._sums["nll"][:, 0] / self.n

    def accuracy(self) -> np.ndarray:
        """Fraction of y == 1."""
        return self.n_pos / self.n

    def mean_p(self) -> np.ndarray:
        """Mean P(correct)."""
        return self._sums["mean_p"][:, 0] / self.n

    def ece(self) -> np.ndarray:
        """Equal-width ECE, bins as :func:`calibtune.metrics.ece`."""
        return np.abs(self._sums["width_hit"] - self._sums["width_conf"]).sum(axis=1) / self.n

    def mce(self) -> np.ndarray:
        """Largest |accuracy - confidence| over the non-empty equal-width bins."""
        gap = np.abs(self._sums["width_hit"] - self._sums["width_conf"])
        return _divide(gap, self._sums["width_n"], fill=-np.inf).max(axis=1)

    def ece_top_label(self) -> np.ndarray:
        """Top-label ECE as :func:`calibtune.metrics.ece_top_label`."""
        return np.abs(self._sums["top_hit"] - self._sums["top_conf"]).sum(axis=1) / self.n

    def ece_equal_mass(self) -> np.ndarray:
        """Equal-mass ECE: each block of equal p goes whole to the bin of its first sorted position."""
        start = self.cum_n - self.block_n
        # Empty blocks after the last draw start at N: clip them into the last bin (weight 0).
        # start * n_bins / N is a ratio of integers, so truncating the float is the exact floor.
        bins = np.minimum((start * self.n_bins / self.n).astype(np.int64), self.n_bins - 1)
        offset = (bins + np.arange(self.n_resamples)[:, None] * self.n_bins).ravel()
        size = self.n_resamples * self.n_bins
        conf_sum = np.bincount(offset, weights=(self.block_n * self.block_p).ravel(), minlength=size)
        hit_sum = np.bincount(offset, weights=self.block_pos.ravel(), minlength=size)
        return np.abs(hit_sum - conf_sum).reshape(self.n_resamples, -1).sum(axis=1) / self.n

    # -- selective prediction (blocks taken from the highest p down) ---------------------------

    @cached_property
    def _descending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per block: draws with a higher p, errors among them, and the block's error rate."""
        above = self.n - self.cum_n
        errors_above = self.n_neg[:, None] - self.cum_neg
        return above, errors_above, _divide(self.block_neg, self.block_n, fill=0.0)

    def aurc(self) -> np.ndarray:
        """Mean risk over coverages k/N, ties interpolated as in :func:`calibtune.metrics.risk_coverage_curve`.

        A block of size C after S draws, with E errors among those and error rate r,
        adds sum_{j=1..C} (E + j r) / (S + j)
        = E (H(S+C) - H(S)) + r (C - S (H(S+C) - H(S))), H the harmonic numbers.
        """
        above, errors_above, rate = self._descending
        harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, self.n + 1))]
        # S + C of a block is the S of the block just below it in p, so one gather serves both.
        h_above = harmonic[above.astype(np.int64)]
        h_end = np.hstack([np.full((self.n_resamples, 1), harmonic[self.n]), h_above[:, :-1]])
        h = h_end - h_above
        return np.sum(errors_above * h + rate * (self.block_n - above * h), axis=1) / self.n

    def accuracy_at_coverage(self, coverage: float) -> np.ndarray:
        """Accuracy of the ceil(coverage N) most confident draws, ties as in the scalar metric."""
        k = _coverage_count(self.n, coverage)
        above, errors_above, rate = self._descending
        # the block holding the k-th most confident draw: the lowest one with cum_n > N - k
        block = np.argmax(self.cum_n > self.n - k, axis=1)[:, None]
        pick = partial(np.take_along_axis, indices=block, axis=1)
        errors = pick(errors_above) + (k - pick(above)) * pick(rate)
        return 1.0 - errors[:, 0] / k


def _divide(num: np.ndarray, den: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """num / den, with ``fill`` where den == 0 and no warning."""
    out = np.full(np.broadcast(num, den).shape, fill, dtype=float)
    np.divide(num, den, out=out, where=den != 0)
    return out


# Registry name -> vectorised evaluation on a ResampleStats; names missing here fall
# back to a loop over the resamples with the scalar metric.
VECTORISED: dict[str, Callable[[ResampleStats], np.ndarray]] = {
    "auroc": ResampleStats.auroc,
    "ece": ResampleStats.ece,
    "ece_top_label": ResampleStats.ece_top_label,
    "brier": ResampleStats.brier,
    "nll": ResampleStats.nll,
    "accuracy": ResampleStats.accuracy,
    "mean_p": ResampleStats.mean_p,
    "auprc": ResampleStats.auprc,
    "auprc_incorrect": ResampleStats.auprc_incorrect,
    "ece_equal_mass": ResampleStats.ece_equal_mass,
    "mce": ResampleStats.mce,
    "aurc": ResampleStats.aurc,
    "acc_at_50": partial(ResampleStats.accuracy_at_coverage, coverage=0.5),
    "acc_at_80": partial(ResampleStats.accuracy_at_coverage, coverage=0.8),
}


def _metric_names(metrics: Sequence[str] | None, default: Sequence[str] = tuple(METRICS)) -> list[str]:
    names = list(default if metrics is None else metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}")
    return names


def resample_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The ``(n_resamples, n)`` matrix of bootstrap indices drawn with replacement from ``seed``."""
    if n < 1:
        raise ValueError(f"cannot resample {n} examples")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def resampled_metrics(
    p: ArrayLike,
    y: ArrayLike,
    indices: np.ndarray,
    metrics: Sequence[str] | None = None,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, np.ndarray]:
    """Each metric on every resample ``p[indices[r]], y[indices[r]]``: name -> array of R values.

    Undefined values (AUROC or AUPRC of a one-class resample) are NaN, silently.
    """
    names = _metric_names(metrics)
    p_arr, y_arr = _check(p, y)
    stats = ResampleStats(p_arr, y_arr, indices, n_bins=n_bins)
    out = {}
    for name in names:
        if name in VECTORISED:
            out[name] = VECTORISED[name](stats)
        else:
            out[name] = _loop_metric(name, p_arr, y_arr, np.asarray(indices), n_bins)
    return out


def _loop_metric(name: str, p: np.ndarray, y: np.ndarray, indices: np.ndarray, n_bins: int) -> np.ndarray:
    """Fallback for a registry metric without a vectorised form: one scalar call per resample."""
    values = np.empty(indices.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r, row in enumerate(indices):
            values[r] = metric_value(name, p[row], y[row], n_bins=n_bins)
    return values


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite values; NaN when fewer than half of them are finite."""
    valid = values[np.isfinite(values)]
    if valid.size == 0 or valid.size < values.size / 2:
        return float("nan"), float("nan")
    low, high = np.percentile(valid, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(low), float(high)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")


def _points(p: np.ndarray, y: np.ndarray, names: Sequence[str], n_bins: int) -> dict[str, float]:
    """Scalar metrics on the full data (one-class warnings are passed on to the caller)."""
    return {name: metric_value(name, p, y, n_bins=n_bins) for name in names}


def bootstrap_intervals(
    p: ArrayLike,
    y: ArrayLike,
    metrics: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, tuple[float, float, float]]:
    """Point value and percentile bootstrap interval of each metric: name -> (point, low, high).

    Every metric is evaluated on the same seeded resamples. Resamples on which a
    metric is undefined (AUROC with one class) are skipped for that metric; when
    fewer than half of the resamples are valid, its interval is (NaN, NaN). The
    point value is the metric on the full data (NaN, with a warning, if undefined).
    """
    _check_level(level)
    names = _metric_names(metrics)
    p_arr, y_arr = _check(p, y)
    values = resampled_metrics(p_arr, y_arr, resample_indices(p_arr.size, n_resamples, seed), names, n_bins)
    points = _points(p_arr, y_arr, names, n_bins)
    return {name: (points[name], *percentile_interval(values[name], level)) for name in names}


def paired_bootstrap(
    p_a: ArrayLike,
    p_b: ArrayLike,
    y: ArrayLike,
    metrics: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, tuple[float, float, float]]:
    """Metric(a) - metric(b) on the same examples: name -> (difference, low, high).

    Both methods are scored on the SAME resampled indices, so the interval is that
    of the difference itself. A resample is skipped for a metric when the metric is
    undefined there; fewer than half valid resamples give a NaN interval.
    """
    _check_level(level)
    names = _metric_names(metrics)
    pa, y_arr = _check(p_a, y)
    pb, _ = _check(p_b, y)
    idx = resample_indices(y_arr.size, n_resamples, seed)
    va = resampled_metrics(pa, y_arr, idx, names, n_bins)
    vb = resampled_metrics(pb, y_arr, idx, names, n_bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a, b = _points(pa, y_arr, names, n_bins), _points(pb, y_arr, names, n_bins)
    return {name: (a[name] - b[name], *percentile_interval(va[name] - vb[name], level)) for name in names}


# -- tables ------------------------------------------------------------------------------------


def _check_scores(scores: pd.DataFrame, extra: Sequence[str] = ()) -> None:
    missing = [c for c in (*SCORE_COLUMNS, *extra) if c not in scores.columns]
    if missing:
        raise ValueError(f"scores is missing column(s): {', '.join(missing)}")


def _cells(scores: pd.DataFrame, keys: Sequence[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    """(keys as a dict, rows sorted by question_id) per group, so results ignore row order."""
    for values, group in scores.groupby(list(keys), sort=False, dropna=False):
        yield dict(zip(keys, values, strict=True)), group.sort_values("question_id", kind="stable")


def _where(keys: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items())


def _rewarn(where: str, caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        warnings.warn(f"{where}: {w.message}", w.category, stacklevel=3)


def bootstrap_table(
    scores: pd.DataFrame,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = DEFAULT_BINS,
    level: float = 0.95,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """:func:`calibtune.metrics.metrics_table` with ``<metric>_low`` / ``<metric>_high`` columns.

    One row per (method, model, trained_on, evaluated_on): the group keys, n, then
    for each metric its point value and percentile interval at ``level``. Every cell
    is resampled with the same ``seed`` after sorting its rows by question_id, so
    cells of different methods on the same questions share their resamples.
    """
    _check_scores(scores)
    names = _metric_names(metrics)
    columns = [*GROUP_KEYS, "n", *[f"{m}{s}" for m in names for s in ("", "_low", "_high")]]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for keys, cell in _cells(scores, GROUP_KEYS):
        where = _where(keys)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = bootstrap_intervals(cell["p_correct"].to_numpy(), cell["label"].to_numpy(), names,
                                             n_resamples, seed, level, n_bins)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
        _rewarn(where, caught)
        row = {**keys, "n": len(cell)}
        for name, (point, low, high) in result.items():
            row.update({name: point, f"{name}_low": low, f"{name}_high": high})
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(list(GROUP_KEYS), kind="stable").reset_index(drop=True)
    table["n"] = table["n"].astype(int)
    return table


def _aligned(a: pd.DataFrame, b: pd.DataFrame, where: str) -> pd.DataFrame:
    """Rows of two methods in one cell joined on question_id; ValueError unless they match one to one."""
    for name, frame in (("a", a), ("b", b)):
        dup = frame["question_id"].duplicated()
        if dup.any():
            raise ValueError(f"{where}: method {name} scored question {frame['question_id'][dup].iloc[0]!r} twice")
    qa, qb = set(a["question_id"]), set(b["question_id"])
    if qa != qb:
        only_a, only_b = sorted(map(str, qa - qb)), sorted(map(str, qb - qa))
        raise ValueError(
            f"{where}: the two methods were not scored on the same questions "
            f"({len(only_a)} only in a, e.g. {only_a[:3]}; {len(only_b)} only in b, e.g. {only_b[:3]})"
        )
    merged = a.merge(b, on="question_id", suffixes=("_a", "_b")).sort_values("question_id", kind="stable")
    differ = merged["label_a"] != merged["label_b"]
    if differ.any():
        question = merged["question_id"][differ].iloc[0]
        raise ValueError(f"{where}: the methods disagree on the label of question {question!r}")
    return merged


def paired_table(
    scores: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> pd.DataFrame:
    """Paired differences metric(a) - metric(b) with bootstrap intervals, per cell and pair.

    For each (a, b) in ``pairs`` and each (model, trained_on, evaluated_on) that
    both methods have, the two methods' rows are aligned by question_id and
    :func:`paired_bootstrap` is run on them. Cells that only one of the two has are
    left out; a method missing from ``scores`` altogether, or two methods scored on
    different questions (or with different labels) in a shared cell, raise
    ValueError. The default metrics are all of :data:`~calibtune.metrics.METRICS`
    but accuracy (always 0 on the same questions). Columns: a, b, model, trained_on,
    evaluated_on, n, then ``<metric>_diff``, ``<metric>_diff_low`` and
    ``<metric>_diff_high`` per metric.
    """
    _check_scores(scores)
    names = _metric_names(metrics, default=[m for m in METRICS if m != "accuracy"])
    columns = ["a", "b", *CELL_KEYS, "n", *[f"{m}_diff{s}" for m in names for s in ("", "_low", "_high")]]
    rows = []
    for a, b in pairs:
        absent = [m for m in (a, b) if not (scores["method"] == m).any()]
        if absent:
            raise ValueError(f"method(s) {', '.join(map(repr, absent))} not in scores")
        sa, sb = scores[scores["method"] == a], scores[scores["method"] == b]
        cells_b = {tuple(k.values()): g for k, g in _cells(sb, CELL_KEYS)}
        for keys, ga in _cells(sa, CELL_KEYS):
            gb = cells_b.get(tuple(keys.values()))
            if gb is None:
                continue
            where = f"a={a}, b={b}, {_where(keys)}"
            merged = _aligned(ga, gb, where)
            try:
                result = paired_bootstrap(merged["p_correct_a"].to_numpy(), merged["p_correct_b"].to_numpy(),
                                          merged["label_a"].to_numpy(), names, n_resamples, seed, level, n_bins)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
            row = {"a": a, "b": b, **keys, "n": len(merged)}
            for name, (diff, low, high) in result.items():
                row.update({f"{name}_diff": diff, f"{name}_diff_low": low, f"{name}_diff_high": high})
            rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    if not table.empty:
        table["n"] = table["n"].astype(int)
    return table


def _rank_auroc(p: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUROC with tied ranks averaged (sklearn's value, without its per-call overhead)."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _subject_row(p: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, float]:
    """n, AUROC (NaN with one class, silently), ECE and accuracy of checked arrays."""
    return {"n": int(p.size), "auroc": _rank_auroc(p, y), "ece": ece(p, y, n_bins=n_bins), "accuracy": float(y.mean())}


def subject_breakdown(
    scores: pd.DataFrame, subject_column: str = "subject", n_bins: int = DEFAULT_BINS
) -> pd.DataFrame:
    """Per-subject AUROC, ECE, accuracy and n per cell, with macro and micro averages.

    One row per (method, model, trained_on, evaluated_on, subject), subjects sorted,
    followed in each cell by two summary rows whose ``subject`` is
    :data:`MACRO_LABEL` (the mean over subjects of each subject's metric, the
    paper's MMLU convention; ``n`` is the cell's total) and :data:`MICRO_LABEL` (the
    metrics of all the cell's questions pooled). The ``row`` column says which kind
    a row is: "subject", "macro" or "micro".

    A subject whose questions are all right (or all wrong) has an undefined AUROC:
    its row holds NaN without a warning, and it is left out of the macro AUROC
    (the macro ECE and accuracy still include it). The summary rows count this:
    ``n_subjects`` is the cell's number of subjects and ``n_subjects_auroc`` the
    number that entered the macro AUROC (both empty on subject rows).
    """
    _check_scores(scores, (subject_column,))
    columns = [*GROUP_KEYS, "subject", "row", "n", "auroc", "ece", "accuracy", "n_subjects", "n_subjects_auroc"]
    rows = []
    for keys, cell in _cells(scores, GROUP_KEYS):
        where = _where(keys)
        try:
            p_all, y_all = _check(cell["p_correct"].to_numpy(), cell["label"].to_numpy())
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        codes, subjects = pd.factorize(cell[subject_column], sort=True, use_na_sentinel=False)
        order = np.argsort(codes, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
        per_subject = [
            {**keys, "subject": subjects[codes[g[0]]], "row": "subject", **_subject_row(p_all[g], y_all[g], n_bins)}
            for g in groups
        ]
        subj = pd.DataFrame(per_subject)
        defined = subj["auroc"].notna()
        counts = {"n_subjects": len(subj), "n_subjects_auroc": int(defined.sum())}
        macro = {
            "n": int(p_all.size),
            "auroc": float(subj.loc[defined, "auroc"].mean()) if defined.any() else float("nan"),
            "ece": float(subj["ece"].mean()),
            "accuracy": float(subj["accuracy"].mean()),
        }
        rows.extend(per_subject)
        rows.append({**keys, "subject": MACRO_LABEL, "row": "macro", **macro, **counts})
        rows.append({**keys, "subject": MICRO_LABEL, "row": "micro", **_subject_row(p_all, y_all, n_bins), **counts})
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(list(GROUP_KEYS), kind="stable").reset_index(drop=True)
    for col in ("n_subjects", "n_subjects_auroc"):
        table[col] = table[col].astype("Int64")
    if not table.empty:
        table["n"] = table["n"].astype(int)
    return table


__all__ = [
    "MACRO_LABEL",
    "MICRO_LABEL",
    "VECTORISED",
    "ResampleStats",
    "bootstrap_intervals",
    "bootstrap_table",
    "paired_bootstrap",
    "paired_table",
    "percentile_interval",
    "resample_indices",
    "resampled_metrics",
    "subject_breakdown",
]
