"""Faults a review found, each with the test that failed before it was fixed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from calibtune.cli import app
from calibtune.errors import CalibtuneError
from calibtune.models import load_model
from conftest import write_questions

runner = CliRunner()


def test_grade_compare_leaves_undecided_verdicts_out(tmp_path):
    questions = tmp_path / "q.jsonl"
    rows = [{"id": f"q{i}", "question": f"Q{i}?", "answers": ["42"] if i < 4 else ["Paris"]} for i in range(10)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from calibtune.records import Answer, answers_to_table

    texts = ["42", "41", "42", "x", "Paris", "Paris", "Rome", "Paris", "Rome", "Lyon"]
    path = tmp_path / "a.parquet"
    answers_to_table([Answer(f"q/q{i}", "m", t, -1.0) for i, t in enumerate(texts)]).to_parquet(path)
    result = runner.invoke(app, ["grade", str(path), "--dataset", str(questions), "--grader", "exact",
                                 "--compare", "numeric"])
    assert result.exit_code == 0, result.output
    # numeric cannot decide the six answers to "Paris" questions: they are skipped, not counted as wrong
    assert "10 answers graded by numeric: accuracy 0.200 (6 undecided, counted as wrong)" in result.output
    assert "4 compared, 6 skipped, agreement 1.000" in result.output


def test_judge_identity_holds_the_model_fingerprint_dtype_and_token_limit(tiny_models, tmp_path):
    from calibtune.graders import local_judge
    from calibtune.models import model_fingerprint

    judge = local_judge(str(tiny_models["llama"]), dtype="float32", max_new_tokens=5)
    identity = judge.identity()
    assert identity["fingerprint"] == model_fingerprint(str(tiny_models["llama"]))
    assert (identity["dtype"], identity["max_new_tokens"]) == ("float32", 5)
    assert local_judge(str(tiny_models["llama"]), dtype="float32", max_new_tokens=6).identity() != identity
    copy = tmp_path / "llama"
    shutil.copytree(tiny_models["llama"], copy)
    assert local_judge(str(copy), dtype="float32", max_new_tokens=5).identity()["fingerprint"] == \
        identity["fingerprint"]  # the same weights elsewhere: the same judge


def _open_study(tmp_path, tiny_models, refs: list[list[str]], extra: str, methods: str = "probe") -> str:
    rows = [{"id": f"q{i}", "question": f"What comes after number {i}?", "answers": r} for i, r in enumerate(refs)]
    train, held = tmp_path / "oe_train.jsonl", tmp_path / "oe_held.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    config = tmp_path / "oe.yaml"
    config.write_text(f"task: open_ended\nmodels: ['{tiny_models['llama']}']\ndtype: float32\nbatch_size: 8\n"
                      f"train: [{{dataset: '{train}'}}]\neval: [{{dataset: '{held}'}}]\n"
                      "open_ended: {max_new_tokens: 4" + extra + "}\n"
                      f"methods: [{methods}]\nprobe: {{max_epochs: 3}}\n")
    return str(config)


def test_a_local_judge_grades_a_study_and_a_regrade_recomputes_its_cells(tmp_path, tiny_models, isolated_cache):
    from calibtune.generate import GenerationSettings
    from calibtune.open_ended import OpenEndedPrompt, answer_open_ended
    from calibtune.records import Question

    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    questions = [Question(f"q{i}", "x", "s", f"What comes after number {i}?", references=("?",)) for i in range(24)]
    own = [a.text for a in answer_open_ended(lm, questions, OpenEndedPrompt("Question: {question}\nAnswer:"),
                                             GenerationSettings(max_new_tokens=4, batch_size=8))]
    refs = [[own[i]] if i % 2 == 0 and own[i] else ["zzqx"] for i in range(24)]
    judge_model = tmp_path / "judge"  # the judge prompt is longer than the tiny models' 256 positions
    shutil.copytree(tiny_models["llama"], judge_model)
    settings = json.loads((judge_model / "config.json").read_text())
    (judge_model / "config.json").write_text(json.dumps({**settings, "max_position_embeddings": 2048}))
    judge = f", grader: judge, judge: {{model: '{judge_model}', max_new_tokens: 3}}"
    config = _open_study(tmp_path, tiny_models, refs, judge)
    result = runner.invoke(app, ["run", config, "-o", str(tmp_path / "judged"), "--dtype", "float32"])
    # a random judge replies with noise: an undecided verdict counts as wrong, so one class is likely and the
    # Probe may refuse; what matters here is how the judge graded and what it cached
    assert (tmp_path / "judged" / "answers").is_dir(), (result.output, repr(result.exception))
    answers = pd.read_parquet(tmp_path / "judged" / "answers" / "llama.parquet")
    assert set(answers.grader) == {f"judge:{judge_model}"}
    undecided = int(answers.correct.isna().sum())
    if undecided:
        assert f"could not decide {undecided} of 24 answers" in " ".join(result.output.split())
    cached = [json.loads(line) for line in (isolated_cache / "judgements.jsonl").read_text().splitlines()]
    assert len(cached) == len({(q, a) for q, a in zip(answers.question_id, answers.text)})
    assert {row["judge"]["max_new_tokens"] for row in cached} == {3}

    # the same study graded by containment; then one reference changes: the cells follow the new labels
    contains = _open_study(tmp_path, tiny_models, refs, "")
    first = runner.invoke(app, ["run", contains, "-o", str(tmp_path / "run")])
    assert first.exit_code == 0, first.output
    from calibtune.graders import normalize_answer

    flip = next(i for i in range(16, 24) if normalize_answer(own[i]))  # an evaluation answer with words in it
    refs[flip] = [own[flip]] if refs[flip] == ["zzqx"] else ["zzqx"]
    changed = _open_study(tmp_path, tiny_models, refs, "")
    second = runner.invoke(app, ["run", changed, "-o", str(tmp_path / "run")])
    assert second.exit_code == 0, second.output
    said = " ".join(second.output.split())
    llama = tiny_models["llama"]
    assert f"answers of {llama}: from the cache (1 shards)" in said  # answered once: only the grade changed
    assert f"Probe {llama} on {llama}: from the cache" not in said  # the cell learnt the new labels
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet").set_index("question_id")
    graded = pd.read_parquet(tmp_path / "run" / "answers" / "llama.parquet").set_index("question_id")
    assert (scores.label == graded.correct[scores.index].astype(int)).all()
    assert bool(scores.label[f"oe_held/q{flip}"]) == (refs[flip] != ["zzqx"])


def test_an_estimator_trained_on_multiple_choice_answers_needs_the_options(tmp_path, tiny_models, isolated_cache,
                                                                              monkeypatch):
    train = write_questions(tmp_path / "train.jsonl", n=40, options=3)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=12, options=3)
    config = tmp_path / "mc.yaml"
    relative = tiny_models["llama"].relative_to(tiny_models["llama"].parent.parent)
    monkeypatch.chdir(tiny_models["llama"].parent.parent)  # the config names the model by a relative path
    config.write_text(f"models: ['{relative}']\ndtype: float32\ntrain: [{{dataset: '{train}'}}]\n"
                      f"eval: [{{dataset: '{heldout}'}}]\nmethods: [probe, lora]\nprobe: {{max_epochs: 3}}\n"
                      "lora: {max_steps: 2, eval_every: 1, batch_size: 4}\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    folder = out / "estimators" / "probe" / "llama__on__llama"
    saved = json.loads((folder / "probe.json").read_text())
    assert saved["estimator_model"] == str(tiny_models["llama"].resolve()) and saved["task"] == "multiple_choice"

    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded model still loads
    refused = runner.invoke(app, ["ask", str(folder), "Which word comes number 3?", "--dtype", "float32"])
    assert refused.exit_code == 2 and "multiple-choice answers" in refused.output and "--choice" in refused.output
    asked = runner.invoke(app, ["ask", str(folder), "Which word comes number 3?", "--choice", "fox 0",
                                "--choice", "dog 1", "--choice", "brown 2", "--json", "--dtype", "float32"])
    assert asked.exit_code == 0, asked.output
    record = json.loads(asked.output.strip().splitlines()[-1])
    assert record["answer"] in ("fox 0", "dog 1", "brown 2")
    # the same question in the study: ask gives the study's answer and the study's P(correct)
    q = json.loads(heldout.read_text().splitlines()[3])
    again = runner.invoke(app, ["ask", str(folder), q["question"], *sum((["--choice", c] for c in q["choices"]), []),
                                "--json", "--dtype", "float32"])
    record = json.loads(again.output.strip().splitlines()[-1])
    answers = pd.read_parquet(out / "answers" / "llama.parquet").set_index("question_id")
    scores = pd.read_parquet(out / "scores.parquet")
    probe = scores[scores.method == "probe"].set_index("question_id")
    assert record["answer"] == answers.text["heldout/q3"]
    # the estimator's own P(correct), and the study's temperature-scaled one
    assert record["p_correct_raw"] == pytest.approx(probe.p_correct["heldout/q3"], abs=1e-5)
    assert record["p_correct"] == pytest.approx(probe.p_correct_ts["heldout/q3"], abs=1e-5)

    # the model is checked by its weights: a copy elsewhere loads, changed weights are refused
    lora_folder = out / "estimators" / "lora" / "llama__on__llama"
    from calibtune.estimators import load_estimator

    copy = tmp_path / "copied-llama"
    shutil.copytree(tiny_models["llama"], copy)
    assert load_estimator(lora_folder, load_model(str(copy), dtype="float32")).estimate(["Q?"], ["dog 1"]).shape == (1,)
    config_json = json.loads((copy / "config.json").read_text())
    config_json["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config_json))
    with pytest.raises(CalibtuneError, match="was trained on estimator model"):
        load_estimator(lora_folder, load_model(str(copy), dtype="float32"))


@pytest.mark.parametrize("prompt", [None, "Question: {question}\\nChoices:\\n{choices}\\nAnswer:"])
def test_every_saved_estimator_scores_answers_as_the_study_did(tmp_path, tiny_models, isolated_cache, prompt):
    from calibtune.estimators import AnswerEstimator, load_estimator
    from calibtune.records import Question

    train = write_questions(tmp_path / "train.jsonl", n=40, options=3)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=12, options=3)
    config = tmp_path / "mc.yaml"
    config.write_text(f"models: ['{tiny_models['qwen']}']\ndtype: float32\ntrain: [{{dataset: '{train}'}}]\n"
                      f"eval: [{{dataset: '{heldout}'}}]\nmethods: [probe, lora, lora_prompt]\n"
                      "probe: {max_epochs: 3}\nlora: {max_steps: 2, eval_every: 1, batch_size: 4}\n"
                      "lora_prompt: {max_steps: 2, eval_every: 1, batch_size: 4}\n"
                      + (f'prompt: "{prompt}"\n' if prompt else ""))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    answers = pd.read_parquet(out / "answers" / "qwen.parquet").set_index("question_id")
    rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    # with the options in the prompt the estimator needs the whole question; without, its text is enough
    questions = {f"heldout/{r['id']}": Question(f"heldout/{r['id']}", "heldout", "test", r["question"],
                                                tuple(r["choices"]), r["answer"]) if prompt else r["question"]
                 for r in rows}
    for method in ("probe", "lora", "lora_prompt"):
        estimator = load_estimator(out / "estimators" / method / "qwen__on__qwen", dtype="float32")
        assert isinstance(estimator, AnswerEstimator)
        rows = scores[scores.method == method]
        p = estimator.estimate([questions[q] for q in rows.question_id], [answers.text[q] for q in rows.question_id])
        np.testing.assert_allclose(p, rows.p_correct, atol=1e-5, err_msg=method)
        if hasattr(estimator, "release"):
            estimator.release()


def test_lora_targets_follow_the_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from calibtune.estimator_settings import LoraPromptConfig
    from calibtune.estimators.adapters import attach_lora, target_modules
    from conftest import build_tokenizer

    tok = build_tokenizer(bos=False)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64))
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    lm = load_model(str(tmp_path / "gpt2"), dtype="float32")
    assert target_modules(lm, LoraPromptConfig()) == ["c_attn"]
    with pytest.raises(CalibtuneError, match="'q_proj' is not in model .*c_attn, c_fc, c_proj") as err:
        target_modules(lm, LoraPromptConfig(target_modules=["q_proj", "v_proj"]))
    assert "\n" not in str(err.value)
    peft_model = attach_lora(lm, LoraPromptConfig(), seed=0)
    assert any("c_attn.lora_A" in name for name, _ in peft_model.named_parameters())
    peft_model.unload()


def test_prompts_longer_than_the_context_are_refused_naming_the_question(tiny_models, tmp_path):
    from calibtune.answer import ClozeSettings, answer_multiple_choice
    from calibtune.generate import GenerationSettings
    from calibtune.open_ended import OpenEndedPrompt, answer_open_ended
    from calibtune.records import Question

    lm = load_model(str(tiny_models["llama"]), dtype="float32")  # max_position_embeddings 256
    long = Question("set/long", "set", "s", "the lazy dog " * 120, ("a", "b"), 0)
    short = Question("set/short", "set", "s", "Which?", ("a", "b"), 0)
    with pytest.raises(CalibtuneError, match="question set/long takes [0-9]+ tokens, more than model .* reads "
                                             "\\(256\\)"):
        answer_multiple_choice(lm, [short, long], ClozeSettings())
    near = Question("set/near", "set", "s", "the lazy dog " * 60, references=("a",))
    prompt = OpenEndedPrompt("Question: {question}\nAnswer:")
    n = len(prompt.texts(lm, [near])[0])
    assert n <= 256 < n + 200
    with pytest.raises(CalibtuneError, match=f"question set/near takes {n} tokens and 200 more to generate"):
        answer_open_ended(lm, [near], prompt, GenerationSettings(max_new_tokens=200))


def test_checkpoints_keep_the_cuda_random_state(tmp_path, monkeypatch):
    from calibtune.estimators import adapters

    states = [torch.arange(8, dtype=torch.uint8), torch.arange(8, 16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.extend(new))
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    rng = np.random.default_rng(0)
    progress = adapters._Progress(3, 0, [1, 2], 0.5, adapters.TrainLog(), False)
    adapters.save_checkpoint(tmp_path / "ckpt", {"w": param.data}, None, opt, sched, rng, progress)
    adapters.load_checkpoint(tmp_path / "ckpt", opt, sched, rng)
    assert [s.tolist() for s in restored] == [s.tolist() for s in states]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CalibtuneError, match="written on 2 CUDA devices"):
        adapters.load_checkpoint(tmp_path / "ckpt", opt, sched, rng)


def test_the_graders_import_each_other_without_a_cycle():
    import ast
    from pathlib import Path

    import calibtune.graders as package

    folder = Path(package.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        if path.name == "__init__.py":
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("calibtune.graders."):
                imported.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = imported
    assert "judge" not in graph["match"] and "match" not in graph["judge"]
    done, stack = set(), []

    def visit(name):  # depth-first: a module met again on the current path closes a cycle
        assert name not in stack, f"import cycle: {' -> '.join(stack + [name])}"
        if name in done:
            return
        stack.append(name)
        for other in graph.get(name, ()):
            visit(other)
        stack.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_a_hub_model_is_fingerprinted_by_its_resolved_revision(tmp_path, monkeypatch, tiny_models):
    import huggingface_hub

    from calibtune.models import model_fingerprint

    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny-llama"
    for commit in ("a" * 40, "b" * 40):
        shutil.copytree(tiny_models["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setitem(huggingface_hub.is_offline_mode.__globals__, "HF_HUB_OFFLINE", True)
    (repo / "refs" / "main").write_text("a" * 40)
    assert model_fingerprint("org/tiny-llama") == f"hub:org/tiny-llama@{'a' * 40}"
    (repo / "refs" / "main").write_text("b" * 40)
    assert model_fingerprint("org/tiny-llama") == f"hub:org/tiny-llama@{'b' * 40}"
    assert model_fingerprint("org/not-cached").endswith("@unresolved")


def test_a_study_says_how_many_verdicts_its_grader_left_undecided(tmp_path, tiny_models, isolated_cache):
    refs = [["42"] if i % 3 == 0 else ["Paris"] for i in range(24)]  # numeric cannot grade "Paris"
    config = _open_study(tmp_path, tiny_models, refs, ", grader: numeric", methods="likelihood")
    result = runner.invoke(app, ["run", config, "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    answers = pd.read_parquet(tmp_path / "run" / "answers" / "llama.parquet")
    assert int(answers.correct.isna().sum()) == 16
    assert "the grader could not decide 16 of 24 answers; they count as wrong" in " ".join(result.output.split())
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet").set_index("question_id")
    undecided = answers[answers.correct.isna()].question_id
    assert (scores.label[scores.index.intersection(undecided)] == 0).all()
