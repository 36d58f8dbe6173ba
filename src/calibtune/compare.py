"""Compare two runs cell by cell: metric differences with bootstrap intervals.

A cell (method, estimator model, answering model) present in both runs is compared on
its evaluation questions. When both runs scored the same questions with the same labels,
the bootstrap is paired (the same resampled questions for both), which is what tells
whether one really beats the other; otherwise each run is resampled on its own and the
interval is that of the difference of two independent estimates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from calibtune.bootstrap import paired_bootstrap, percentile_interval, resample_indices, resampled_metrics
from calibtune.errors import CalibtuneError
from calibtune.metrics import metric_value
from calibtune.report.labels import method_label, metric_label

CELL = ["method", "model", "trained_on"]
DEFAULT_METRICS = ("auroc", "ece", "brier", "aurc")


def read_scores(run: Path) -> pd.DataFrame:
    """A run folder's scores.parquet, checked."""
    path = Path(run) / "scores.parquet"
    if not path.is_file():
        raise CalibtuneError(f"{path} not found: is {run} a run folder?")
    scores = pd.read_parquet(path)
    missing = [c for c in (*CELL, "question_id", "p_correct", "label") if c not in scores]
    if missing:
        raise CalibtuneError(f"{path} lacks column(s) {', '.join(missing)}")
    return scores


def compare_runs(run_a: Path, run_b: Path, metrics: Sequence[str] = DEFAULT_METRICS, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per cell in both runs: each metric in A and B, B - A, and its interval."""
    a, b = read_scores(run_a), read_scores(run_b)
    unknown = [m for m in metrics if m not in _known_metrics()]
    if unknown:
        raise CalibtuneError(f"unknown metric '{unknown[0]}'; known: {', '.join(_known_metrics())}")
    rows = []
    for keys, ga in a.groupby(CELL, sort=False):
        gb = b[(b.method == keys[0]) & (b.model == keys[1]) & (b.trained_on == keys[2])]
        if gb.empty:
            continue
        row = dict(zip(CELL, keys), n_a=len(ga), n_b=len(gb))
        merged = ga.merge(gb, on="question_id", suffixes=("_a", "_b"))
        paired = (len(merged) == len(ga) == len(gb)) and (merged.label_a == merged.label_b).all()
        row["paired"] = bool(paired)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if paired:
                diffs = paired_bootstrap(merged.p_correct_b, merged.p_correct_a, merged.label_a, list(metrics),
                                         n_resamples, seed, level)
            else:
                diffs = _independent(ga, gb, metrics, n_resamples, seed, level)
            for m in metrics:
                row[f"{m}_a"] = metric_value(m, ga.p_correct.to_numpy(float), ga.label.to_numpy(int))
                row[f"{m}_b"] = metric_value(m, gb.p_correct.to_numpy(float), gb.label.to_numpy(int))
                row[f"{m}_diff"], row[f"{m}_low"], row[f"{m}_high"] = diffs[m]
        rows.append(row)
    if not rows:
        raise CalibtuneError(f"{run_a} and {run_b} share no cell (method, model, trained on)")
    return pd.DataFrame(rows)


def _known_metrics() -> list[str]:
    from calibtune.metrics import METRICS

    return list(METRICS)


def _independent(ga: pd.DataFrame, gb: pd.DataFrame, metrics: Sequence[str], n_resamples: int, seed: int,
                 level: float) -> dict[str, tuple[float, float, float]]:
    pa, ya = ga.p_correct.to_numpy(float), ga.label.to_numpy(int)
    pb, yb = gb.p_correct.to_numpy(float), gb.label.to_numpy(int)
    va = resampled_metrics(pa, ya, resample_indices(len(pa), n_resamples, seed), list(metrics))
    vb = resampled_metrics(pb, yb, resample_indices(len(pb), n_resamples, seed + 1), list(metrics))
    out = {}
    for m in metrics:
        low, high = percentile_interval(vb[m] - va[m], level)
        out[m] = (metric_value(m, pb, yb) - metric_value(m, pa, ya), low, high)
    return out


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """A table as Markdown (for a paper or an issue) or as aligned plain text."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def format_comparison(table: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS, markdown: bool = False) -> str:
    """The comparison as a table: per cell and metric, A, B and B - A [interval]; * where the interval excludes 0."""
    headers = ["method", "model", "trained on", "paired"] + [f"{metric_label(m)} A / B / B-A" for m in metrics]
    rows = []
    for row in table.to_dict("records"):
        cells = [method_label(row["method"]), row["model"], row["trained_on"], "yes" if row["paired"] else "no"]
        for m in metrics:
            low, high = row[f"{m}_low"], row[f"{m}_high"]
            star = "*" if np.isfinite(low) and (low > 0 or high < 0) else ""
            cells.append(f"{row[f'{m}_a']:.3f} / {row[f'{m}_b']:.3f} / {row[f'{m}_diff']:+.3f} "
                         f"[{low:+.3f}, {high:+.3f}]{star}")
        rows.append(cells)
    return render_table(headers, rows, markdown)
