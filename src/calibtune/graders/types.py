"""The types every grader shares: a verdict, what a grader sees, and the grader protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Grade:
    """One grader's verdict: ``correct`` is None when it could not decide; ``raw`` says why."""

    correct: bool | None
    grader: str
    raw: str


@dataclass(frozen=True)
class GradeItem:
    """What a grader sees: the question's text, its reference answers, the proposed answer."""

    question: str
    references: tuple[str, ...]
    answer: str


@runtime_checkable
class Grader(Protocol):
    """Anything with a name that grades one answer against reference answers."""

    name: str

    def grade(self, answer_text: str, references: Sequence[str], question: str = "") -> Grade:
        """Decide whether ``answer_text`` is right given the references (and the question, for judges)."""
        ...
