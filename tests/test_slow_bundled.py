"""End to end on the real bundled models and data (marked slow; CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def real_cache(monkeypatch):
    """Use the user's cache so the bundled models are converted once, not once per test."""
    if os.environ.get("CALIBTUNE_TEST_CACHE"):
        monkeypatch.setenv("CALIBTUNE_CACHE", os.environ["CALIBTUNE_TEST_CACHE"])
    else:
        monkeypatch.delenv("CALIBTUNE_CACHE", raising=False)


def test_quick_study_on_bundled_models(tmp_path, real_cache):
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, "-m", "calibtune", "run", "--quick", "--output-path", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics.csv")
    probe = metrics[metrics.method == "probe"]
    assert sorted(zip(probe.model, probe.trained_on)) == [
        ("gemma3-270m", "gemma3-270m"), ("gemma3-270m", "smollm2-135m"),
        ("smollm2-135m", "gemma3-270m"), ("smollm2-135m", "smollm2-135m")]
    assert probe.auroc.notna().all()
    assert len(metrics[metrics.method == "option_confidence"]) == 2
    info = json.loads((out / "metrics.json").read_text())
    # cloze answers on these sets are far from chance for both models (about 0.45-0.6)
    for acc in info["answer_accuracy"].values():
        assert 0.3 < acc["eval"] < 0.9
    assert (out / "heatmap.png").stat().st_size > 10_000
    assert "Probe" in (out / "report.html").read_text()
    assert Path(out / "config.yaml").read_text().startswith("name: default")
