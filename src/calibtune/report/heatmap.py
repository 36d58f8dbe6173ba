"""The cross-model heatmap: one panel per method, estimator model x trained-on model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from calibtune.report.labels import method_label, metric_label, short_model_names

CMAP = "viridis"
CELL_INCHES = 0.95
NA_COLOUR = "#f2f2f2"
# The floor of the colour scale for these metrics: chance level.
CHANCE = {"auroc": 0.5}


def _ordered_unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _matrix(
    rows: pd.DataFrame,
    row_key: str,
    col_key: str,
    row_names: list[str],
    col_names: list[str],
    value: str,
) -> np.ndarray:
    dup = rows.duplicated([row_key, col_key])
    if dup.any():
        first = rows[dup].iloc[0]
        raise ValueError(
            f"more than one {value} for {row_key}={first[row_key]}, "
            f"{col_key}={first[col_key]} (method {first['method']}); "
            "the heatmap needs one value per cell"
        )
    grid = rows.pivot(index=row_key, columns=col_key, values=value)
    return grid.reindex(index=row_names, columns=col_names).to_numpy(dtype=float)


def _text_colour(cmap: Colormap, norm: Normalize, v: float) -> str:
    r, g, b, _ = cmap(norm(v))
    # Relative luminance (Rec. 709): dark cells get white text, light ones black.
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def _draw_panel(
    ax,
    grid: np.ndarray,
    row_labels: list[str],
    col_labels: list[str],
    title: str,
    cmap: Colormap,
    norm: Normalize,
    ylabel: str,
    fontsize: float,
    show_yticks: bool = True,
) -> None:
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="equal")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid[i, j]
            if np.isnan(v):
                ax.text(
                    j,
                    i,
                    "n/a",
                    ha="center",
                    va="center",
                    color="#555555",
                    fontsize=fontsize,
                    style="italic",
                )
            else:
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    color=_text_colour(cmap, norm, v),
                    fontsize=fontsize,
                )
    tilt = max((len(c) for c in col_labels), default=0) > 6  # long names would overlap
    ax.set_xticks(
        range(len(col_labels)),
        labels=col_labels,
        rotation=35 if tilt else 0,
        ha="right" if tilt else "center",
        rotation_mode="anchor",
        fontsize=fontsize,
    )
    ax.set_yticks(
        range(len(row_labels)),
        labels=row_labels if show_yticks else [],
        fontsize=fontsize,
    )
    ax.set_xlabel("Trained On", fontsize=fontsize + 1)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=fontsize + 1)
    ax.set_title(title, fontsize=fontsize + 2)
    ax.tick_params(length=0)
    ax.set_anchor("N")  # top-align panels of different heights (the baseline strip)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _colour_range(values: np.ndarray, value: str) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return CHANCE.get(value, 0.0), 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if value in CHANCE:
        lo = min(lo, CHANCE[value])
        hi = max(hi, CHANCE[value])
    if hi - lo < 1e-6:  # a single value: give the scale some width
        lo, hi = lo - 0.05, hi + 0.05
    return lo, hi


def plot_heatmap(
    metrics: pd.DataFrame,
    path: Path,
    matrix_methods: Sequence[str],
    baseline_methods: Sequence[str] = (),
    value: str = "auroc",
) -> Path:
    """Draw the cross-model matrix of ``value`` (``draw_heatmap``) and save it at ``path`` (PNG or SVG by suffix).
    Returns ``path``."""
    path = Path(path)
    fig = draw_heatmap(metrics, matrix_methods, baseline_methods, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def draw_heatmap(
    metrics: pd.DataFrame,
    matrix_methods: Sequence[str],
    baseline_methods: Sequence[str] = (),
    value: str = "auroc",
) -> Figure:
    """The cross-model matrix of ``value`` as a matplotlib figure.

    ``metrics`` is a :func:`calibtune.metrics.metrics_table` frame. Each method in
    ``matrix_methods`` gets one panel, side by side: rows are the estimator model
    ("Model"), columns the model whose answers it was trained on ("Trained On"),
    using the rows where ``evaluated_on == trained_on``. Rows and columns are in
    order of first appearance in ``metrics`` and are shared by all panels; a missing
    cell is left blank and marked "n/a".

    Methods in ``baseline_methods`` have no estimator model (their rows have model
    == trained_on == evaluated_on == the answering model); they share one extra
    panel with a row per method and the answering models as columns. All panels
    share one colour scale, which for AUROC always includes 0.5 (chance).
    """
    if value not in metrics.columns:
        raise ValueError(f"metrics has no column {value!r} to plot")
    missing = [c for c in ("method", "model", "trained_on") if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics is missing column(s): {', '.join(missing)}")
    if not matrix_methods and not baseline_methods:
        raise ValueError("nothing to plot: give at least one matrix or baseline method")

    df = metrics
    if "evaluated_on" in df.columns:
        df = df[df["evaluated_on"] == df["trained_on"]]
    mat = df[df["method"].isin(list(matrix_methods))]
    base = df[df["method"].isin(list(baseline_methods))]
    if mat.empty and base.empty:
        raise ValueError(
            "metrics has no rows for methods "
            + ", ".join([*matrix_methods, *baseline_methods])
        )

    # One order for every model name, so that with the same models on both axes the
    # diagonal is self-estimation.
    order = _ordered_unique([*mat["model"], *mat["trained_on"], *base["trained_on"]])
    row_names = [m for m in order if m in set(mat["model"])]
    col_names = [
        m for m in order if m in set(mat["trained_on"]) | set(base["trained_on"])
    ]

    grids = [
        _matrix(
            mat[mat["method"] == m], "model", "trained_on", row_names, col_names, value
        )
        for m in matrix_methods
    ]
    base_grid = None
    if baseline_methods:
        base_grid = _matrix(
            base, "method", "trained_on", list(baseline_methods), col_names, value
        )

    all_values = np.concatenate(
        [g.ravel() for g in grids]
        + ([base_grid.ravel()] if base_grid is not None else [])
    )
    lo, hi = _colour_range(all_values, value)
    cmap = colormaps[CMAP].with_extremes(bad=NA_COLOUR)
    norm = Normalize(vmin=lo, vmax=hi)

    n_rows, n_cols = max(len(row_names), 1), max(len(col_names), 1)
    longest = max((len(s) for s in short_model_names(order)), default=4)
    label_in = min(0.075 * longest, 2.5)  # room for rotated/side tick labels
    fontsize = 10 if n_cols <= 4 else 8
    panels = len(grids) + (1 if base_grid is not None else 0)
    width = (
        panels * (n_cols * CELL_INCHES + 0.6)
        + label_in * (1 + (base_grid is not None))
        + 1.4
    )
    height = max(n_rows, 1) * CELL_INCHES + label_in + 1.2

    fig = Figure(figsize=(width, height), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ratios = [n_cols] * panels
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": ratios}, squeeze=False)[
        0
    ]

    col_labels = short_model_names(col_names)
    row_labels = short_model_names(row_names)
    for k, (method, grid) in enumerate(zip(matrix_methods, grids, strict=True)):
        _draw_panel(
            axes[k],
            grid,
            row_labels,
            col_labels,
            method_label(method),
            cmap,
            norm,
            ylabel="Model" if k == 0 else "",
            fontsize=fontsize,
            show_yticks=k == 0,
        )
    if base_grid is not None:
        ax = axes[-1]
        _draw_panel(
            ax,
            base_grid,
            [method_label(m) for m in baseline_methods],
            col_labels,
            "Baselines (no estimator)",
            cmap,
            norm,
            ylabel="",
            fontsize=fontsize,
        )
        ax.set_xlabel("Answering model", fontsize=fontsize + 1)

    cbar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.8, pad=0.02
    )
    cbar.set_label(metric_label(value), fontsize=fontsize + 1)
    cbar.ax.tick_params(labelsize=fontsize)
    return fig
