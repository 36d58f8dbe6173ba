"""From a run's scores to everything a reader sees: metrics with intervals, paired differences,
per-subject breakdowns, figures and report.html.

``write_results`` is the one path, used at the end of ``calibtune run`` and by
``calibtune report`` (which rebuilds a run folder from ``scores.parquet`` and
``config.yaml`` without loading a model).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from calibtune.bootstrap import bootstrap_table, paired_table, subject_breakdown
from calibtune.calibration import cross_fitted
from calibtune.config import StudyConfig
from calibtune.methods import ANSWERER_METHODS, MATRIX_METHODS, METHODS
from calibtune.metrics import metrics_table
from calibtune.trend import trend_table

KEYS = ["method", "model", "trained_on", "evaluated_on"]
TS_METRICS = ("ece", "ece_top_label", "brier", "nll")
# After Platt scaling cross-fitted on the evaluation answers (``calibration.cross_fitted``).
XFIT_METRICS = ("ece", "brier")
XFIT_FOLDS = 5
# What each cell is compared with, by the paired bootstrap, when present.
REFERENCE_METHOD = "probe"


def study_metrics(scores: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, n_bins: int = 10,
                  level: float = 0.95) -> pd.DataFrame:
    """Per-cell metrics with bootstrap intervals (``<m>_low``/``<m>_high``), plus ECE, Brier and NLL
    after temperature scaling (``<m>_ts``) and the fitted temperature where the scores have them, and ECE
    and Brier after Platt scaling cross-fitted on the cell's evaluation answers (``<m>_xfit``; NaN for a
    cell with fewer than five answers of a class)."""
    base = scores[KEYS + ["question_id", "p_correct", "label"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one-class cells: NaN AUROC, reported in the table
        metrics = bootstrap_table(base, n_resamples=n_resamples, seed=seed, n_bins=n_bins, level=level)
        if "p_correct_ts" in scores:
            scaled = scores[KEYS + ["question_id", "p_correct_ts", "label"]].rename(
                columns={"p_correct_ts": "p_correct"})
            ts = metrics_table(scaled, n_bins=n_bins)[KEYS + list(TS_METRICS)]
            ts = ts.rename(columns={c: f"{c}_ts" for c in TS_METRICS})
            temps = scores.groupby(KEYS, as_index=False).temperature.first()
            metrics = metrics.merge(ts, on=KEYS, how="left").merge(temps, on=KEYS, how="left")
        refitted = base.copy()
        for _, rows in refitted.groupby(KEYS, sort=False):
            refitted.loc[rows.index, "p_correct"] = cross_fitted(rows.p_correct.to_numpy(), rows.label.to_numpy(),
                                                                 XFIT_FOLDS, seed)
        refitted = refitted[np.isfinite(refitted.p_correct)]
        if len(refitted):
            xfit = metrics_table(refitted, n_bins=n_bins)[KEYS + list(XFIT_METRICS)]
            metrics = metrics.merge(xfit.rename(columns={c: f"{c}_xfit" for c in XFIT_METRICS}), on=KEYS, how="left")
        else:
            metrics = metrics.assign(**{f"{c}_xfit": np.nan for c in XFIT_METRICS})
    return metrics


def comparison_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """Every method against the Probe (when the Probe ran): the pairs of the paired bootstrap."""
    if REFERENCE_METHOD not in methods:
        return []
    return [(m, REFERENCE_METHOD) for m in methods if m != REFERENCE_METHOD]


def ordered_methods(config: StudyConfig, scores: pd.DataFrame) -> list[str]:
    """The methods that have scores, in the registry's order (matrix methods first)."""
    present = set(scores.method)
    return [m for m in METHODS if m in config.methods and m in present]


def write_results(output: Path, config: StudyConfig, scores: pd.DataFrame, extra: dict | None = None) -> pd.DataFrame:
    """Write metrics.csv, metrics.json, every figure (PNG and SVG) and report.html into ``output``.

    ``extra`` adds study facts to metrics.json (answer accuracy, question counts); without it
    those of an existing metrics.json are kept, so a rebuilt report loses nothing.
    """
    from calibtune.report.figures import plot_reliability, plot_risk_coverage, plot_subject_auroc
    from calibtune.report.heatmap import plot_heatmap
    from calibtune.report.html import write_report

    output = Path(output)
    settings = config.report
    scale = trend = None
    if "train_size" in scores and scores.train_size.nunique() > 1:  # a data-scale study
        scale = data_scale_metrics(scores, config)
        scale.to_csv(output / "data_scale.csv", index=False)
        trend = trend_table(scores, REFERENCE_METHOD, "auroc", settings.bootstrap_resamples, config.seed,
                            settings.level, settings.bins)
        trend.to_csv(output / "data_scale_trend.csv", index=False)
        scores = scores[scores.train_size == scores.train_size.max()]  # everything else: the largest size
    metrics = study_metrics(scores, settings.bootstrap_resamples, config.seed, settings.bins, settings.level)
    metrics.to_csv(output / "metrics.csv", index=False)
    methods = ordered_methods(config, scores)
    tables = [paired_table(_common_questions(scores, a, b), [(a, b)], n_resamples=settings.bootstrap_resamples,
                           seed=config.seed, level=settings.level, n_bins=settings.bins,
                           metrics=["auroc", "ece", "brier", "aurc"]) for a, b in comparison_pairs(methods)]
    paired = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    subjects = _subjects(scores, settings.bins)
    datasets = dataset_breakdown(scores, settings.bins)
    (output / "datasets.csv").unlink(missing_ok=True)
    if datasets is not None:
        datasets.to_csv(output / "datasets.csv", index=False)

    previous = output / "metrics.json"
    if extra is None and previous.is_file():
        old = json.loads(previous.read_text())
        extra = {k: v for k, v in old.items() if k not in ("cells", "paired", "subjects", "datasets")}
    extra = extra or {}
    records = json.loads(metrics.to_json(orient="records"))
    if "n_eval" in extra:
        for record in records:  # answers a method could not score (unparseable verbalized replies)
            record["n_left_out"] = int(extra["n_eval"]) - int(record["n"])
    payload = {"cells": records, **extra, "bootstrap": settings.model_dump(),
               "paired": json.loads(paired.to_json(orient="records")),
               "subjects": json.loads(subjects.to_json(orient="records")) if subjects is not None else [],
               "datasets": json.loads(datasets.to_json(orient="records")) if datasets is not None else []}
    if scale is not None:
        payload["data_scale"] = json.loads(scale.to_json(orient="records"))
        payload["data_scale_trend"] = json.loads(trend.to_json(orient="records"))
    (output / "metrics.json").write_text(json.dumps(payload, indent=2))

    for old_figure in list(output.glob("reliability_*.*")) + list(output.glob("subjects_auroc.*")):
        old_figure.unlink()
    if scale is not None:
        from calibtune.report.figures import plot_data_scale

        plot_data_scale(scale, output / "data_scale.png", config.models, trend)
    matrix = [m for m in config.heatmap if m in methods] or [m for m in MATRIX_METHODS if m in methods]
    baselines = [m for m in ANSWERER_METHODS if m in methods]
    order = {name: i for i, name in enumerate(config.models)}
    ordered = metrics.sort_values(["model", "trained_on"], key=lambda col: col.map(order))
    if matrix or baselines:
        heatmap = plot_heatmap(ordered, output / "heatmap.png", matrix_methods=matrix or baselines,
                               baseline_methods=baselines if matrix else ())
        _svg_twin(heatmap, ordered, matrix or baselines, baselines if matrix else ())
    for method in methods:
        plot_reliability(scores, method, output / f"reliability_{method}.png", config.models, settings.bins)
    if (scores.model == scores.trained_on).any():
        plot_risk_coverage(scores, output / "risk_coverage.png", config.models, methods)
    if subjects is not None:
        plot_subject_auroc(subjects, output / "subjects_auroc.png", config.models)
    write_report(output)
    return metrics


def dataset_breakdown(scores: pd.DataFrame, n_bins: int) -> pd.DataFrame | None:
    """Each cell on each of its evaluation datasets, when the evaluation set has two or more: the number of
    answers, the accuracy, the mean P(correct) and ECE after the cell's temperature scaling (one temperature for
    every dataset, fitted on the study's calibration set or on held-out training answers; before it where the
    scores have none) and AUROC (NaN for a dataset whose answers are all right or all wrong).

    Temperature scaling can match the mean P(correct) to the accuracy only on a set drawn like the answers it
    was fitted on; a dataset whose accuracy differs from the mix's shows what it cannot undo, and
    whether an estimator tells the datasets' accuracies apart."""
    if "dataset" not in scores or scores.dataset.nunique() < 2:
        return None
    # the per-subject breakdown with datasets as subjects; a cell's one temperature leaves its AUROC as it is
    scaled = scores.assign(p_correct=scores["p_correct_ts" if "p_correct_ts" in scores else "p_correct"])
    table = subject_breakdown(scaled, "dataset", n_bins)
    table = table[table.row == "subject"].rename(columns={"subject": "dataset", "ece": "ece_ts"})
    mean_p = scaled.groupby(KEYS + ["dataset"], as_index=False).p_correct.mean().rename(
        columns={"p_correct": "mean_p_ts"})
    return table.merge(mean_p, on=KEYS + ["dataset"])[KEYS + ["dataset", "n", "accuracy", "mean_p_ts", "ece_ts",
                                                                "auroc"]].reset_index(drop=True)


def data_scale_metrics(scores: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    """Per-cell metrics with intervals at each number of training answers (``train_size``) of a data-scale study."""
    settings = config.report
    tables = [study_metrics(rows, settings.bootstrap_resamples, config.seed, settings.bins, settings.level)
              .assign(train_size=int(size)) for size, rows in scores.groupby("train_size")]
    return pd.concat(tables, ignore_index=True)


def _common_questions(scores: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Methods a and b's rows restricted, cell by cell, to the questions both scored (a verbalized
    reply without a probability leaves its question out of one method only)."""
    rows = scores[scores.method.isin([a, b])]
    keys = ["model", "trained_on", "evaluated_on", "question_id"]
    both = rows.groupby(keys).method.nunique()
    shared = both[both == 2].reset_index()[keys]
    return rows.merge(shared, on=keys, how="inner")


def _svg_twin(png: Path, metrics: pd.DataFrame, matrix: list[str], baselines: list[str]) -> None:
    from calibtune.report.heatmap import plot_heatmap

    plot_heatmap(metrics, png.with_suffix(".svg"), matrix_methods=matrix, baseline_methods=baselines)


def _subjects(scores: pd.DataFrame, n_bins: int) -> pd.DataFrame | None:
    """Per-subject metrics with macro and micro averages, when the questions have two or more subjects."""
    if "subject" not in scores or scores.subject.replace("", np.nan).dropna().nunique() < 2:
        return None
    return subject_breakdown(scores, n_bins=n_bins)
