"""Safe artifacts: no pickle, no remote code by default, secrets never written."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from calibtune.cli import app
from conftest import write_questions

SRC = Path(__file__).resolve().parents[1] / "src" / "calibtune"


def test_no_pickle_and_no_unsafe_torch_load_in_the_source():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|cloudpickle|joblib|dill)\b", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "trust_remote_code=True" not in text, path


def test_saved_artifacts_are_safetensors_and_json(tmp_path, tiny_models, isolated_cache):
    train = write_questions(tmp_path / "train.jsonl", n=40)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=20)
    config = tmp_path / "s.yaml"
    secret = "sk-planted-secret-0123456789"
    config.write_text(f"name: safe\nmodels: ['{tiny_models['llama']}']\ndtype: float32\n"
                      f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{heldout}'}}]\n"
                      "methods: [probe, lora_prompt, option_confidence]\n"
                      "lora_prompt: {max_steps: 2, eval_every: 1, batch_size: 4}\nprobe: {max_epochs: 2}\n")
    env = {"OPENAI_API_KEY": secret, "HF_TOKEN": secret, "CALIBTUNE_JUDGE_API_KEY": secret}
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(tmp_path / "run")], env=env)
    assert result.exit_code == 0, result.output
    allowed = {".safetensors", ".json", ".yaml", ".parquet", ".csv", ".png", ".svg", ".html", ".lock", ".md"}
    for root in (tmp_path / "run", isolated_cache):
        for path in root.rglob("*"):
            if path.is_file():
                assert path.suffix in allowed or path.name == ".calibtune.lock", path
                assert secret.encode() not in path.read_bytes(), f"secret written to {path}"
    assert secret not in result.output
