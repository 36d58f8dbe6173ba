"""A run's report: one self-contained HTML file with the heatmap, metrics and config."""

from __future__ import annotations

import base64
import json
import math
import numbers
import os
import tempfile
from html import escape
from pathlib import Path

import pandas as pd
import yaml

from calibtune.errors import CalibtuneError
from calibtune.report.labels import method_label, metric_label

METRIC_COLUMNS = ("auroc", "ece", "ece_top_label", "brier", "nll", "accuracy")
EXTRA_METRIC_COLUMNS = ("auprc", "auprc_incorrect", "ece_equal_mass", "mce", "aurc", "acc_at_50", "acc_at_80", "ece_ts",
                        "ece_xfit")
FIGURE_TITLES = (("data_scale", "AUROC and ECE against the number of training answers"),
                 ("risk_coverage", "Risk-coverage curves"), ("reliability_", "Reliability diagrams"),
                 ("subjects_auroc", "AUROC per subject"))
KEY_COLUMNS = ("method", "model", "trained_on")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
tr:hover td { background: #fafafa; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.note { color: #777; font-style: italic; }
.wide { overflow-x: auto; }
.ci { color: #777; font-size: 0.85em; white-space: nowrap; }
td.sig { font-weight: bold; }
table.paper th { text-align: center; }
"""


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, numbers.Real):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return "n/a" if value is None else escape(str(value))


def _read_metrics(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CalibtuneError(f"metrics file not found: {path}")
    # All text first, so a model named "NA" or "None" stays a name, then numbers.
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise CalibtuneError(f"metrics file is empty: {path}") from exc
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise CalibtuneError(f"{path} is missing column(s): {', '.join(missing)}")
    for col in df.columns:
        if col in ("method", "model", "trained_on", "evaluated_on"):
            continue
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _with_interval(row: dict, metric: str) -> str:
    """``0.712 [0.676, 0.748]`` when the row has the metric's interval, else the value alone."""
    value = _fmt(row.get(metric, float("nan")))
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if isinstance(low, numbers.Real) and isinstance(high, numbers.Real) and not (math.isnan(low) or math.isnan(high)):
        return f'{value} <span class="ci">[{low:.3f}, {high:.3f}]</span>'
    return value


def _metrics_table(df: pd.DataFrame) -> str:
    """Every method and cell, each metric with its bootstrap interval where the run has one."""
    show_eval = (
        "evaluated_on" in df.columns and (df["evaluated_on"] != df["trained_on"]).any()
    )
    columns = [c for c in (*METRIC_COLUMNS, *EXTRA_METRIC_COLUMNS) if c in df.columns]
    headers = ["Method", "Model", "Trained on"] + (["Evaluated on"] if show_eval else [])
    headers += ["n"] + [metric_label(c) for c in columns]
    lines = [
        "<table>",
        "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead>",
        "<tbody>",
    ]
    for row in df.to_dict("records"):
        cells = [escape(method_label(row["method"])), escape(row["model"]), escape(row["trained_on"])]
        if show_eval:
            cells.append(escape(row["evaluated_on"]))
        text = "".join(f"<td>{c}</td>" for c in cells)
        n = row.get("n", float("nan"))
        text += f'<td class="num">{"n/a" if pd.isna(n) else int(n)}</td>'
        text += "".join(f'<td class="num">{_with_interval(row, c)}</td>' for c in columns)
        lines.append(f"<tr>{text}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _paper_table(df: pd.DataFrame) -> str:
    """The paper's layout: a row per method, ECE and AUROC of each model estimating its own answers."""
    own = df[df["model"] == df["trained_on"]]
    models = list(dict.fromkeys(own["trained_on"]))
    methods = list(dict.fromkeys(own["method"]))
    if not models:
        return '<p class="note">No cell has the estimator model equal to the answering model.</p>'
    head = "<tr><th rowspan=\"2\">Method</th>" + "".join(
        f'<th colspan="2">{escape(m)}</th>' for m in models) + "</tr>"
    head += "<tr>" + "<th>ECE &darr;</th><th>AUROC &uarr;</th>" * len(models) + "</tr>"
    lines = ['<table class="paper">', f"<thead>{head}</thead>", "<tbody>"]
    for method in methods:
        cells = [f"<td>{escape(method_label(method))}</td>"]
        for model in models:
            row = own[(own["method"] == method) & (own["trained_on"] == model)]
            ece = row["ece"].iloc[0] if len(row) else float("nan")
            auroc = row["auroc"].iloc[0] if len(row) else float("nan")
            cells += [f'<td class="num">{_fmt(ece)}</td>', f'<td class="num">{_fmt(auroc)}</td>']
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _paired_table(paired: list[dict]) -> str:
    """Paired bootstrap differences (method a minus method b on the same questions)."""
    if not paired:
        return '<p class="note">No pair of methods shares a cell in this run.</p>'
    metrics = [k[: -len("_diff")] for k in paired[0] if k.endswith("_diff")]
    headers = ["A", "B", "Model", "Trained on", "n"] + [f"{metric_label(m)} A &minus; B" for m in metrics]
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    for row in paired:
        cells = [escape(method_label(row["a"])), escape(method_label(row["b"])), escape(str(row["model"])),
                 escape(str(row["trained_on"]))]
        text = "".join(f"<td>{c}</td>" for c in cells) + f'<td class="num">{int(row["n"])}</td>'
        for m in metrics:
            low, high = row.get(f"{m}_diff_low"), row.get(f"{m}_diff_high")
            mark = ""
            if isinstance(low, numbers.Real) and isinstance(high, numbers.Real) and (low > 0 or high < 0):
                mark = ' class="num sig"'
            interval = "" if low is None or high is None else f' <span class="ci">[{_fmt(low)}, {_fmt(high)}]</span>'
            text += f'<td{mark or " class=num"}>{_fmt(row.get(f"{m}_diff"))}{interval}</td>'
        lines.append(f"<tr>{text}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _table(headers: list[str], rows: list[tuple[list[str], list[str]]]) -> str:
    """An HTML table; each row is its text cells, then its numeric (right-aligned) cells, escaped already."""
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    for text, numeric in rows:
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in text)
                     + "".join(f'<td class="num">{c}</td>' for c in numeric) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _cell_names(row: dict) -> list[str]:
    return [escape(method_label(row["method"])), escape(row["model"]), escape(row["trained_on"])]


def _dataset_table(rows: list[dict]) -> str:
    """Each cell on each evaluation dataset: answers, accuracy, mean P(correct) and ECE after TS, AUROC."""
    headers = ["Method", "Model", "Trained on", "Dataset", "n", "Accuracy", "Mean P(correct) after TS",
               "ECE after TS", "AUROC"]
    measures = ("accuracy", "mean_p_ts", "ece_ts", "auroc")
    return _table(headers, [(_cell_names(row) + [escape(row["dataset"])],
                             [str(int(row["n"]))] + [_fmt(row[m]) for m in measures]) for row in rows])


def _data_scale_table(rows: list[dict]) -> str:
    """AUROC and ECE with intervals at each number of training answers."""
    headers = ["Method", "Model", "Trained on", "Training answers", "AUROC", "ECE"]
    ordered = sorted(rows, key=lambda r: (r["method"], r["model"], r["trained_on"], r["train_size"]))
    return _table(headers, [(_cell_names(row), [str(int(row["train_size"]))]
                             + [_with_interval(row, m) for m in ("auroc", "ece")]) for row in ordered])


def _trend_table(rows: list[dict]) -> str:
    """AUROC per doubling of the training answers, and the gap to the Probe at both ends and per doubling."""
    headers = ["Method", "Model", "Trained on", "Training answers", "AUROC per doubling",
               "Gap to the Probe, fewest", "Gap to the Probe, most", "Gap per doubling"]
    return _table(headers, [(_cell_names(row) + [escape(str(row["sizes"]).replace(" ", ", "))],
                             [_with_interval(row, m) for m in ("slope", "gap_first", "gap_last", "gap_slope")])
                            for row in rows])


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CalibtuneError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _temperature_source(info: dict) -> str:
    """What the run's temperatures were fitted on, as metrics.json records it."""
    n = info.get("n_calibrate")
    return f"the study's calibration set ({n} questions drawn like the evaluation set)" if n else \
        "held-out training answers"


def _level(info: dict) -> str:
    level = info.get("bootstrap", {}).get("level", 0.95)
    return f"{100 * level:g}%"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _title(config_text: str | None, run_dir: Path) -> str:
    if config_text:
        try:
            config = yaml.safe_load(config_text)
        except yaml.YAMLError:
            config = None
        if isinstance(config, dict) and isinstance(config.get("name"), str):
            return f"calibtune report: {config['name']}"
    return f"calibtune report: {run_dir.resolve().name}"


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from the run's config, metrics and figures.

    Reads ``config.yaml``, ``metrics.csv`` and ``heatmap.png`` (plus any other PNG
    figures) from ``run_dir`` and writes one self-contained HTML file: images are
    embedded as base64, the CSS is inline, nothing is fetched. A missing config or
    heatmap is noted in the page; a missing ``metrics.csv`` raises
    :class:`~calibtune.errors.CalibtuneError`. Returns the report's path.
    """
    run_dir = Path(run_dir)
    metrics = _read_metrics(run_dir / "metrics.csv")
    config_path = run_dir / "config.yaml"
    config_text = (
        config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    )
    title = _title(config_text, run_dir)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="note">Run folder: {escape(str(run_dir))}</p>',
        "<h2>Cross-model matrix</h2>",
    ]
    heatmap = run_dir / "heatmap.png"
    if heatmap.is_file():
        parts.append(_image(heatmap, "Cross-model heatmap"))
    else:
        parts.append('<p class="note">No heatmap.png in this run; figure skipped.</p>')

    info = _read_json(run_dir / "metrics.json")
    parts += ["<h2>Paper-style table</h2>",
              '<p class="note">Each model estimating its own answers; ECE before temperature scaling.</p>',
              _paper_table(metrics),
              "<h2>Every method and cell</h2>",
              f'<p class="note">Brackets: {_level(info)} bootstrap intervals over the evaluation questions. '
              f"ECE after TS: after temperature scaling fitted on {_temperature_source(info)}. ECE after Platt "
              "(cross-fitted): after Platt scaling fitted, five folds, on the other evaluation answers of the cell "
              "(recalibration with graded answers of the evaluation's own distribution).</p>",
              f'<div class="wide">{_metrics_table(metrics)}</div>']
    if info.get("data_scale"):
        parts += ["<h2>Data scale</h2>",
                  '<p class="note">The same evaluation questions; each row an estimator trained on the first '
                  "n answers of one seeded shuffle of the training answers (the tables above: the largest n).</p>",
                  _data_scale_table(info["data_scale"])]
        if info.get("data_scale_trend"):
            parts += ['<p class="note">The trend: least-squares slope of AUROC against log2 of the number of '
                      "training answers, and the gap to the Probe (method minus Probe; a positive slope: the "
                      "method gains on the Probe as the answers double). Intervals from one set of resampled "
                      "questions shared by every size and both methods.</p>",
                      _trend_table(info["data_scale_trend"])]
    if info.get("datasets"):
        parts += ["<h2>By evaluation dataset</h2>",
                  '<p class="note">Each cell on each of its evaluation datasets, after the cell\'s one temperature '
                  f"(fitted on {_temperature_source(info)}). Where a dataset's mean P(correct) misses its accuracy, "
                  "the estimator does not tell that dataset's accuracy from the others'; no temperature can.</p>",
                  f'<div class="wide">{_dataset_table(info["datasets"])}</div>']
    if info.get("paired"):
        parts += ["<h2>Paired differences</h2>",
                  '<p class="note">Paired bootstrap on the same questions; bold where the interval excludes 0.</p>',
                  _paired_table(info["paired"])]
    shown = {heatmap}
    for prefix, heading in FIGURE_TITLES:
        figures = sorted(p for p in run_dir.glob(f"{prefix}*.png") if p not in shown)
        if figures:
            parts.append(f"<h2>{escape(heading)}</h2>")
            for fig in figures:
                parts.append(_image(fig, fig.stem.replace("_", " ")))
                shown.add(fig)
    others = sorted(p for p in run_dir.glob("*.png") if p not in shown)
    if others:
        parts.append("<h2>Other figures</h2>")
        for fig in others:
            parts += [f"<h3>{escape(fig.stem)}</h3>", _image(fig, fig.stem)]

    parts.append("<h2>Resolved config</h2>")
    if config_text is None:
        parts.append('<p class="note">No config.yaml in this run.</p>')
    else:
        parts.append(f"<pre>{escape(config_text)}</pre>")
    parts += ["</body>", "</html>", ""]

    out = run_dir / "report.html"
    _write_atomic(out, "\n".join(parts))
    return out


def _write_atomic(path: Path, text: str) -> None:
    # A reader (or a crash) never sees a half-written report.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
