"""End to end on the real bundled models and data (marked slow; CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_query_option_tokens_of_the_bundled_tokenizers(name, real_cache):
    from transformers import AutoTokenizer

    from calibtune.bundled import BUNDLED, ensure_converted
    from calibtune.estimators.query import option_token_ids
    from calibtune.prompts import DEFAULT_OPTIONS, DEFAULT_QUERY

    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(BUNDLED[name]))
    no, yes = option_token_ids(tokenizer, DEFAULT_QUERY, DEFAULT_OPTIONS)
    assert tokenizer.decode([no]).strip() == "no" and tokenizer.decode([yes]).strip() == "yes"


def test_lora_prompt_trains_briefly_on_a_bundled_model(tmp_path, real_cache):
    import numpy as np

    from calibtune.data import load_questions
    from calibtune.estimator_settings import LoraPromptConfig
    from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
    from calibtune.models import load_model, model_fingerprint
    from calibtune.prompts import DEFAULT_QUERY, format_prompt

    lm = load_model("smollm2-135m")
    questions = load_questions("sciq")[:40]
    labels = np.arange(40) % 2
    answers = [" " + q.choices[q.gold if y else (q.gold + 1) % 4] for q, y in zip(questions, labels)]
    seqs = encode_queries(lm.tokenizer, [format_prompt(q) for q in questions], answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(max_steps=4, eval_every=2, batch_size=4)
    meta = {"estimator_model": "smollm2-135m", "estimator_fingerprint": model_fingerprint("smollm2-135m")}
    est = LoraPromptEstimator(lm, cfg, meta=meta).fit(seqs, labels)
    p = est.predict_proba(seqs[:8])
    assert est.log.steps == 4 and np.isfinite(est.log.train_loss).all()
    assert ((p > 0) & (p < 1)).all()
    est.save(tmp_path / "lp")
    est.release()
    reloaded = LoraPromptEstimator.load(tmp_path / "lp", lm)
    np.testing.assert_allclose(reloaded.predict_proba(seqs[:8]), p, atol=1e-5)


def test_quick_open_ended_study_on_a_bundled_model(tmp_path, real_cache):
    # the shipped open-ended study with SmolLM2 alone: generation on both models would double the slowest test
    out = tmp_path / "open"
    shipped = (Path(__file__).parent.parent / "configs" / "open_ended.yaml").read_text()
    assert "models: [smollm2-135m, gemma3-270m]" in shipped
    config = tmp_path / "open_ended.yaml"
    config.write_text(shipped.replace("models: [smollm2-135m, gemma3-270m]", "models: [smollm2-135m]"))
    proc = subprocess.run([sys.executable, "-m", "calibtune", "run", str(config), "--quick", "--output-path", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = pd.read_parquet(out / "scores.parquet")
    assert {"probe", "lora_prompt", "zero_shot", "likelihood", "perplexity", "sampling"} <= set(scores.method)
    info = json.loads((out / "metrics.json").read_text())
    assert info["task"] == "open_ended"
    # real models write real answers: some right, most not empty
    for acc in info["answer_accuracy"].values():
        assert 0.02 < acc["eval"] < 0.9
    ask = subprocess.run([sys.executable, "-m", "calibtune", "ask",
                          str(out / "estimators" / "probe" / "smollm2-135m__on__smollm2-135m"),
                          "Who wrote the play Hamlet?", "--json"], capture_output=True, text=True, timeout=600)
    assert ask.returncode == 0, ask.stderr[-2000:]
    record = json.loads(ask.stdout.strip().splitlines()[-1])
    assert isinstance(record["answer"], str) and 0 <= record["p_correct"] <= 1
    # the cell's temperature (fitted on the Probe's held-out answers) scales the estimator's own P(correct)
    cell = scores[(scores.method == "probe") & (scores.model == "smollm2-135m")]
    assert record["temperature"] == cell.temperature.iloc[0]
    raw = np.log(record["p_correct_raw"]) - np.log1p(-record["p_correct_raw"])
    assert record["p_correct"] == pytest.approx(1 / (1 + np.exp(-raw / record["temperature"])), rel=1e-9)
