"""The cross-model study end to end with tiny models, through the CLI: the run-folder contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from calibtune.bootstrap import paired_bootstrap
from calibtune.calibration import cross_fitted
from calibtune.cli import app
from calibtune.metrics import ece
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
    for folder in (out / "estimators" / "probe").iterdir():  # the kept layer is the best on validation
        saved = json.loads((folder / "probe.json").read_text())
        scores_by_layer = {int(k): v for k, v in saved["val_auroc_by_layer"].items()}
        assert sorted(scores_by_layer) == [1, 2]
        assert scores_by_layer[saved["chosen_layer"]] == max(scores_by_layer.values())
        # beside it, the temperature the study fitted on the Probe's held-out (out-of-fold) answers
        cell = probe[probe.model == str(tiny_models[folder.name.split("__on__")[0]])]
        cell = cell[cell.trained_on == str(tiny_models[folder.name.split("__on__")[1]])]
        assert json.loads((folder / "temperature.json").read_text()) == {
            "temperature": cell.temperature.iloc[0], "fitted_on": "held-out answers", "answers": None}
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
    extra = ("methods: [probe, probe_last, lora_prompt, lora_prompt_readout, lora, zero_shot, option_confidence]\n"
             "select: sum\nlora_prompt: {max_steps: 3, eval_every: 2, batch_size: 4, layers: top_half}\n"
             "lora_prompt_readout: {max_steps: 3, eval_every: 2, batch_size: 4, readout_layer: 1}\n"
             "lora: {max_steps: 3, eval_every: 2, batch_size: 4}\n"
             "zero_shot_calibration: 10\nreport: {bootstrap_resamples: 200}\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, *study_files, extra), "-o", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    for method in ("probe", "probe_last", "lora_prompt", "lora_prompt_readout", "lora", "zero_shot"):
        cells = scores[scores.method == method].groupby(["model", "trained_on"]).size()
        assert len(cells) == 4 and (cells == 24).all(), method
    assert scores.p_correct_ts.between(0, 1).all() and (scores.temperature > 0).all()
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"ece_ts", "brier_ts", "nll_ts", "temperature", "ece_xfit", "brier_xfit"} <= set(metrics)
    # Platt scaling cross-fitted on each cell's own evaluation answers, as calibration.cross_fitted gives it
    checked = 0
    for (method, e, t), cell in scores.groupby(["method", "model", "trained_on"]):
        row = metrics[(metrics.method == method) & (metrics.model == e) & (metrics.trained_on == t)].iloc[0]
        refitted = cross_fitted(cell.p_correct.to_numpy(), cell.label.to_numpy(), 5, 0)
        if np.isnan(refitted).any():
            assert np.isnan(row.ece_xfit)
        else:
            assert row.ece_xfit == pytest.approx(ece(refitted, cell.label.to_numpy()), abs=1e-9)
            checked += 1
    assert checked > 0
    # temperature scaling is monotone: every cell ranks its answers the same before and after
    for _, cell in scores.groupby(["method", "model", "trained_on"]):
        if cell.label.nunique() == 2:
            assert roc_auc_score(cell.label, cell.p_correct_ts) == roc_auc_score(cell.label, cell.p_correct)
    # paired differences are those of an independent paired bootstrap on the same questions
    info = json.loads((out / "metrics.json").read_text())
    diffs = [d for d in info["paired"] if d["a"] == "lora_prompt" and d["b"] == "probe"]
    assert len(diffs) == 4
    for d in diffs:
        cell = scores[(scores.model == d["model"]) & (scores.trained_on == d["trained_on"])]
        a = cell[cell.method == "lora_prompt"].sort_values("question_id")
        b = cell[cell.method == "probe"].sort_values("question_id")
        assert a.question_id.tolist() == b.question_id.tolist()
        expected = paired_bootstrap(a.p_correct, b.p_correct, a.label, metrics=["auroc", "ece"], n_resamples=200)
        for metric in ("auroc", "ece"):
            got = (d[f"{metric}_diff"], d[f"{metric}_diff_low"], d[f"{metric}_diff_high"])
            np.testing.assert_allclose(got, expected[metric], equal_nan=True)
    # select: sum chooses the option with the highest summed log-likelihood
    answers = pd.read_parquet(out / "answers" / "llama.parquet")
    assert all(c == int(np.argmax(s)) for c, s in zip(answers.choice, answers.option_logprob_sum))
    # layers: top_half puts LoRA + Prompt's adapters on the upper half of the layers only (layer 1 of 0-1)
    from safetensors import safe_open

    with safe_open(str(out / "estimators/lora_prompt/llama__on__gemma/adapter/adapter_model.safetensors"), "pt") as f:
        layers = {int(k.split("layers.")[1].split(".")[0]) for k in f.keys()}
    assert layers == {1}
    # the mid-layer read-out of LoRA + Prompt: read after layer 1, adapters below it only (layer 0)
    folder = out / "estimators/lora_prompt_readout/llama__on__gemma"
    assert json.loads((folder / "lora_prompt.json").read_text())["readout_layer"] == 1
    with safe_open(str(folder / "adapter/adapter_model.safetensors"), "pt") as f:
        assert {int(k.split("layers.")[1].split(".")[0]) for k in f.keys()} == {0}
    # the paper's last-layer probe beside the chosen-layer one
    for folder in (out / "estimators" / "probe_last").iterdir():
        assert json.loads((folder / "probe.json").read_text())["chosen_layer"] == 2
    cell = info["cells"][0]
    for metric in ("auroc", "auprc", "auprc_incorrect", "ece", "ece_equal_mass", "mce", "brier", "nll", "aurc",
                   "acc_at_50", "acc_at_80"):
        assert f"{metric}_low" in cell and f"{metric}_high" in cell, metric
    for figure in ("heatmap", "risk_coverage", "reliability_probe", "reliability_lora_prompt"):
        assert (out / f"{figure}.png").is_file() and (out / f"{figure}.svg").is_file(), figure
    saved = json.loads((out / "estimators/lora_prompt/llama__on__gemma/lora_prompt.json").read_text())
    assert saved["config"]["kl_weight"] == 1.0 and saved["config"]["divergence"] == "js"
    assert "Is the proposed answer correct?" in saved["config"]["query"]
    assert saved["target_modules"] == ["q_proj", "v_proj"] and saved["config"]["layers"] == "top_half"
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


def test_seed_zero_on_the_command_line_overrides_the_config(tmp_path, monkeypatch):
    from calibtune.study import Study

    seen = []

    def fake_run(self):
        seen.append(self.config.seed)
        self.timings["total"] = 0.0
        return pd.DataFrame(columns=["method", "model", "trained_on", "n", "auroc", "ece", "brier", "accuracy"])

    monkeypatch.setattr(Study, "run", fake_run)
    config = tmp_path / "c.yaml"
    config.write_text("seed: 7\nmodels: [a]\ntrain: [{dataset: sciq}]\neval: [{dataset: sciq}]\n")
    for args, expected in ((["--seed", "0"], 0), (["--seed", "3"], 3), ([], 7)):
        result = runner.invoke(app, ["run", str(config), "-o", str(tmp_path / "r"), *args])
        assert result.exit_code == 0, result.output
        assert seen[-1] == expected


def test_models_with_the_same_name_in_different_places_get_their_own_folders(tmp_path, tiny_models, study_files):
    import shutil

    for org in ("org-a", "org-b"):
        shutil.copytree(tiny_models["llama"], tmp_path / org / "Llama-3-8B")
    config = tmp_path / "two.yaml"
    train, evaluation = study_files
    config.write_text(f"models: ['{tmp_path / 'org-a/Llama-3-8B'}', '{tmp_path / 'org-b/Llama-3-8B'}']\n"
                      f"dtype: float32\ntrain: [{{dataset: '{train}'}}]\neval: [{{dataset: '{evaluation}'}}]\n"
                      "methods: [probe]\nprobe: {max_epochs: 2}\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "estimators" / "probe").iterdir()) == [
        "org-a--Llama-3-8B__on__org-a--Llama-3-8B", "org-a--Llama-3-8B__on__org-b--Llama-3-8B",
        "org-b--Llama-3-8B__on__org-a--Llama-3-8B", "org-b--Llama-3-8B__on__org-b--Llama-3-8B"]
    assert sorted(p.name for p in (out / "answers").iterdir()) == ["org-a--Llama-3-8B.parquet",
                                                                   "org-b--Llama-3-8B.parquet"]


def test_cache_prune_waits_for_a_running_study(tmp_path, isolated_cache):
    from calibtune.store import ArtifactStore

    store = ArtifactStore(isolated_cache / "store")
    store.put_table("answers", "k" * 24, pd.DataFrame({"a": [1]}))
    with store.in_use():  # what a running study holds
        result = runner.invoke(app, ["cache", "prune"])
        assert result.exit_code == 2 and "in use by calibtune pid" in result.output
        assert store.has("answers", "k" * 24)
        assert "would remove 1 artifacts" in runner.invoke(app, ["cache", "prune", "--dry-run"]).output
    assert "removed 1 artifacts" in runner.invoke(app, ["cache", "prune"]).output
    assert not store.has("answers", "k" * 24)


def test_a_failure_while_computing_a_cell_is_not_reported_as_a_write_error(tmp_path, tiny_models, study_files,
                                                                           monkeypatch):
    from dataclasses import replace

    from calibtune.methods import METHODS

    def broken(ctx):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/tokenizer.json")

    monkeypatch.setitem(METHODS, "zero_shot", replace(METHODS["zero_shot"], make_cell=broken))
    result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, *study_files, "methods: [zero_shot]\n"),
                                 "-o", str(tmp_path / "run")])
    assert isinstance(result.exception, FileNotFoundError), result.output
    assert "cannot write" not in result.output


def _run_counts(tmp_path, config: str, out: str) -> str:
    result = runner.invoke(app, ["run", config, "-o", str(tmp_path / out)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_editing_a_question_recomputes_exactly_what_depends_on_it(tmp_path, tiny_models, monkeypatch,
                                                                    isolated_cache):
    from calibtune.stages import base
    from calibtune.store import ArtifactStore, list_artifacts

    monkeypatch.setattr(base, "SHARD_SIZE", 16)  # 48 training and 24 evaluation questions: 5 shards per model
    train = write_questions(tmp_path / "train.jsonl", n=48, options=3)
    evaluation = write_questions(tmp_path / "heldout.jsonl", n=24, options=3)
    config = _config(tmp_path, tiny_models, train, evaluation, "methods: [probe, zero_shot]\n")
    store = ArtifactStore(isolated_cache / "store")

    def artifacts():
        return {(a.stage, a.key) for a in list_artifacts(store) if a.complete}

    _run_counts(tmp_path, config, "first")
    first = artifacts()
    assert sum(stage == "answers" for stage, _ in first) == 10 and sum(s == "cell" for s, _ in first) == 8

    # a gold answer: no model answers again, no features are read again, every cell relearns its labels
    rows = [json.loads(line) for line in evaluation.read_text().splitlines()]
    rows[5]["answer"] = (rows[5]["answer"] + 1) % 3
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run_counts(tmp_path, config, "gold")
    new = artifacts() - first
    assert {stage for stage, _ in new} == {"cell"} and len(new) == 8
    answers = pd.read_parquet(tmp_path / "gold" / "answers" / "llama.parquet").set_index("question_id")
    scores = pd.read_parquet(tmp_path / "gold" / "scores.parquet")
    llama = str(tiny_models["llama"])
    row = scores[(scores.method == "probe") & (scores.trained_on == llama) & (scores.model == llama)]
    row = row.set_index("question_id")
    qid = "heldout/q5"
    assert answers.correct[qid] == (answers.choice[qid] == rows[5]["answer"]) == bool(row.label[qid])

    # a question's text: that question's shard is answered again by each model, and the cells recompute
    before = artifacts()
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    rows[20]["question"] = "Which word comes number twenty, really?"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run_counts(tmp_path, config, "text")
    new = artifacts() - before
    assert sum(stage == "answers" for stage, _ in new) == 2 and sum(stage == "cell" for stage, _ in new) == 8

    # a setting of one method: only its cells recompute
    before = artifacts()
    changed = _config(tmp_path, tiny_models, train, evaluation,
                      "methods: [probe, zero_shot]\nzero_shot: {options: [' no', ' yes!']}\n")
    output = _run_counts(tmp_path, changed, "setting")
    new = artifacts() - before
    assert {stage for stage, _ in new} == {"cell"} and len(new) == 4
    assert output.count("Probe") >= 4 and "from the cache" in output


def test_the_probe_reads_every_models_answers_from_the_estimators_answering_pass(tmp_path, tiny_models, study_files,
                                                                               isolated_cache, monkeypatch):
    import calibtune.features
    from calibtune.features import extract_features
    from calibtune.models import load_model
    from calibtune.store import ArtifactStore, list_artifacts

    passes = []
    separate_pass = calibtune.features.extract_features
    monkeypatch.setattr(calibtune.features, "extract_features",
                        lambda *a, **k: passes.append(1) or separate_pass(*a, **k))
    config = _config(tmp_path, tiny_models, *study_files, "methods: [probe, zero_shot, lora_prompt]\n"
                     "lora_prompt: {max_steps: 2, eval_every: 1, batch_size: 4}\nzero_shot_calibration: 10\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", config, "-o", str(out)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    llama, gemma = str(tiny_models["llama"]), str(tiny_models["gemma"])
    # E = T: the answering pass wrote the features shard; E != T: taken from E's states at every option
    assert f"features of {llama}'s answers read by {llama}: from the cache" in said
    assert f"features of {gemma}'s answers read by {llama}: 1 of 1 shards from {llama}'s answering pass" in said
    assert f"features of {llama}'s answers read by {gemma}: 1 of 1 shards from {gemma}'s answering pass" in said
    assert passes == []  # no features pass of its own
    store = ArtifactStore(isolated_cache / "store")

    def stored(stage, source, model):
        return [store.get_arrays(stage, a.key) for a in list_artifacts(store) if a.stage == stage
                and (meta := json.loads((a.path / "meta.json").read_text()))["from"] == source
                and meta["settings"]["model"] == model]

    assert len(stored("features", "answering pass", llama)) == 1  # one shard (72 questions) of its own answers
    (options,) = stored("option_features", "answering pass", llama)
    assert len(options["offsets"]) == 73 and len(options["features"]) == options["offsets"][-1] == 72 * 3
    # the same numbers as a separate pass over the same prompts and answers (fp32: to 1e-4), for both answerers
    questions = {json.loads(line)["id"]: json.loads(line)["question"]
                 for f in study_files for line in f.read_text().splitlines()}
    lm = load_model(llama, dtype="float32")
    for answering, source in ((llama, "answering pass"), (gemma, f"{llama}'s answering pass")):
        answers = pd.read_parquet(out / "answers" / f"{Path(answering).name}.parquet")
        prompts = [f"Question: {questions[q.split('/')[1]]}\nAnswer:" for q in answers.question_id]
        separate = extract_features(lm, prompts, [" " + t for t in answers.text], [1, 2])
        (taken,) = stored("features", source, llama)
        np.testing.assert_allclose(taken["features"], separate, atol=1e-4)
    mine, theirs = (pd.read_parquet(out / "answers" / f"{m}.parquet").text for m in ("llama", "gemma"))
    assert 0 < (mine != theirs).sum() < len(mine)  # the two models' answers differ, so the check above has teeth

    # averaged over the answer's tokens, the features are not what the answering pass reads: a pass of their own
    passes.clear()
    mean = _config(tmp_path, tiny_models, *study_files, "methods: [probe]\nfeatures: {token: mean}\n")
    result = runner.invoke(app, ["run", mean, "-o", str(tmp_path / "mean")])
    assert result.exit_code == 0, result.output
    assert len(passes) == 4 and "answering pass" not in result.output


def test_a_data_scale_study_trains_on_nested_sizes(tmp_path, tiny_models, study_files, isolated_cache):
    extra = ("methods: [probe, lora_prompt_readout]\ntrain_sizes: [12, 24, all]\n"
             "lora_prompt_readout: {max_steps: 2, eval_every: 1, batch_size: 4, max_train_examples: null}\n")
    train, evaluation = study_files
    config = tmp_path / "scale.yaml"
    config.write_text(f"name: scale\nmodels: ['{tiny_models['llama']}']\ndtype: float32\nbatch_size: 8\n"
                      f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{evaluation}'}}]\n"
                      "probe: {max_epochs: 5, patience: 2}\n" + extra)
    config = str(config)
    out = tmp_path / "scale"
    result = runner.invoke(app, ["run", config, "-o", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    assert sorted(scores.train_size.unique()) == [12, 24, 48]
    assert (scores.groupby(["method", "train_size"]).size() == 24).all()  # every size scores every question
    scale = pd.read_csv(out / "data_scale.csv")
    assert sorted(zip(scale.method, scale.train_size)) == [(m, n) for m in ("lora_prompt_readout", "probe")
                                                           for n in (12, 24, 48)]
    saved = {int(f.name.split("__n")[1]): json.loads((f / "probe.json").read_text())["n_train"]
             for f in (out / "estimators" / "probe").iterdir()}
    assert saved == {12: 12, 24: 24, 48: 48}
    metrics = pd.read_csv(out / "metrics.csv")  # the usual results are those of the largest size
    largest = scores[(scores.train_size == 48) & (scores.method == "probe")]
    assert metrics[metrics.method == "probe"].auroc.item() == pytest.approx(roc_auc_score(largest.label,
                                                                                         largest.p_correct))
    assert (out / "data_scale.png").is_file() and "Data scale" in (out / "report.html").read_text()
    # The trend: AUROC's least-squares slope per doubling, and the gap to the Probe, from the same points.
    trend = pd.read_csv(out / "data_scale_trend.csv").set_index("method")
    points = {m: rows.sort_values("train_size").auroc.to_numpy() for m, rows in scale.groupby("method")}
    for method, auroc in points.items():
        assert trend.loc[method, "slope"] == pytest.approx(np.polyfit(np.log2([12, 24, 48]), auroc, 1)[0])
    gaps = points["lora_prompt_readout"] - points["probe"]
    assert trend.loc["lora_prompt_readout", "gap_last"] == pytest.approx(gaps[-1])
    assert trend.loc["lora_prompt_readout", "gap_slope"] == pytest.approx(np.polyfit(np.log2([12, 24, 48]), gaps, 1)[0])
    assert "AUROC per doubling" in (out / "report.html").read_text()
    markdown = runner.invoke(app, ["report", str(out), "--format", "markdown"])
    assert markdown.exit_code == 0, markdown.output
    assert f"{trend.loc['probe', 'slope']:+.3f}" in markdown.output and "gap per doubling" in markdown.output


def test_the_paper_mix_takes_an_equal_share_of_every_set_without_the_evaluation_questions():
    from collections import Counter

    from calibtune.config import StudyConfig
    from calibtune.questions import PAPER_MIX, study_questions

    cfg = StudyConfig.model_validate({"models": ["m"], "train": [{"mix": "paper", "size": 2200}],
                                      "eval": [{"dataset": "copa", "split": "validation", "stop": 40}]})
    inputs = study_questions(cfg)
    counts = Counter(q.dataset for q in inputs.train)
    assert set(counts) == set(PAPER_MIX)
    assert counts["copa"] == 60 and all(counts[d] == 200 for d in PAPER_MIX if d != "copa")  # copa holds 100
    assert not {q.id for q in inputs.train} & {q.id for q in inputs.eval}
    assert [q.id for q in study_questions(cfg).train] == [q.id for q in inputs.train]  # seeded


def test_the_model_pool_says_which_model_it_lets_go(tiny_models):
    """A study forgets what E's cells left for each other (kept states on E's device) when the pool lets E go."""
    from calibtune.study import ModelPool

    released = []
    pool = ModelPool("float32", "cpu", {}, on_release=released.append)
    llama, gemma = str(tiny_models["llama"]), str(tiny_models["gemma"])
    first = pool.get(llama)
    assert pool.get(llama) is first and released == []  # held: not loaded again, not let go
    pool.get(gemma)
    pool.get(llama)
    assert released == [llama, gemma]


def test_a_calibration_set_leaves_out_the_training_and_evaluation_questions_before_it_samples(tmp_path):
    import random

    from calibtune.config import StudyConfig
    from calibtune.data import load_questions
    from calibtune.errors import CalibtuneError
    from calibtune.questions import study_questions

    path = str(write_questions(tmp_path / "pool.jsonl", n=60))
    cfg = StudyConfig.model_validate({"models": ["m"], "train": [{"dataset": path, "stop": 20}],
                                      "eval": [{"dataset": path, "start": 20, "sample": 10}],
                                      "calibrate": [{"dataset": path, "sample": 20}]})
    inputs = study_questions(cfg)
    taken = {q.id for q in inputs.train + inputs.eval}
    left = [q for q in load_questions(path) if q.id not in taken]
    assert len(left) == 30
    expected = random.Random(f"0-{path}-None").sample(left, 20)
    assert [q.id for q in inputs.calibrate] == [q.id for q in expected]
    assert [q.id for q in inputs.all] == [q.id for q in inputs.train + inputs.eval + inputs.calibrate]
    # nothing left to draw from is a one-line error naming the selection
    cfg = StudyConfig.model_validate({**cfg.model_dump(), "calibrate": [{"dataset": path, "stop": 20}]})
    with pytest.raises(CalibtuneError, match=r"selection .*pool.jsonl.* \[0:20\] holds no questions"):
        study_questions(cfg)


def test_a_calibration_set_fits_every_cells_temperature_and_changes_nothing_else(tmp_path, tiny_models,
                                                                               study_files):
    from calibtune.answer import option_confidence
    from calibtune.calibration import TemperatureScaler
    from calibtune.data import load_questions
    from calibtune.estimators import load_estimator
    from calibtune.records import answers_from_table

    calibration = write_questions(tmp_path / "calibration.jsonl", n=30, options=3)
    extra = "methods: [probe, zero_shot, option_confidence]\nzero_shot_calibration: 10\n"
    runs = {}
    for name, more in (("plain", ""), ("calibrated", f"calibrate: [{{dataset: '{calibration}'}}]\n")):
        runs[name] = tmp_path / name
        config = _config(tmp_path, tiny_models, *study_files, extra + more)
        result = runner.invoke(app, ["run", config, "-o", str(runs[name])])
        assert result.exit_code == 0, result.output
    keys = ["method", "model", "trained_on", "question_id"]
    plain = pd.read_parquet(runs["plain"] / "scores.parquet").sort_values(keys, ignore_index=True)
    calibrated = pd.read_parquet(runs["calibrated"] / "scores.parquet").sort_values(keys, ignore_index=True)
    # the same evaluation answers with the same P(correct): only the temperature moves
    assert plain[keys].equals(calibrated[keys])
    np.testing.assert_allclose(calibrated.p_correct, plain.p_correct, rtol=1e-6)
    questions = load_questions(str(calibration))
    temperatures = calibrated.groupby(["method", "model", "trained_on"]).temperature.first()
    assert (temperatures != plain.groupby(["method", "model", "trained_on"]).temperature.first()).any()
    name = {slug: str(tiny_models[slug]) for slug in ("llama", "gemma")}
    for t in ("llama", "gemma"):
        answers = {a.question_id: a for a in answers_from_table(
            pd.read_parquet(runs["calibrated"] / "answers" / f"{t}.parquet"))}
        y = np.array([answers[q.id].label for q in questions])
        # option confidence: its temperature is fitted on the calibration answers' option confidence
        p = np.array([option_confidence(answers[q.id], "mean") for q in questions])
        fitted = TemperatureScaler.fit(p, y).temperature
        assert temperatures["option_confidence", name[t], name[t]] == pytest.approx(fitted, rel=1e-6)
        # the Probe: on its saved estimator's P(correct) of the calibration answers (the path `ask` takes)
        for e in ("llama", "gemma"):
            probe = load_estimator(runs["calibrated"] / "estimators" / "probe" / f"{e}__on__{t}",
                                   dtype="float32")
            p = probe.estimate(questions, [answers[q.id].text for q in questions])
            fitted = TemperatureScaler.fit(p, y).temperature
            assert temperatures["probe", name[e], name[t]] == pytest.approx(fitted, rel=1e-3)


def test_no_temperature_file_when_the_calibration_answers_cannot_fit_one(tmp_path, tiny_models, study_files):
    """A calibration set whose answers are all right or all wrong fits no temperature (the cell keeps 1): the
    estimator folder then records none, rather than claim one fitted on the calibration set, and ``ask`` gives
    the estimator's own P(correct)."""
    from calibtune.ask import ask
    from calibtune.data import load_questions

    calibration = write_questions(tmp_path / "calibration.jsonl", n=1, options=3)  # one answer: one class
    extra = f"methods: [probe]\ncalibrate: [{{dataset: '{calibration}'}}]\n"
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, *study_files, extra), "-o", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    assert (scores.temperature == 1.0).all() and (scores.p_correct_ts - scores.p_correct).abs().max() < 1e-9
    folder = out / "estimators" / "probe" / "gemma__on__llama"
    assert (folder / "probe.json").is_file() and not (folder / "temperature.json").exists()
    q = load_questions(str(study_files[1]))[0]
    [asked] = ask(folder, [q.text], dtype="float32", device="cpu", choices=q.choices)
    assert asked.temperature is None and asked.p_correct == asked.p_correct_raw


def test_ask_gives_the_studys_temperature_scaled_p_correct(tmp_path, tiny_models, study_files):
    """``calibtune ask`` on a study's estimator gives the cell's ``p_correct_ts`` (the temperature the study
    recorded beside the estimator), and the estimator's own P(correct) beside it."""
    from calibtune.ask import ask
    from calibtune.data import load_questions
    from calibtune.estimators import study_temperature

    calibration = write_questions(tmp_path / "calibration.jsonl", n=30, options=3)
    extra = ("methods: [probe, lora_prompt]\nlora_prompt: {max_steps: 3, eval_every: 1, batch_size: 4}\n"
             f"calibrate: [{{dataset: '{calibration}'}}]\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", _config(tmp_path, tiny_models, *study_files, extra), "-o", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    name = {slug: str(tiny_models[slug]) for slug in ("llama", "gemma")}
    questions = load_questions(str(study_files[1]))[:3]
    temperatures = []
    for method in ("probe", "lora_prompt"):
        for e, t in (("llama", "llama"), ("gemma", "llama")):  # its own answers, and another model's
            folder = out / "estimators" / method / f"{e}__on__{t}"
            cell = scores[(scores.method == method) & (scores.model == name[e]) & (scores.trained_on == name[t])]
            recorded = study_temperature(folder)
            assert recorded.temperature == cell.temperature.iloc[0]
            assert (recorded.fitted_on, recorded.answers) == ("calibration set", 30)
            temperatures.append(recorded.temperature)
            for q in questions:
                row = cell.set_index("question_id").loc[q.id]
                # no answering model given: the one whose answers the estimator was trained on (T, not E)
                [asked] = ask(folder, [q.text], dtype="float32", device="cpu", choices=q.choices)
                assert asked.answering_model == name[t]
                assert asked.p_correct_raw == pytest.approx(row.p_correct, rel=1e-3)
                assert asked.p_correct == pytest.approx(row.p_correct_ts, rel=1e-3)
                assert asked.temperature == recorded.temperature
                [own] = ask(folder, [q.text], name[t], dtype="float32", device="cpu", choices=q.choices,
                            temperature=False)
                assert (own.p_correct, own.temperature) == (asked.p_correct_raw, None)
    assert any(abs(t - 1) > 0.01 for t in temperatures)  # the scaling is not the identity
    # a broken record is a one-line error naming the file, before any model loads
    broken = out / "estimators" / "probe" / "llama__on__llama" / "temperature.json"
    broken.write_text('{"temperature": -1, "fitted_on": "calibration set"}')
    from calibtune.errors import CalibtuneError
    with pytest.raises(CalibtuneError, match=r"temperature.json: temperature -1 is not a positive number"):
        ask(broken.parent, ["Which word?"], dtype="float32", device="cpu", choices=["a", "b"])
    faults = ((json.dumps({"temperature": True, "fitted_on": "calibration set"}), "temperature True is not a number"),
              (json.dumps({"temperature": 10**400, "fitted_on": "calibration set"}),  # past float's range
               "not a positive number"),
              (json.dumps({"temperature": 1.2, "fitted_on": None}), "fitted_on None is not one of"),
              (json.dumps([1.2]), "not a study temperature"))
    for text, fault in faults:
        broken.write_text(text)
        with pytest.raises(CalibtuneError, match=fault):
            ask(broken.parent, ["Which word?"], dtype="float32", device="cpu", choices=["a", "b"])
