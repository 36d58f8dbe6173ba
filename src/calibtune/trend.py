"""The trend of a data-scale study: how much a metric moves per doubling of the training answers.

The slope is the least-squares fit of the metric against log2 of the number of training
answers. Every size is scored on the same evaluation questions, so one set of resampled
questions serves every size and the reference method (the Probe): the interval is that of
the slope itself, with the noise the sizes share cancelled, as in a paired bootstrap. The
gap to the reference is method minus reference at each size; a positive gap slope means the
method gains on the reference as the training answers double.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from calibtune.bootstrap import percentile_interval, resample_indices, resampled_metrics
from calibtune.metrics import DEFAULT_BINS, GROUP_KEYS, metric_value

Interval = tuple[float, float, float]
TREND_COLUMNS = ("slope", "gap_slope", "gap_first", "gap_last")


def per_doubling(sizes: Sequence[int], values: ArrayLike) -> np.ndarray:
    """Least-squares slope of ``values`` (one row per size, along axis 0) against log2(sizes)."""
    x = np.log2(np.asarray(sizes, dtype=float))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"a slope needs two or more distinct sizes; got {list(sizes)}")
    x = x - x.mean()
    v = np.asarray(values, dtype=float)
    return np.tensordot(x, v - v.mean(axis=0), axes=(0, 0)) / float(x @ x)


def scale_trend(
    sizes: Sequence[int],
    p: ArrayLike,
    y: ArrayLike,
    p_reference: ArrayLike | None = None,
    metric: str = "auroc",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, Interval]:
    """The metric's slope per doubling of ``sizes`` as (point, low, high); with ``p_reference``
    (the reference method's scores at the same sizes) also the slope of the gap and the gap at
    the smallest and the largest size.

    ``p`` and ``p_reference`` are ``(len(sizes), N)``: row s holds the scores of the estimator
    trained on ``sizes[s]`` answers for the same N evaluation answers, labelled by ``y``.
    """
    p_arr = np.asarray(p, dtype=float)
    y_arr = np.asarray(y)
    if p_arr.ndim != 2 or p_arr.shape != (len(sizes), y_arr.size):
        raise ValueError(f"scores of shape {p_arr.shape} do not match {len(sizes)} sizes x {y_arr.size} answers")
    idx = resample_indices(y_arr.size, n_resamples, seed)

    def at_sizes(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # one-class data: NaN, as in every table
            points = np.array([metric_value(metric, row, y_arr, n_bins=n_bins) for row in scores])
        resampled = np.stack([resampled_metrics(row, y_arr, idx, [metric], n_bins)[metric] for row in scores])
        return points, resampled

    points, resampled = at_sizes(p_arr)
    out = {"slope": (float(per_doubling(sizes, points)), *percentile_interval(per_doubling(sizes, resampled), level))}
    if p_reference is not None:
        ref = np.asarray(p_reference, dtype=float)
        if ref.shape != p_arr.shape:
            raise ValueError(f"reference scores of shape {ref.shape} do not match {p_arr.shape}")
        ref_points, ref_resampled = at_sizes(ref)
        gap, gap_resampled = points - ref_points, resampled - ref_resampled
        out["gap_slope"] = (float(per_doubling(sizes, gap)),
                            *percentile_interval(per_doubling(sizes, gap_resampled), level))
        out["gap_first"] = (float(gap[0]), *percentile_interval(gap_resampled[0], level))
        out["gap_last"] = (float(gap[-1]), *percentile_interval(gap_resampled[-1], level))
    return out


def trend_table(
    scores: pd.DataFrame,
    reference: str | None = "probe",
    metric: str = "auroc",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> pd.DataFrame:
    """One row per cell (method, model, trained_on, evaluated_on) scored at two or more training
    sizes (``train_size``): the sizes, the number of questions counted, and every
    :func:`scale_trend` interval (``<name>``, ``<name>_low``, ``<name>_high``; the gap columns
    NaN for the reference itself or where it did not run). Only the questions scored at every
    size, by both the method and the reference, count."""
    rows = []
    cell_keys = [k for k in GROUP_KEYS if k != "method"]
    for keys, cell in scores.groupby(list(GROUP_KEYS), sort=True):
        row = dict(zip(GROUP_KEYS, keys, strict=True))
        where = ", ".join(f"{k}={v}" for k, v in row.items())
        table = _by_size(cell, where)
        if table is None:
            continue
        ref_table = None
        if reference is not None and row["method"] != reference:
            mask = scores.method == reference
            for key in cell_keys:
                mask &= scores[key] == row[key]
            ref_cell = scores[mask]
            ref_table = _by_size(ref_cell, where) if len(ref_cell) else None
            if ref_table is not None and list(ref_table[0].columns) == list(table[0].columns):
                common = table[0].index.intersection(ref_table[0].index)
                table = (table[0].loc[common], table[1].loc[common])
                ref_table = (ref_table[0].loc[common], ref_table[1].loc[common])
                if not (table[1] == ref_table[1]).all():
                    raise ValueError(f"{where}: the method and the {reference} disagree on an answer's label")
            else:
                ref_table = None
        wide, labels = table
        sizes = [int(s) for s in wide.columns]
        result = scale_trend(sizes, wide.to_numpy().T, labels.to_numpy(),
                             None if ref_table is None else ref_table[0].to_numpy().T,
                             metric, n_resamples, seed, level, n_bins)
        row.update(metric=metric, n=len(wide), sizes=" ".join(map(str, sizes)))
        for name in TREND_COLUMNS:
            point, low, high = result.get(name, (np.nan, np.nan, np.nan))
            row.update({name: point, f"{name}_low": low, f"{name}_high": high})
        rows.append(row)
    columns = [*GROUP_KEYS, "metric", "n", "sizes", *[f"{c}{s}" for c in TREND_COLUMNS for s in ("", "_low", "_high")]]
    return pd.DataFrame(rows, columns=columns)


def _by_size(cell: pd.DataFrame, where: str) -> tuple[pd.DataFrame, pd.Series] | None:
    """The cell's scores as questions x sizes (questions scored at every size, in question order)
    and their labels; None with fewer than two sizes."""
    if cell.train_size.nunique() < 2:
        return None
    if cell.duplicated(["question_id", "train_size"]).any():
        raise ValueError(f"{where}: a question is scored twice at one training size")
    labels = cell.groupby("question_id").label.agg(["first", "nunique"])
    if (labels["nunique"] > 1).any():
        raise ValueError(f"{where}: question {labels.index[labels['nunique'] > 1][0]!r} has different labels "
                         "at different training sizes")
    wide = cell.pivot(index="question_id", columns="train_size", values="p_correct").dropna().sort_index()
    return wide.sort_index(axis=1), labels.loc[wide.index, "first"]
