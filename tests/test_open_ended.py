"""Open-ended answers with tiny models: generation, grading, the baselines, the study and `calibtune ask`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from calibtune.cli import app
from calibtune.errors import CalibtuneError
from calibtune.generate import GenerationSettings, encode_prompts, generate_answers, sample_answers, stop_token_ids
from calibtune.models import load_model
from calibtune.open_ended import OpenEndedPrompt, answer_open_ended, perplexity_confidence, references_of
from calibtune.records import Question
from conftest import build_tokenizer

runner = CliRunner()


def _questions(n: int) -> list[Question]:
    return [Question(id=f"oe/{i}", dataset="oe", split="file", text=f"What comes after number {i}?",
                     references=("zzqx",)) for i in range(n)]


def test_generation_stops_at_a_newline_and_keeps_token_logprobs(tiny_models):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    ids = encode_prompts(lm, ["Question: What is the capital?\nAnswer:", "Question: Which fox?\nAnswer:"])
    long = generate_answers(lm, ids, GenerationSettings(max_new_tokens=12, stop=""))
    cut = generate_answers(lm, ids, GenerationSettings(max_new_tokens=12, stop="\n"))
    for full, short in zip(long, cut):
        assert "\n" not in short.text
        assert len(short.token_ids) == len(short.token_logprobs) <= 12
        assert all(lp <= 0 for lp in short.token_logprobs)
        # the cut answer is the start of the uncut one, up to its first newline
        assert lm.tokenizer.decode(list(full.token_ids), skip_special_tokens=True).split("\n")[0].strip() == short.text
    # greedy generation is batched: alone or together, the same answer
    alone = generate_answers(lm, ids[:1], GenerationSettings(max_new_tokens=12))
    assert alone[0].text == cut[0].text and alone[0].token_ids == cut[0].token_ids
    np.testing.assert_allclose(alone[0].token_logprobs, cut[0].token_logprobs, atol=1e-4)
    # each kept log-probability is the model's own, read again by one teacher-forced pass
    for prompt, answer in zip(ids, long):
        full = torch.tensor([list(prompt) + list(answer.token_ids)], device=lm.device)
        with torch.no_grad():
            logp = lm.model(input_ids=full).logits[0].float().log_softmax(-1)
        steps = torch.arange(len(prompt) - 1, full.shape[1] - 1)
        np.testing.assert_allclose(answer.token_logprobs, logp[steps, full[0, steps + 1]].cpu().numpy(), atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_stop_token_ids_are_exactly_the_tokens_holding_the_stop_string(tiny_models, arch):
    tok = load_model(str(tiny_models[arch]), dtype="float32").tokenizer
    ids = stop_token_ids(tok, "\n")
    texts = [tok.decode([i]) for i in range(len(tok))]
    assert list(ids) == [i for i, text in enumerate(texts) if "\n" in text] and ids
    assert stop_token_ids(tok, "") == ()


def test_output_layer_gets_a_contiguous_input(tiny_models):
    """generate's first step gives the head a strided view, which torch multiplies very slowly."""
    lm = load_model(str(tiny_models["gemma"]), dtype="float32")
    head = lm.model.get_output_embeddings()
    seen = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    hidden = torch.randn(3, 5, head.weight.shape[1], device=head.weight.device)
    try:
        head(hidden[:, -1:, :])
    finally:
        handle.remove()
    assert not hidden[:, -1:, :].is_contiguous() and seen == [True]


def test_sampling_is_seeded_and_follows_the_temperature(tiny_models):
    lm = load_model(str(tiny_models["gemma"]), dtype="float32")
    ids = encode_prompts(lm, ["Question: What is the capital?\nAnswer:", "Question: Which fox?\nAnswer:"])
    settings = GenerationSettings(max_new_tokens=6, stop="")
    one = sample_answers(lm, ids, k=4, seed=3, settings=settings)
    two = sample_answers(lm, ids, k=4, seed=3, settings=settings)
    assert len(one[0]) == 4 and [g.token_ids for g in one[0]] == [g.token_ids for g in two[0]]
    greedy = generate_answers(lm, ids, settings)
    # at temperature 1 the samples of a random model wander; near 0 they are the greedy answer
    assert any(g.token_ids != greedy[i].token_ids for i, group in enumerate(one) for g in group)
    cold = sample_answers(lm, ids, k=3, temperature=1e-4, seed=3, settings=settings)
    assert all(g.token_ids == greedy[i].token_ids for i, group in enumerate(cold) for g in group)


def test_an_answer_after_leading_whitespace_is_kept():
    from calibtune.generate import _cut

    tok = build_tokenizer(bos=False)
    newline, = tok("\n", add_special_tokens=False)["input_ids"]
    paris = tok(" Paris", add_special_tokens=False)["input_ids"]
    ids = [newline, newline, *paris, newline, *paris]
    cut = _cut(tok, ids, [-0.5] * len(ids), "\n", tok.eos_token_id)
    assert cut.text == "Paris" and cut.token_ids == tuple(ids[: 2 + len(paris)])
    assert _cut(tok, [newline, tok.eos_token_id, *paris], [-1.0] * 5, "\n", tok.eos_token_id).text == ""


def test_many_empty_answers_are_reported_at_once_with_the_fix():
    from calibtune.config import StudyConfig
    from calibtune.records import Answer
    from calibtune.stages.answers import _check_empty
    from calibtune.stages.base import Runtime

    logged: list[str] = []
    rt = Runtime(store=None, log=logged.append, models=None)
    cfg = StudyConfig.model_validate({"models": ["m"], "task": "open_ended", "train": [{"dataset": "trivia_qa"}],
                                      "eval": [{"dataset": "trivia_qa"}], "methods": ["probe"]})
    answers = [Answer(f"q{i}", "m", "" if i % 3 else "Paris", -1.0) for i in range(30)]
    _check_empty(rt, cfg, "m", answers)
    assert "20 of 30 open-ended answers are empty" in logged[0] and "chat_template: true" in logged[0]
    _check_empty(rt, cfg, "m", answers[:1] * 30)
    assert len(logged) == 1  # none empty: nothing said
    with pytest.raises(CalibtuneError, match="30 of 30 open-ended answers are empty.*open_ended.shots"):
        _check_empty(rt, cfg, "m", [Answer(f"q{i}", "m", " ", -1.0) for i in range(30)])


def test_k_shot_prompt_and_references():
    exemplar = Question(id="x/1", dataset="x", split="dev", text="Capital of France?", references=("Paris", "paris"))
    mc = Question(id="m/1", dataset="m", split="t", text="Pick?", choices=("a", "b"), gold=1)
    prompt = OpenEndedPrompt("Question: {question}\nAnswer:", (exemplar,))
    assert prompt.plain(mc) == "Question: Capital of France?\nAnswer: Paris\n\nQuestion: Pick?\nAnswer:"
    assert references_of(mc) == ("b",)


def test_chat_template_prompt(tiny_models):
    lm = load_model(str(tiny_models["qwen"]), dtype="float32")
    exemplar = Question(id="x/1", dataset="x", split="dev", text="Capital of France?", references=("Paris",))
    question = _questions(1)[0]
    with pytest.raises(CalibtuneError, match="no chat template"):
        OpenEndedPrompt("Question: {question}\nAnswer:", (exemplar,), chat_template=True).texts(lm, [question])
    lm.tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                                  "{% if add_generation_prompt %}<assistant>{% endif %}")
    (ids,) = OpenEndedPrompt("Question: {question}\nAnswer:", (exemplar,), chat_template=True).texts(lm, [question])
    text = lm.tokenizer.decode(ids)
    assert text.startswith("<user>Capital of France?\n<assistant>Paris\n<user>What comes after number 0?")
    assert text.endswith("<assistant>")


EXEMPLARS = [{"id": "x0", "question": "What is one plus one?", "answers": ["two"]},
             {"id": "x1", "question": "What colour is the sky?", "answers": ["blue", "azure"]}]


def _open_ended_files(tmp_path, tiny_models):
    """Questions whose references are the tiny models' own greedy 2-shot answers for half of them, so both
    classes occur; and the file of the two exemplars."""
    questions = _questions(64)
    exemplars = tuple(Question(id=x["id"], dataset="x", split="file", text=x["question"],
                               references=tuple(x["answers"])) for x in EXEMPLARS)
    texts = {}
    for arch in ("llama", "gemma"):
        lm = load_model(str(tiny_models[arch]), dtype="float32")
        prompt = OpenEndedPrompt("Question: {question}\nAnswer:", exemplars)
        answers = answer_open_ended(lm, questions, prompt, GenerationSettings(max_new_tokens=6, batch_size=8))
        texts[arch] = [a.text for a in answers]
    rows = []
    for i, q in enumerate(questions):
        refs = [texts["llama"][i], texts["gemma"][i]] if i % 2 == 0 else ["zzqx"]
        rows.append({"id": f"q{i}", "question": q.text, "answers": [r for r in refs if r.strip()] or ["zzqx"]})
    train, held = tmp_path / "oe_train.jsonl", tmp_path / "oe_held.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:44]))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[44:]))
    shots = tmp_path / "oe_exemplars.jsonl"
    shots.write_text("".join(json.dumps(r) + "\n" for r in EXEMPLARS))
    return train, held, shots


def test_open_ended_study_with_every_method(tmp_path, tiny_models, isolated_cache, monkeypatch):
    import calibtune.open_ended as open_ended

    # The tiny models never state a probability; a scripted verbalized reply makes the cell real: every
    # fourth answer has no parseable probability and must be left out and counted, never made 0.5.
    def scripted(lm, questions, answers, max_new_tokens=8, batch_size=16, template=None):
        replies = ["I'd say 0.9" if i % 4 == 0 else "no idea" if i % 4 == 1 else "Probability: 20%"
                   for i in range(len(questions))]
        values = [open_ended.parse_confidence(r) for r in replies]
        return np.array([np.nan if v is None else v for v in values]), replies

    monkeypatch.setattr(open_ended, "verbalized_confidence", scripted)
    train, held, shots = _open_ended_files(tmp_path, tiny_models)
    config = tmp_path / "oe.yaml"
    config.write_text(
        f"name: oe\nseed: 0\ntask: open_ended\nmodels: ['{tiny_models['llama']}', '{tiny_models['gemma']}']\n"
        f"dtype: float32\nbatch_size: 8\ntrain: [{{dataset: '{train}'}}]\neval: [{{dataset: '{held}'}}]\n"
        "methods: [probe, lora, lora_prompt, zero_shot, likelihood, perplexity, verbalized, sampling]\n"
        f"open_ended: {{max_new_tokens: 6, grader: exact, shots: 2, exemplars: {{dataset: '{shots}'}}}}\n"
        "sampling: {k: 3, max_new_tokens: 6}\n"
        "probe: {max_epochs: 5, patience: 2}\nlora_prompt: {max_steps: 2, eval_every: 1}\n"
        "lora: {max_steps: 2, eval_every: 1}\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores.method) == {"probe", "lora", "lora_prompt", "zero_shot", "likelihood", "perplexity",
                                  "verbalized", "sampling"}
    assert scores.p_correct.between(0, 1).all()
    probe = scores[scores.method == "probe"]
    assert probe.groupby(["model", "trained_on"]).size().tolist() == [20] * 4
    # labels follow the references built above: the even questions are right
    labels = probe[probe.model == probe.trained_on].set_index("question_id").label
    assert labels.mean() > 0.3
    sampled = scores[scores.method == "sampling"]
    assert sampled.p_correct.isin([0, 1 / 3, 2 / 3, 1]).all()
    # sampled at temperature 1, not greedily: a greedy "sample" of a non-empty answer would always match it
    greedy = pd.read_parquet(out / "answers" / "llama.parquet").set_index("question_id").text
    llama = sampled[sampled.model == str(tiny_models["llama"])].set_index("question_id").p_correct
    nonempty = [q for q in llama.index if greedy[q].strip()]
    assert nonempty and (llama[nonempty] < 1).any()
    info = json.loads((out / "metrics.json").read_text())
    verbal = [c for c in info["cells"] if c["method"] == "verbalized"]
    assert len(verbal) == 2 and all((c["n"], c["n_left_out"]) == (15, 5) for c in verbal)
    verbal_rows = scores[scores.method == "verbalized"]
    assert set(np.round(verbal_rows.p_correct, 6)) == {0.9, 0.2}

    # each answering model's graded answers are in the run folder, and `calibtune grade` regrades them
    answers = pd.read_parquet(out / "answers" / "llama.parquet")
    assert len(answers) == 64 and set(answers.grader) == {"exact"}
    graded = runner.invoke(app, ["grade", str(out / "answers" / "llama.parquet"), "--dataset", str(held),
                                 "--grader", "exact", "--compare", "contains"])
    assert graded.exit_code == 0, graded.output
    assert "44 answers are to questions outside" in graded.output and "20 compared" in graded.output
    assert "Cohen's kappa" in graded.output

    # `calibtune ask` with the LoRA + Prompt estimator of llama on llama, and --json: the answer is made
    # the way the estimator's training answers were (2-shot), so it is the study's own answer
    folder = out / "estimators" / "lora_prompt" / "llama__on__llama"
    saved = json.loads((folder / "lora_prompt.json").read_text())
    assert [x["answer"] for x in saved["answering"]["exemplars"]] == ["two", "blue"]
    asked = runner.invoke(app, ["ask", str(folder), "What comes after number 50?", "--json", "--dtype", "float32"])
    assert asked.exit_code == 0, asked.output
    record = json.loads(asked.output.strip().splitlines()[-1])
    assert record["estimator_model"] == str(tiny_models["llama"].resolve())  # loads from any folder
    assert record["answer"] == answers.set_index("question_id").text["oe_held/q50"]
    study_score = scores[(scores.method == "lora_prompt") & (scores.model == str(tiny_models["llama"]))
                         & (scores.trained_on == str(tiny_models["llama"]))].set_index("question_id")
    assert record["p_correct_raw"] == pytest.approx(study_score.p_correct["oe_held/q50"], abs=1e-5)
    assert record["p_correct"] == pytest.approx(study_score.p_correct_ts["oe_held/q50"], abs=1e-5)
    probe_folder = out / "estimators" / "probe" / "gemma__on__llama"
    many = runner.invoke(app, ["ask", str(probe_folder), "--dtype", "float32", "--model", str(tiny_models["llama"])],
                         input="What comes after number 3?\nWhat comes after number 5?\n")
    assert many.exit_code == 0, many.output
    assert many.output.count("P(correct)") == 2


def test_answer_with_shots_then_grade_with_two_graders(tmp_path, tiny_models):
    rows = [{"id": f"q{i}", "question": f"What comes after number {i}?", "answers": [str(i + 1)]} for i in range(10)]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "a.parquet"
    made = runner.invoke(app, ["answer", str(questions), "--model", str(tiny_models["llama"]), "--shots", "2",
                               "--max-new-tokens", "4", "--dtype", "float32", "-o", str(out)])
    assert made.exit_code == 0, made.output
    assert pd.read_parquet(out).question_id.tolist() == [f"q/q{i}" for i in range(2, 10)]  # the exemplars are not asked
    graded = runner.invoke(app, ["grade", str(out), "--dataset", str(questions), "--grader", "exact",
                                 "--compare", "contains", "--format", "markdown"])
    assert graded.exit_code == 0, graded.output
    assert "8 compared" in graded.output and "| exact correct |" in graded.output
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "z", "question": "Why?", "answers": ["because"]}) + "\n")
    refused = runner.invoke(app, ["grade", str(out), "--dataset", str(other)])
    assert refused.exit_code != 0 and "none of the 8 answers" in refused.output
    no_template = runner.invoke(app, ["answer", str(questions), "--model", str(tiny_models["llama"]),
                                      "--chat-template"])
    assert no_template.exit_code == 2 and "has no chat template" in no_template.output
    assert "Traceback" not in no_template.output
    too_many = runner.invoke(app, ["answer", str(questions), "--model", str(tiny_models["llama"]), "--shots", "10"])
    assert too_many.exit_code != 0 and "none is left to answer after 10 exemplars" in too_many.output


def test_perplexity_confidence_of_an_empty_answer_is_zero():
    from calibtune.records import Answer

    assert perplexity_confidence(Answer(question_id="a", model="m", text="", logprob=0.0)) == 0.0
    assert perplexity_confidence(Answer(question_id="a", model="m", text="x", logprob=-1.0,
                                        token_logprobs=(-1.0,))) == pytest.approx(np.exp(-1.0))
