"""`calibtune report` (a rebuild without any model) and `calibtune compare`, on synthetic run folders."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from calibtune.cli import app
from calibtune.compare import compare_runs, render_table
from conftest import synthetic_run

runner = CliRunner()


def test_report_rebuilds_every_result_without_a_model(tmp_path, monkeypatch):
    run = tmp_path / "run"
    synthetic_run(run)
    before = pd.read_csv(run / "metrics.csv")
    for name in ("metrics.csv", "heatmap.png", "risk_coverage.svg", "report.html"):
        (run / name).unlink()

    def no_model(*args, **kwargs):
        raise AssertionError("report must not load a model")

    monkeypatch.setattr("calibtune.models.load_model", no_model)
    result = runner.invoke(app, ["report", str(run), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| method | model |" in result.output and "[" in result.output
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv"), before)
    for name in ("heatmap.png", "risk_coverage.svg", "report.html", "subjects_auroc.png"):
        assert (run / name).is_file(), name
    info = json.loads((run / "metrics.json").read_text())
    assert info["n_eval"] == 240  # facts of the original run survive a rebuild
    macro = [s for s in info["subjects"] if s["row"] == "macro"]
    assert macro and all(s["n_subjects"] == 3 for s in macro)


def test_compare_paired_and_unpaired(tmp_path):
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    synthetic_run(a)
    synthetic_run(b, shift=0.4)  # the same questions and labels, a sharper Probe
    synthetic_run(other, ids_from=10_000)  # other question ids: no pairing possible
    same = compare_runs(a, a, n_resamples=200)
    assert same.paired.all() and (same.auroc_diff == 0).all() and (same.auroc_low == 0).all()
    better = compare_runs(a, b, n_resamples=200).set_index(["method", "model", "trained_on"])
    probe = better.xs("probe", level="method")
    assert (probe.auroc_diff > 0).all() and (probe.auroc_low > 0).all()
    baseline = better.xs("option_confidence", level="method")
    assert (baseline.auroc_diff == 0).all()
    unpaired = compare_runs(a, other, n_resamples=200)
    assert not unpaired.paired.any() and (unpaired.auroc_low <= unpaired.auroc_diff).all()

    result = runner.invoke(app, ["compare", str(a), str(b), "--format", "markdown", "--metric", "auroc",
                                 "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| method | model | trained on | paired | AUROC A / B / B-A |")
    assert "*" in result.output  # the sharper Probe's interval excludes 0


def test_compare_errors_are_one_line(tmp_path):
    a = tmp_path / "a"
    synthetic_run(a)
    result = runner.invoke(app, ["compare", str(a), str(tmp_path / "missing")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "scores.parquet" in result.output
    result = runner.invoke(app, ["compare", str(a), str(a), "--metric", "aucroc"])
    assert result.exit_code == 2 and "unknown metric 'aucroc'" in result.output


def test_render_table_text_and_markdown():
    assert render_table(["a", "bb"], [["1", "2"]], markdown=True) == "| a | bb |\n|---|---|\n| 1 | 2 |"
    assert render_table(["a", "bb"], [["1", "2"]]).splitlines()[0] == "a  bb"


def test_a_method_missing_some_questions_is_paired_on_the_shared_ones(tmp_path):
    from calibtune.config import load_config
    from calibtune.results import write_results

    run = tmp_path / "run"
    synthetic_run(run, n=60)
    scores = pd.read_parquet(run / "scores.parquet")
    # an unparseable verbalized reply leaves one question out of one method's cell
    dropped = scores.drop(scores[(scores.method == "option_confidence")].index[:1])
    write_results(run, load_config(run / "config.yaml"), dropped, {"n_eval": 60})
    info = json.loads((run / "metrics.json").read_text())
    pairs = [p for p in info["paired"] if p["a"] == "option_confidence"]
    assert sorted(p["n"] for p in pairs) == [59, 60]
    assert sorted(c["n_left_out"] for c in info["cells"] if c["method"] == "option_confidence") == [0, 1]
