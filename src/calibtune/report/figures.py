"""The study's figures besides the heatmap: reliability diagrams, risk-coverage curves, per-subject AUROC.

Every figure is drawn from ``scores.parquet`` alone and saved as PNG and SVG. Lines and
bars use the Okabe-Ito palette, which stays distinguishable with the common colour-vision
deficiencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from calibtune.metrics import aurc, ece, risk_coverage_curve
from calibtune.report.labels import method_label, short_model_name

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
LINE_STYLES = ("-", "--", "-.", ":")
DPI = 110


def save_figure(fig: Figure, png: Path) -> Path:
    """Write ``fig`` as ``png`` and as the SVG beside it; returns the PNG's path."""
    FigureCanvasAgg(fig)
    fig.savefig(png, dpi=DPI, bbox_inches="tight")
    fig.savefig(png.with_suffix(".svg"), bbox_inches="tight")
    return png


def _cells(scores: pd.DataFrame, method: str, models: Sequence[str]) -> list[tuple[str, str, pd.DataFrame]]:
    order = {m: i for i, m in enumerate(models)}
    rows = scores[scores.method == method]
    groups = [(e, t, g) for (e, t), g in rows.groupby(["model", "trained_on"], sort=False)]
    return sorted(groups, key=lambda x: (order.get(x[0], len(order)), order.get(x[1], len(order))))


def plot_reliability(scores: pd.DataFrame, method: str, png: Path, models: Sequence[str] = (),
                     n_bins: int = 10) -> Path:
    """One method's reliability diagrams, a column per cell: accuracy per confidence bin over the
    histogram of confidences, with the cell's ECE (before temperature scaling) in its title."""
    cells = _cells(scores, method, models)
    if not cells:
        raise ValueError(f"no scores for method '{method}'")
    fig = Figure(figsize=(2.9 * len(cells) + 0.4, 4.4))
    grid = fig.add_gridspec(2, len(cells), height_ratios=(3, 1), hspace=0.08, wspace=0.28)
    edges = np.linspace(0, 1, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for col, (e, t, g) in enumerate(cells):
        p, y = g.p_correct.to_numpy(float), g.label.to_numpy(int)
        idx = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, n_bins - 1)
        counts = np.bincount(idx, minlength=n_bins)
        hits = np.bincount(idx, weights=y, minlength=n_bins)
        conf = np.bincount(idx, weights=p, minlength=n_bins)
        filled = counts > 0
        top = fig.add_subplot(grid[0, col])
        top.plot([0, 1], [0, 1], color="#555555", lw=1, ls="--", label="perfect calibration")
        top.bar(centres[filled], hits[filled] / counts[filled], width=1 / n_bins, color=OKABE_ITO[0],
                edgecolor="white", label="accuracy")
        top.bar(centres[filled], conf[filled] / counts[filled] - hits[filled] / counts[filled],
                bottom=hits[filled] / counts[filled], width=1 / n_bins, color="none", edgecolor=OKABE_ITO[3],
                hatch="//", lw=0.8, label="gap to mean confidence")
        top.set(xlim=(0, 1), ylim=(0, 1), xticklabels=[])
        top.set_title(f"{short_model_name(e)} on {short_model_name(t)}\nECE {ece(p, y, n_bins):.3f}", fontsize=9)
        if col == 0:
            top.set_ylabel("accuracy")
            top.legend(loc="upper left", fontsize=7, frameon=False)
        bottom = fig.add_subplot(grid[1, col])
        bottom.bar(centres, counts, width=1 / n_bins, color="#999999", edgecolor="white")
        bottom.set(xlim=(0, 1), xlabel="P(correct)")
        if col == 0:
            bottom.set_ylabel("count")
    fig.suptitle(f"Reliability: {method_label(method)}", fontsize=11, y=1.02)
    return save_figure(fig, png)


def plot_risk_coverage(scores: pd.DataFrame, png: Path, models: Sequence[str] = (),
                       methods: Sequence[str] = ()) -> Path:
    """Risk-coverage curves of every method on one plot per answering model (its own cells,
    estimator = answering model), AURC in the legend."""
    diag = scores[scores.model == scores.trained_on]
    answering = [m for m in models if m in set(diag.trained_on)] or list(dict.fromkeys(diag.trained_on))
    methods = [m for m in methods if m in set(diag.method)] or list(dict.fromkeys(diag.method))
    if not answering:
        raise ValueError("no cell with the estimator model equal to the answering model")
    fig = Figure(figsize=(4.6 * len(answering), 4.0))
    axes = fig.subplots(1, len(answering), squeeze=False)[0]
    for ax, t in zip(axes, answering):
        for i, method in enumerate(methods):
            g = diag[(diag.trained_on == t) & (diag.method == method)]
            if g.empty:
                continue
            p, y = g.p_correct.to_numpy(float), g.label.to_numpy(int)
            coverage, risk = risk_coverage_curve(p, y)
            ax.plot(coverage, risk, color=OKABE_ITO[i % len(OKABE_ITO)], ls=LINE_STYLES[(i // 4) % 4], lw=1.6,
                    label=f"{method_label(method)} (AURC {aurc(p, y):.3f})")
        base = 1 - diag[diag.trained_on == t].groupby("question_id").label.first().mean()
        ax.axhline(base, color="#555555", lw=1, ls=":", label=f"error rate {base:.3f}")
        ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage", ylabel="risk (error rate of kept answers)",
               title=f"answers of {short_model_name(t)}")
        # one column: two columns of "<method> (AURC x)" run into the next panel's legend
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    return save_figure(fig, png)


def plot_subject_auroc(subjects: pd.DataFrame, png: Path, models: Sequence[str] = ()) -> Path:
    """Per-subject AUROC bars (self cells), one panel per answering model, one bar per method."""
    rows = subjects[(subjects.row == "subject") & (subjects.model == subjects.trained_on)]
    if rows.empty:
        raise ValueError("no per-subject rows")
    answering = [m for m in models if m in set(rows.trained_on)] or list(dict.fromkeys(rows.trained_on))
    methods = list(dict.fromkeys(rows.method))
    names = sorted(set(rows.subject))
    height = max(3.0, 0.16 * len(names) * max(1, len(methods)) ** 0.5 + 1.2)
    fig = Figure(figsize=(4.8 * len(answering) + 1.6, height))
    axes = fig.subplots(1, len(answering), squeeze=False, sharey=True)[0]
    width = 0.8 / len(methods)
    for ax, t in zip(axes, answering):
        for i, method in enumerate(methods):
            g = rows[(rows.trained_on == t) & (rows.method == method)].set_index("subject").reindex(names)
            ax.barh(np.arange(len(names)) + i * width, g.auroc.to_numpy(float), height=width,
                    color=OKABE_ITO[i % len(OKABE_ITO)], label=method_label(method))
        ax.axvline(0.5, color="#555555", lw=1, ls=":")
        ax.set(xlim=(0, 1), xlabel="AUROC", title=f"answers of {short_model_name(t)}")
        ax.set_yticks(np.arange(len(names)) + 0.4 - width / 2, [n.replace("_", " ") for n in names], fontsize=7)
        ax.invert_yaxis()
    axes[0].legend(fontsize=7, frameon=False, loc="lower right")
    return save_figure(fig, png)


def plot_data_scale(scale: pd.DataFrame, png: Path, models: Sequence[str], trend: pd.DataFrame | None = None) -> Path:
    """AUROC and ECE against the number of training answers (log scale), a line per method and cell with its
    bootstrap interval as a band: the paper's data-scale figure. With ``trend`` (``trend.trend_table``) each
    line's label also gives AUROC's slope per doubling."""
    slopes = {} if trend is None else {(r.method, r.model, r.trained_on): r.slope for r in trend.itertuples()}
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    order = {m: i for i, m in enumerate(models)}
    groups = sorted(scale.groupby(["method", "model", "trained_on"], sort=False),
                    key=lambda g: (g[0][0], order.get(g[0][1], 99), order.get(g[0][2], 99)))
    several = scale[["model", "trained_on"]].drop_duplicates().shape[0] > 1
    for i, ((method, e, t), rows) in enumerate(groups):
        rows = rows.sort_values("train_size")
        label = method_label(method) + (f" ({short_model_name(e)} on {short_model_name(t)})" if several else "")
        if np.isfinite(slopes.get((method, e, t), np.nan)):
            label += f", AUROC {slopes[(method, e, t)]:+.3f} per doubling"
        colour, style = OKABE_ITO[i % len(OKABE_ITO)], LINE_STYLES[(i // len(OKABE_ITO)) % len(LINE_STYLES)]
        for ax, metric in zip(axes, ("auroc", "ece")):
            ax.plot(rows.train_size, rows[metric], marker="o", color=colour, linestyle=style, label=label)
            if f"{metric}_low" in rows:
                ax.fill_between(rows.train_size, rows[f"{metric}_low"], rows[f"{metric}_high"], color=colour,
                                alpha=0.15, linewidth=0)
    for ax, title in zip(axes, ("AUROC (higher is better)", "ECE (lower is better)")):
        ax.set_xscale("log")
        ax.set_xlabel("training answers")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.suptitle("Data scale: the same evaluation questions, estimators trained on more answers", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, png)
