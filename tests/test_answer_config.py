"""Cloze answering, grading, option confidence, and the study config."""

from __future__ import annotations

import numpy as np
import pytest

from calibtune.answer import ClozeSettings, answer_multiple_choice, option_confidence
from calibtune.config import load_config
from calibtune.errors import CalibtuneError
from calibtune.forward import continuation_logprobs, encode_continuations
from calibtune.graders import grade_answers
from calibtune.models import load_model
from calibtune.prompts import format_prompt
from calibtune.records import Answer, Question, answers_from_table, answers_to_table

QUESTIONS = [
    Question("t/0", "t", "test", "What is the capital of France?", ("Paris", "the lazy dog", "Jupiter"), 0),
    Question("t/1", "t", "test", "Which planet is largest?", ("fox", "Jupiter"), 1),
]


def test_answer_picks_best_mean_and_grades(tiny_models):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    answers = answer_multiple_choice(lm, QUESTIONS, ClozeSettings(batch_size=2))
    for q, a in zip(QUESTIONS, answers):
        seqs = encode_continuations(lm.tokenizer, [f"Question: {q.text}\nAnswer:"] * len(q.choices),
                                    [" " + c for c in q.choices])
        sums, counts = continuation_logprobs(lm, seqs)
        np.testing.assert_allclose(a.option_logprob_sum, sums, atol=1e-5)
        np.testing.assert_allclose(a.option_logprob_mean, sums / counts, atol=1e-5)
        assert a.choice == int(np.argmax(sums / counts)) and a.text == q.choices[a.choice]
        assert a.logprob == pytest.approx(sums[a.choice])
    graded = grade_answers(answers, QUESTIONS)
    assert [g.correct for g in graded] == [a.choice == q.gold for a, q in zip(answers, QUESTIONS)]
    assert all(g.grader == "choice_match" for g in graded)
    assert answers_from_table(answers_to_table(graded)) == graded


def test_option_confidence_is_softmax_share():
    a = Answer("q", "m", "b", -1.0, choice=1, option_logprob_sum=(-3.0, -1.0, -2.0),
               option_logprob_mean=(-1.5, -0.5, -1.0))
    e = np.exp([-1.5, -0.5, -1.0])
    assert option_confidence(a) == pytest.approx(e[1] / e.sum())
    e = np.exp([-3.0, -1.0, -2.0])
    assert option_confidence(a, "sum") == pytest.approx(e[1] / e.sum())


def test_default_config_loads():
    cfg = load_config(None)
    assert cfg.models == ["smollm2-135m", "gemma3-270m"]
    assert {"probe", "option_confidence"} <= set(cfg.methods)


def test_the_default_study_evaluates_held_out_questions_drawn_like_its_training_mix():
    """Temperature scaling is fitted on held-out training answers, so it calibrates an evaluation set only when
    that set is drawn like the training set: the default's evaluation questions are disjoint from its training
    questions and come from the same sets in the same shares (within 5 points)."""
    from collections import Counter

    from calibtune.questions import study_questions

    inputs = study_questions(load_config(None))
    assert not {q.id for q in inputs.train} & {q.id for q in inputs.eval}
    assert (len(inputs.train), len(inputs.eval)) == (1970, 1330)
    train, held_out = Counter(q.dataset for q in inputs.train), Counter(q.dataset for q in inputs.eval)
    assert set(train) == set(held_out) == {"arc_easy", "sciq", "openbookqa", "commonsense_qa"}
    for dataset in train:
        assert abs(train[dataset] / len(inputs.train) - held_out[dataset] / len(inputs.eval)) < 0.05, dataset


@pytest.mark.parametrize("body, message", [
    ("models: [a]\ntrain: [{dataset: x}]\neval: [{dataset: y}]\nseeed: 1\n",
     "unknown key 'seeed' (did you mean 'seed'?)"),
    ("models: [a]\ntrain: [{dataset: x, splitt: test}]\neval: [{dataset: y}]\n", "did you mean 'split'?"),
    ("models: [a]\ntrain: [{dataset: x}]\neval: [{dataset: y}]\nbatch_size: many\n", "batch_size"),
    ("models: [a]\ntrain: [{dataset: x}]\neval: [{dataset: y}]\nmethods: [prob]\n", "did you mean 'probe'?"),
    ("models: [a]\ntrain: [{dataset: x}]\neval: [{dataset: y}]\nname: ../evil\n", "plain name"),
    ("models: [a]\ntrain: [{dataset: x}]\n", "eval"),
    ("models: [a]\ntrain: [{dataset: x}]\neval: [{dataset: y}]\nprompt: 'Q: {question} {options}'\n",
     "unknown field {options}"),
    ("models: [a]\ntrain: [{dataset: x}]\neval: [{dataset: y}]\nprompt: 'Q: {choices}'\n", "{question}"),
    ("models: [a]\ntrain: [{dataset: x}]\neval: [{dataset: y}]\nprompt: 'Q: {question'\n", "literal brace"),
    ("- just a list\n", "mapping"),
    ("models: [a\n", "not valid YAML"),
])
def test_bad_configs(tmp_path, body, message):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(CalibtuneError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_prompt_shows_the_options_when_asked():
    shown = format_prompt(QUESTIONS[0], "Question: {question}\nChoices:\n{choices}\nAnswer:")
    assert shown == ("Question: What is the capital of France?\nChoices:\n(a): Paris\n(b): the lazy dog\n"
                     "(c): Jupiter\nAnswer:")
    assert format_prompt(QUESTIONS[1]) == "Question: Which planet is largest?\nAnswer:"
    open_ended = Question("o/0", "o", "test", "Who wrote Hamlet?", references=("Shakespeare",))
    with pytest.raises(CalibtuneError, match="question o/0 has no options"):
        format_prompt(open_ended, "{question} {choices}")


def test_config_not_utf8_or_missing(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(CalibtuneError, match="not UTF-8"):
        load_config(path)
    with pytest.raises(CalibtuneError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
