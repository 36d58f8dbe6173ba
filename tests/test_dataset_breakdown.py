"""The per-dataset breakdown of a run's cells: datasets.csv, metrics.json, report.html and the Markdown report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from calibtune.cli import app
from calibtune.config import StudyConfig, dump_config
from calibtune.results import dataset_breakdown, write_results


def scores_on_two_datasets(second: str = "sciq") -> pd.DataFrame:
    """One Probe cell: 50 ARC-Easy answers, 30 right at P 0.7 and 20 wrong at P 0.3 (a perfect ranking, ECE
    0.3 by hand: every answer 0.3 from its bin's accuracy); 20 answers of ``second``, all wrong, at P 0.3."""
    labels = np.r_[np.ones(30), np.zeros(20), np.zeros(20)].astype(int)
    p = np.r_[np.full(30, 0.7), np.full(40, 0.3)]
    datasets = ["arc_easy"] * 50 + [second] * 20
    return pd.DataFrame({"method": "probe", "model": "smollm2-135m", "trained_on": "smollm2-135m",
                         "evaluated_on": "smollm2-135m", "question_id": [f"q{i}" for i in range(70)],
                         "dataset": datasets, "subject": "", "p_correct": p, "label": labels,
                         "p_correct_ts": p, "temperature": 1.0})


def test_each_dataset_gets_its_accuracy_mean_p_ece_and_auroc():
    table = dataset_breakdown(scores_on_two_datasets(), n_bins=10).set_index("dataset")
    arc, sciq = table.loc["arc_easy"], table.loc["sciq"]
    assert (arc.n, sciq.n) == (50, 20)
    assert arc.accuracy == pytest.approx(0.6) and arc.mean_p_ts == pytest.approx(0.6 * 0.7 + 0.4 * 0.3)
    assert arc.ece_ts == pytest.approx(0.3) and arc.auroc == pytest.approx(1.0)
    assert sciq.accuracy == 0.0 and sciq.mean_p_ts == pytest.approx(0.3) and sciq.ece_ts == pytest.approx(0.3)
    assert math.isnan(sciq.auroc)  # all wrong: undefined, not a number made up
    assert dataset_breakdown(scores_on_two_datasets("arc_easy"), n_bins=10) is None  # one dataset: no breakdown


def test_a_run_writes_the_breakdown_to_its_files_report_and_markdown(tmp_path):
    config = StudyConfig(name="two sets", models=["smollm2-135m"], train=[{"dataset": "arc_easy"}],
                         eval=[{"dataset": "arc_easy"}, {"dataset": "sciq"}], methods=["probe"],
                         report={"bootstrap_resamples": 50})
    scores = scores_on_two_datasets()
    (tmp_path / "config.yaml").write_text(dump_config(config))
    scores.to_parquet(tmp_path / "scores.parquet", index=False)
    write_results(tmp_path, config, scores, {"n_eval": 70})
    saved = pd.read_csv(tmp_path / "datasets.csv").set_index("dataset")
    assert saved.loc["arc_easy", "mean_p_ts"] == pytest.approx(0.54)
    assert json.loads((tmp_path / "metrics.json").read_text())["datasets"][1]["dataset"] == "sciq"
    html = (tmp_path / "report.html").read_text()
    assert "By evaluation dataset" in html and "<td>sciq</td>" in html
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| Probe | smollm2-135m | smollm2-135m | arc_easy | 50 | 0.600 | 0.540 | 0.300 | 1.000 |" in result.output
    assert "| sciq | 20 | 0.000 | 0.300 | 0.300 | n/a |" in result.output
    # rebuilt on one dataset: the old breakdown goes, from the folder and the report
    one = scores.assign(dataset="arc_easy")
    write_results(tmp_path, config, one)
    assert not (tmp_path / "datasets.csv").exists()
    assert "By evaluation dataset" not in (tmp_path / "report.html").read_text()
