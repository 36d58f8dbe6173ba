"""A run's report: one self-contained HTML file with the heatmap, metrics and config."""

from __future__ import annotations

import base64
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
    for col in ("n", *METRIC_COLUMNS):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _metrics_table(df: pd.DataFrame) -> str:
    show_eval = (
        "evaluated_on" in df.columns and (df["evaluated_on"] != df["trained_on"]).any()
    )
    headers = ["Method", "Model", "Trained on"] + (
        ["Evaluated on"] if show_eval else []
    )
    headers += ["n"] + [metric_label(c) for c in METRIC_COLUMNS]
    lines = [
        "<table>",
        "<thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in headers)
        + "</tr></thead>",
        "<tbody>",
    ]
    for row in df.to_dict("records"):
        cells = [
            escape(method_label(row["method"])),
            escape(row["model"]),
            escape(row["trained_on"]),
        ]
        if show_eval:
            cells.append(escape(row["evaluated_on"]))
        text = "".join(f"<td>{c}</td>" for c in cells)
        n = row.get("n", float("nan"))
        text += f'<td class="num">{"n/a" if pd.isna(n) else int(n)}</td>'
        text += "".join(
            f'<td class="num">{_fmt(row.get(c, float("nan")))}</td>'
            for c in METRIC_COLUMNS
        )
        lines.append(f"<tr>{text}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


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

    others = sorted(p for p in run_dir.glob("*.png") if p.name != "heatmap.png")
    if others:
        parts.append("<h2>Other figures</h2>")
        for fig in others:
            parts += [f"<h3>{escape(fig.stem)}</h3>", _image(fig, fig.stem)]

    parts += ["<h2>Metrics</h2>", _metrics_table(metrics), "<h2>Resolved config</h2>"]
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
