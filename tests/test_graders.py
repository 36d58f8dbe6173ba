"""Open-ended graders: normalisation, matching, numbers, batch grading, judge replies and grader agreement."""

from __future__ import annotations

import math

import pytest

from calibtune.errors import CalibtuneError
from calibtune.graders import (
    GRADERS,
    ContainsMatch,
    ExactMatch,
    JudgementCache,
    LocalJudge,
    NumericMatch,
    format_agreement,
    get_grader,
    grade_answers,
    grader_agreement,
    judge_prompt,
    normalize_answer,
    parse_judgement,
    parse_number,
)
from calibtune.records import Answer, Question


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("an apple a day", "apple day"),
    ("  Paris,   France. ", "paris france"),
    ("CAFÉ Müller", "cafe muller"),
    ("Ångström", "angstrom"),
    ("U.S.A.", "usa"),
    ("rock-and-roll", "rock and roll"),
    ("“Quoted” — text!", "quoted text"),
    ("Theatre", "theatre"),  # "the" only as a whole word
    ("A", ""),
    ("1,234", "1234"),
    ("tab\tand\nnewline", "tab and newline"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("$1,234.50", 1234.5),
    ("-3", -3.0),
    ("1/2", 0.5),
    ("12 apples", 12.0),
    ("The answer is 42.", 42.0),
    ("She had 3 apples and ate 1, so 2 are left.\n#### 42", 42.0),
    ("First 5 then 7", 7.0),
    ("The answer is 18 because 3 * 6 = 18 and not 20", 18.0),
    ("1 1/2 cups", 1.5),
    ("costs .5 dollars", 0.5),
    ("3.14", 3.14),
    ("1,000,000", 1_000_000.0),
    ("\\boxed{17}", 17.0),
    ("answer: −4", -4.0),
    ("50%", 50.0),
    ("COVID-19", 19.0),
    ("2/0", None),
    ("no digits here", None),
    ("", None),
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_exact_match_uses_normalised_aliases():
    grader = ExactMatch()
    grade = grader.grade("the  Eiffel tower!", ["Tour Eiffel", "Eiffel Tower"])
    assert grade.correct is True and grade.grader == "exact" and "Eiffel Tower" in grade.raw
    assert grader.grade("Eiffel", ["Eiffel Tower"]).correct is False
    assert grader.grade("Café", ["cafe"]).correct is True
    assert grader.grade("", ["The"]).correct is False  # two empty normalised forms are no match


def test_contains_match_is_whole_word_alias_in_answer():
    grader = ContainsMatch()
    assert grader.grade("I think it is Paris, France.", ["Paris"]).correct is True
    assert grader.grade("Parisian", ["Paris"]).correct is False
    assert grader.grade("John", ["John Kennedy"]).correct is False  # the answer inside an alias does not count
    assert grader.grade("New York City", ["new york"]).correct is True
    assert grader.grade("anything at all", ["The"]).correct is False  # an alias that normalises to nothing


def test_numeric_match():
    grader = NumericMatch()
    assert grader.grade("The total is $1,234.50", ["1234.5"]).correct is True
    assert grader.grade("#### 42", ["42"]).correct is True
    assert grader.grade("0.5", ["1/2"]).correct is True
    assert grader.grade("1000000.5", ["1000000"]).correct is True  # within the 1e-6 relative tolerance
    assert grader.grade("1.001", ["1"]).correct is False
    assert grader.grade("no idea", ["42"]).correct is False
    assert grader.grade("42", ["forty-two"]).correct is None


def test_no_references_is_undecided():
    for grader in GRADERS.values():
        assert grader.grade("Paris", []).correct is None


def test_unknown_grader_names_the_known_ones():
    with pytest.raises(CalibtuneError, match="unknown grader 'fuzzy'.*contains, exact, numeric"):
        get_grader("fuzzy")
    with pytest.raises(CalibtuneError, match="unknown grader"):
        grade_answers([], [], "fuzzy")


def _questions() -> list[Question]:
    return [Question(id="tq0", dataset="tq", split="test", text="Capital of France?", references=("Paris",)),
            Question(id="tq1", dataset="tq", split="test", text="Largest planet?", references=("Jupiter",)),
            Question(id="gsm0", dataset="gsm", split="test", text="6 times 7?", references=("42",))]


def _answers(texts: list[str]) -> list[Answer]:
    return [Answer(question_id=q.id, model="m", text=t, logprob=-1.0) for q, t in zip(_questions(), texts)]


def test_grade_answers_fills_fields():
    graded = grade_answers(_answers(["Paris", "Saturn", "42"]), _questions(), "exact")
    assert [a.correct for a in graded] == [True, False, True]
    assert {a.grader for a in graded} == {"exact"}
    assert graded[0].grader_output == "matched 'Paris'" and graded[1].text == "Saturn"
    counted = []
    graded = grade_answers(_answers(["x", "y", "The answer is 42"]), _questions(), NumericMatch(),
                           progress=counted.append)
    assert [a.correct for a in graded] == [None, None, True] and sum(counted) == 3


def test_grade_answers_unknown_question():
    answer = Answer(question_id="nope", model="m", text="x", logprob=0.0)
    with pytest.raises(CalibtuneError, match="unknown question 'nope'"):
        grade_answers([answer], _questions(), "exact")


@pytest.mark.parametrize("reply, expected", [
    ("Yes", True), ("no", False), ("Correct.", True), ("**Incorrect**", False), ("TRUE", True),
    ("false", False), ('{"correct": true}', True), ('{"correct": false, "reason": "wrong city"}', False),
    ("{'correct': False}", False), ("verdict: yes", True), ("The proposed answer is correct.", True),
    ("The answer is not correct.", False), ("No, the correct answer is Paris.", False), ("It isn't right.", False),
    ("Judgement: Incorrect", False), ("I am not sure.", None), ("hmm", None), ("", None),
])
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) is expected


def test_local_judge_grades_in_batches_with_cache(tmp_path):
    calls = []

    def generate(prompts: list[str]) -> list[str]:
        calls.append(len(prompts))
        return ["Yes" if "Proposed answer: Paris" in p or "Proposed answer: 42" in p else "maybe" for p in prompts]

    judge = LocalJudge(generate, "tiny", batch_size=2)
    assert judge.name == "judge:tiny"
    cache = JudgementCache(tmp_path / "j.jsonl")
    graded = grade_answers(_answers(["Paris", "Saturn", "42"]), _questions(), judge, cache=cache)
    assert [a.correct for a in graded] == [True, None, True]
    assert graded[1].grader_output == "maybe" and graded[0].grader == "judge:tiny"
    assert calls == [2, 1]
    again = grade_answers(_answers(["Paris", "Saturn", "42"]), _questions(), judge, cache=JudgementCache(cache.path))
    assert again == graded and calls == [2, 1]  # all from the cache
    assert judge.grade("Paris", ["Paris"], "Capital of France?").correct is True


def test_judge_prompt_shows_question_references_and_answer():
    prompt = judge_prompt("Capital of {France}?", ["Paris", "City of Light"], "paris")
    assert "Capital of {France}?" in prompt and "- Paris\n- City of Light" in prompt
    assert "Proposed answer: paris" in prompt


def test_judge_prompt_lists_each_normalised_reference_once_and_at_most_ten():
    from calibtune.graders.judge import MAX_LISTED_REFERENCES

    refs = ["Hitler", "HITLER", "Adolf Hitler", "adolf hitler.", "The Hitler"] + [f"alias {i}" for i in range(20)]
    listed = [line[2:] for line in judge_prompt("Who?", refs, "Hitler").splitlines() if line.startswith("- ")]
    assert listed[:2] == ["Hitler", "Adolf Hitler"]  # first spelling of each form, in order
    assert len(listed) == MAX_LISTED_REFERENCES == 10 and listed[-1] == "alias 7"


def test_agreement_matches_sklearn_and_skips_none():
    from sklearn.metrics import cohen_kappa_score

    a = [True, True, False, None, False, True, False, True]
    b = [True, False, False, True, False, None, True, True]
    result = grader_agreement(a, b)
    kept = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    assert result.n == 6 and result.n_skipped == 2
    assert result.table == {(True, True): 2, (True, False): 1, (False, True): 1, (False, False): 2}
    assert result.raw == pytest.approx(4 / 6)
    assert result.kappa == pytest.approx(cohen_kappa_score([x for x, _ in kept], [y for _, y in kept]))


def test_agreement_edge_cases():
    empty = grader_agreement([None, True], [False, None])
    assert empty.n == 0 and empty.n_skipped == 2 and math.isnan(empty.raw) and math.isnan(empty.kappa)
    constant = grader_agreement([True, True], [True, True])
    assert constant.raw == 1.0 and math.isnan(constant.kappa)
    assert grader_agreement([float("nan"), 1], [True, 0]).n == 1
    with pytest.raises(CalibtuneError, match="2 verdicts against 1"):
        grader_agreement([True, False], [True])


def test_format_agreement():
    result = grader_agreement([True, False, True], [True, False, False])
    text = format_agreement(result, "exact", "judge:m")
    assert "exact vs judge:m: 3 compared, 0 skipped, agreement 0.667" in text
    assert "exact correct" in text and "judge:m incorrect" in text
    markdown = format_agreement(result, "exact", "judge:m", markdown=True)
    assert "| exact correct | 1 | 1 |" in markdown and "| exact incorrect | 0 | 1 |" in markdown
    assert "n/a" in format_agreement(grader_agreement([None], [None]), "a", "b")
