"""Graders: decide whether an answer is correct."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from calibtune.records import Answer, Question


def grade_multiple_choice(answers: Sequence[Answer], questions: Sequence[Question]) -> list[Answer]:
    """Mark each answer correct when its chosen option is the gold one."""
    by_id = {q.id: q for q in questions}
    graded = []
    for answer in answers:
        question = by_id.get(answer.question_id)
        if question is None:
            raise KeyError(f"answer to unknown question {answer.question_id}")
        correct = answer.choice is not None and answer.choice == question.gold
        graded.append(dataclasses.replace(
            answer, correct=correct, grader="choice_match",
            grader_output=f"chose {answer.choice}, gold {question.gold}",
        ))
    return graded
