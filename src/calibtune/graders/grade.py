"""Grading answers: the one entry point, whatever the grader.

A multiple-choice answer (one that chose an option) is right when its option is the
gold one. Any other answer is graded against its question's reference answers by the
grader given: a rule-based one (``calibtune.graders.match``), or a judge, which grades
the whole batch through the judgement cache. A verdict the grader could not reach is
kept as undecided (``correct`` None): agreement statistics leave it out, and a study
counts it as wrong (``Answer.label``) and says how many there were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from calibtune.errors import CalibtuneError
from calibtune.graders.match import get_grader
from calibtune.graders.types import Grade, GradeItem, Grader
from calibtune.records import Answer, Question

CHOICE_GRADER = "choice_match"


def _choice_grade(answer: Answer, question: Question) -> Grade:
    correct = answer.choice is not None and answer.choice == question.gold
    return Grade(correct, CHOICE_GRADER, f"chose {answer.choice}, gold {question.gold}")


def grade_answers(answers: Sequence[Answer], questions: Sequence[Question], grader: str | Grader | None = None,
                  cache=None, progress: Callable[[int], None] | None = None) -> list[Answer]:
    """Grade each answer against its question; fills ``correct``, ``grader`` and ``grader_output``.

    ``grader`` (a registered name or a grader object) grades the answers that did not choose
    an option; it may be None when every answer did. Judges grade their share at once through
    ``grade_batch``, asking only what ``cache`` (a ``JudgementCache``) lacks; ``progress(n)``
    is called as answers are graded.
    """
    chosen = get_grader(grader) if isinstance(grader, str) else grader
    by_id = {q.id: q for q in questions}
    pairs = []
    for answer in answers:
        question = by_id.get(answer.question_id)
        if question is None:
            raise CalibtuneError(f"answer to unknown question '{answer.question_id}': it is in no question set given")
        pairs.append((answer, question))
    grades: list[Grade | None] = [_choice_grade(a, q) if a.choice is not None else None for a, q in pairs]
    todo = [i for i, g in enumerate(grades) if g is None]
    if todo:
        if chosen is None:
            raise CalibtuneError("open-ended answers need a grader (exact, contains, numeric or a judge)")
        items = [GradeItem(pairs[i][1].text, pairs[i][1].reference_answers(), pairs[i][0].text) for i in todo]
        batch = getattr(chosen, "grade_batch", None)
        if callable(batch):
            results = batch(items, cache=cache, progress=progress)
        else:
            results = []
            for item in items:
                results.append(chosen.grade(item.answer, item.references, item.question))
                if progress is not None:
                    progress(1)
        for i, grade in zip(todo, results, strict=True):
            grades[i] = grade
    return [dataclasses.replace(a, correct=g.correct, grader=g.grader, grader_output=g.raw)
            for (a, _), g in zip(pairs, grades, strict=True)]


def count_undecided(answers: Sequence[Answer]) -> int:
    """How many answers the grader could not decide."""
    return sum(a.correct is None for a in answers)
