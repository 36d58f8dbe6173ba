"""Safe artifacts: no pickle, no remote code by default, secrets never written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from calibtune.cli import app
from conftest import write_questions
from test_judge_http import KEY, KEY_ENV, server  # noqa: F401 (a fixture, used by name)

SRC = Path(__file__).resolve().parents[1] / "src" / "calibtune"


def test_no_pickle_and_no_unsafe_torch_load_in_the_source():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|cloudpickle|joblib|dill)\b", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "trust_remote_code=True" not in text, path


def _no_secret_anywhere(secret: str, *roots: Path) -> None:
    allowed = {".safetensors", ".json", ".jsonl", ".yaml", ".parquet", ".csv", ".png", ".svg", ".html", ".lock",
               ".md"}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert path.suffix in allowed or path.name == ".calibtune.lock" or path.parent.name == ".users", path
                assert secret.encode() not in path.read_bytes(), f"secret written to {path}"


def test_saved_artifacts_are_safetensors_and_json(tmp_path, tiny_models, isolated_cache):
    train = write_questions(tmp_path / "train.jsonl", n=40)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=20)
    config = tmp_path / "s.yaml"
    secret = "sk-planted-secret-0123456789"
    config.write_text(f"name: safe\nmodels: ['{tiny_models['llama']}']\ndtype: float32\n"
                      f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{heldout}'}}]\n"
                      "methods: [probe, lora_prompt, option_confidence]\n"
                      "lora_prompt: {max_steps: 2, eval_every: 1, batch_size: 4}\nprobe: {max_epochs: 2}\n")
    env = {"OPENAI_API_KEY": secret, "HF_TOKEN": secret}
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(tmp_path / "run")], env=env)
    assert result.exit_code == 0, result.output
    _no_secret_anywhere(secret, tmp_path / "run", isolated_cache)
    assert secret not in result.output


def test_a_judged_study_sends_the_key_and_writes_it_nowhere(tmp_path, tiny_models, isolated_cache, server):  # noqa: F811
    base_url, script = server
    rows = [{"id": f"q{i}", "question": f"What comes after number {i}?", "answers": ["right"]} for i in range(24)]
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    config = tmp_path / "judged.yaml"
    config.write_text(f"task: open_ended\nmodels: ['{tiny_models['llama']}']\ndtype: float32\n"
                      f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{held}'}}]\n"
                      "methods: [likelihood, perplexity]\n"
                      f"open_ended: {{max_new_tokens: 4, grader: judge, judge: {{base_url: '{base_url}', "
                      f"api_model: test-model, api_key_env: {KEY_ENV}, max_retries: 1}}}}\n")
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert len(script.requests) == 24  # one request per answer: every question differs
    assert all(r["auth"] == f"Bearer {KEY}" for r in script.requests)  # the key was read and sent
    graded = pd.read_parquet(tmp_path / "run" / "answers" / "llama.parquet")
    assert set(graded.grader) == {"judge:test-model"} and not graded.correct.any()  # the judge said "No"
    _no_secret_anywhere(KEY, tmp_path / "run", isolated_cache)
    assert KEY not in result.output
