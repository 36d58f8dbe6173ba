"""The cross-model study end to end with tiny models, through the CLI: the run-folder contract."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from calibtune.cli import app
from conftest import write_questions

runner = CliRunner()


def _config(tmp_path, tiny_models, train_file, eval_file, extra: str = "") -> str:
    path = tmp_path / "study.yaml"
    path.write_text(
        f"name: tiny\nseed: 0\nmodels: ['{tiny_models['llama']}', '{tiny_models['gemma']}']\n"
        f"dtype: float32\nbatch_size: 8\n"
        f"train: [{{dataset: '{train_file}'}}]\neval: [{{dataset: '{eval_file}'}}]\n"
        "probe: {max_epochs: 5, patience: 2}\n" + extra
    )
    return str(path)


@pytest.fixture
def study_files(tmp_path):
    train = write_questions(tmp_path / "train.jsonl", n=48, options=3)
    evaluation = write_questions(tmp_path / "heldout.jsonl", n=24, options=3)
    return train, evaluation


def test_run_writes_the_run_folder(tmp_path, tiny_models, study_files):
    config = _config(tmp_path, tiny_models, *study_files)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", config, "--output-path", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "scores.parquet", "metrics.csv", "metrics.json", "heatmap.png", "report.html"):
        assert (out / name).is_file(), name
    scores = pd.read_parquet(out / "scores.parquet")
    assert {"method", "model", "trained_on", "evaluated_on", "question_id", "p_correct", "label"} <= set(scores)
    probe = scores[scores.method == "probe"]
    assert probe.groupby(["model", "trained_on"]).size().tolist() == [24] * 4  # the 2x2 matrix
    assert len(scores[scores.method == "option_confidence"]) == 48  # once per answering model
    assert scores.p_correct.between(0, 1).all() and set(scores.label) <= {0, 1}
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"n", "auroc", "ece", "brier", "accuracy"} <= set(metrics)
    assert len(metrics) == 6
    # accuracy is the answering model's, whoever estimates it
    acc = metrics[metrics.method == "probe"].groupby("trained_on").accuracy.nunique()
    assert (acc == 1).all()
    info = json.loads((out / "metrics.json").read_text())
    assert len(info["cells"]) == 6 and info["n_eval"] == 24
    saved = sorted(p.name for p in (out / "estimators" / "probe").iterdir())
    assert saved == ["gemma__on__gemma", "gemma__on__llama", "llama__on__gemma", "llama__on__llama"]
    probe_info = json.loads((out / "estimators/probe/llama__on__gemma/probe.json").read_text())
    assert probe_info["prompt"] == "Question: {question}\nAnswer:" and probe_info["token"] == "last"
    assert probe_info["chosen_layer"] in (1, 2)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html

    # A second run takes every model pass from the cache and gives the same scores.
    again = runner.invoke(app, ["run", config, "--output-path", str(tmp_path / "run2")])
    assert again.exit_code == 0, again.output
    # answers of both models and all four probe cells; features are not even read
    assert again.output.count("from the cache") == 6
    assert not any(k.startswith("load") for k in json.loads((tmp_path / "run2" / "timings.json").read_text()))
    assert (tmp_path / "run2" / "estimators/probe/llama__on__gemma/probe.json").is_file()
    pd.testing.assert_frame_equal(scores, pd.read_parquet(tmp_path / "run2" / "scores.parquet"))

    rebuilt = runner.invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output


def test_overlapping_train_and_eval_is_refused(tmp_path, tiny_models, study_files):
    train, _ = study_files
    result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, train, train), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "also in the training set" in result.output


@pytest.mark.parametrize("args, message", [
    (["answer", "arc_eazy", "--model", "x"], "did you mean 'arc_easy'"),
    (["answer", "sciq", "--split", "train", "--model", "x"], "validation"),
    (["answer", "sciq", "--model", "./no/such/model"], "does not exist"),
    (["run", "missing.yaml"], "does not exist"),
])
def test_cli_errors_are_one_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_malformed_user_file_names_file_and_line(tmp_path, tiny_models):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "choices": ["a", "b"], "answer": 0}\n{"question": "x", "choices": ["a"]\n')
    result = runner.invoke(app, ["answer", str(bad), "--model", str(tiny_models["llama"])])
    assert result.exit_code == 2
    assert "bad.jsonl" in result.output and "line 2" in result.output


def test_unknown_option_fails():
    result = runner.invoke(app, ["run", "--no-such-option"])
    assert result.exit_code != 0
    assert "No such option" in result.output


def test_listing_commands():
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0 and "arc_easy" in result.output and "2,376" in result.output
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "smollm2-135m" in result.output and "gemma3-270m" in result.output


def test_answer_command(tmp_path, tiny_models):
    questions = write_questions(tmp_path / "q.jsonl", n=6)
    out = tmp_path / "a.parquet"
    result = runner.invoke(app, ["answer", str(questions), "--model", str(tiny_models["gemma"]), "-o", str(out),
                                 "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert len(table) == 6 and table.correct.notna().all()


def test_all_methods_in_the_study(tmp_path, tiny_models, study_files):
    extra = ("methods: [probe, lora_prompt, lora, zero_shot, option_confidence]\n"
             "lora_prompt: {max_steps: 3, eval_every: 2, batch_size: 4}\n"
             "lora: {max_steps: 3, eval_every: 2, batch_size: 4}\n"
             "zero_shot_calibration: 10\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, *study_files, extra), "-o", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    for method in ("probe", "lora_prompt", "lora", "zero_shot"):
        cells = scores[scores.method == method].groupby(["model", "trained_on"]).size()
        assert len(cells) == 4 and (cells == 24).all(), method
    assert scores.p_correct_ts.between(0, 1).all() and (scores.temperature > 0).all()
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"ece_ts", "brier_ts", "nll_ts", "temperature"} <= set(metrics)
    info = json.loads((out / "metrics.json").read_text())
    diffs = [d for d in info["paired"] if d["a"] == "lora_prompt" and d["b"] == "probe"]
    assert len(diffs) == 4 and all(d["auroc_diff_low"] <= d["auroc_diff"] <= d["auroc_diff_high"] for d in diffs)
    cell = info["cells"][0]
    for metric in ("auroc", "auprc", "auprc_incorrect", "ece", "ece_equal_mass", "mce", "brier", "nll", "aurc",
                   "acc_at_50", "acc_at_80"):
        assert f"{metric}_low" in cell and f"{metric}_high" in cell, metric
    for figure in ("heatmap", "risk_coverage", "reliability_probe", "reliability_lora_prompt"):
        assert (out / f"{figure}.png").is_file() and (out / f"{figure}.svg").is_file(), figure
    saved = json.loads((out / "estimators/lora_prompt/llama__on__gemma/lora_prompt.json").read_text())
    assert saved["config"]["kl_weight"] == 1.0 and saved["config"]["divergence"] == "js"
    assert "Is the proposed answer correct?" in saved["config"]["query"]["query"]
    assert (out / "estimators/lora/gemma__on__llama/adapter/adapter_model.safetensors").is_file()


def test_a_locked_run_folder_is_refused(tmp_path, tiny_models, study_files):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".calibtune.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("calibtune pid 12345")
        held.flush()
        result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, *study_files), "-o", str(out)])
    assert result.exit_code == 2
    assert "in use by calibtune pid 12345" in result.output
    assert not (out / "scores.parquet").exists()


def test_cache_commands(tmp_path, tiny_models, study_files):
    result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, *study_files), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(app, ["cache", "ls"])
    assert listing.exit_code == 0
    assert listing.output.count("answers ") == 2 and listing.output.count("cell ") == 4
    du = runner.invoke(app, ["cache", "du"])
    assert du.exit_code == 0 and "features" in du.output
    dry = runner.invoke(app, ["cache", "prune", "--stage", "cell", "--dry-run"])
    assert "would remove 4 artifacts" in dry.output
    pruned = runner.invoke(app, ["cache", "prune", "--stage", "cell"])
    assert "removed 4 artifacts" in pruned.output
    assert runner.invoke(app, ["cache", "ls", "--stage", "cell"]).output.count("cell ") == 0
