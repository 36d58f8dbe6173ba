"""Rule-based graders for open-ended answers.

Every grader is a small frozen dataclass with a ``name`` and a method
``grade(answer_text, references, question="") -> Grade``. Rule-based graders ignore
the question; language-model judges (``calibtune.graders.judge``) use it and also offer
``grade_batch`` so that ``calibtune.graders.grade.grade_answers`` can judge many answers
at once, with a cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from calibtune.errors import CalibtuneError
from calibtune.graders.normalize import normalize_answer, parse_number
from calibtune.graders.types import Grade, Grader

NUMERIC_REL_TOL = 1e-6
NUMERIC_ABS_TOL = 1e-9


def _no_references(name: str) -> Grade:
    """The verdict for a question without reference answers: undecided."""
    return Grade(correct=None, grader=name, raw="no reference answers")


@dataclass(frozen=True)
class ExactMatch:
    """Correct when the normalised answer equals a normalised reference (any alias)."""

    name: str = "exact"

    def grade(self, answer_text: str, references: Sequence[str], question: str = "") -> Grade:
        """Compare ``normalize_answer`` forms; ``raw`` names the alias that matched."""
        if not references:
            return _no_references(self.name)
        answer = normalize_answer(answer_text)
        for reference in references:
            if answer and answer == normalize_answer(reference):
                return Grade(correct=True, grader=self.name, raw=f"matched {reference!r}")
        return Grade(correct=False, grader=self.name, raw=f"{answer!r} matches no reference")


@dataclass(frozen=True)
class ContainsMatch:
    """Correct when a normalised reference appears, as whole words, inside the normalised answer.

    Only this direction counts: "Paris, France" is right for the reference "Paris", but
    "John" is not right for the reference "John Kennedy" (an answer contained in a
    reference would reward vague answers). "Parisian" does not contain "Paris" as a word.
    References that normalise to nothing (e.g. "The") are skipped.
    """

    name: str = "contains"

    def grade(self, answer_text: str, references: Sequence[str], question: str = "") -> Grade:
        """Search each normalised reference in the normalised answer, word-aligned."""
        if not references:
            return _no_references(self.name)
        padded = f" {normalize_answer(answer_text)} "
        for reference in references:
            alias = normalize_answer(reference)
            if alias and f" {alias} " in padded:
                return Grade(correct=True, grader=self.name, raw=f"contains {reference!r}")
        return Grade(correct=False, grader=self.name, raw=f"{padded.strip()!r} contains no reference")


@dataclass(frozen=True)
class NumericMatch:
    """Correct when the answer's final number equals a reference's number (rel. 1e-6, abs. 1e-9).

    An answer without a number is wrong; references without any number leave it undecided.
    """

    name: str = "numeric"
    rel_tol: float = NUMERIC_REL_TOL
    abs_tol: float = NUMERIC_ABS_TOL

    def grade(self, answer_text: str, references: Sequence[str], question: str = "") -> Grade:
        """Compare ``parse_number`` of the answer with that of each reference."""
        targets = [(r, parse_number(r)) for r in references]
        targets = [(r, v) for r, v in targets if v is not None]
        if not targets:
            return Grade(correct=None, grader=self.name, raw="no numeric reference answer")
        value = parse_number(answer_text)
        if value is None:
            return Grade(correct=False, grader=self.name, raw="no number in the answer")
        for reference, target in targets:
            if math.isclose(value, target, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
                return Grade(correct=True, grader=self.name, raw=f"{value:g} equals {reference!r}")
        return Grade(correct=False, grader=self.name, raw=f"{value:g} equals no reference")


GRADERS: dict[str, Grader] = {g.name: g for g in (ExactMatch(), ContainsMatch(), NumericMatch())}


def get_grader(name: str) -> Grader:
    """The registered rule-based grader of that name; an unknown name is a CalibtuneError listing the known ones."""
    try:
        return GRADERS[name]
    except KeyError:
        known = ", ".join(sorted(GRADERS))
        raise CalibtuneError(f"unknown grader '{name}': known graders are {known}") from None
