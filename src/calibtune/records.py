"""The records that flow between stages: questions in, answers out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Question:
    """One question of a question set.

    Multiple choice questions carry ``choices`` and the index of the right one in
    ``gold``; open-ended questions carry ``references`` (the answer and its aliases)
    and leave ``choices`` empty and ``gold`` as None.

    ``id`` is unique across every set (it starts with the dataset name), ``text`` is
    the question as a reader sees it (context included, no "Question:" prefix).
    """

    id: str
    dataset: str
    split: str
    text: str
    choices: tuple[str, ...] = ()
    gold: int | None = None
    subject: str = ""
    references: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_multiple_choice(self) -> bool:
        """True when the question has options to choose from."""
        return len(self.choices) > 0

    def reference_answers(self) -> tuple[str, ...]:
        """The answers that count as right: the references, or else the gold option's text (empty if neither)."""
        if self.references:
            return self.references
        if self.is_multiple_choice and self.gold is not None:
            return (self.choices[self.gold],)
        return ()

    def content(self) -> dict[str, Any]:
        """Every field, as plain data: what a cache key that depends on this question hashes."""
        return asdict(self)

    def seen(self, with_choices: bool) -> dict[str, Any]:
        """What an answering model is shown of the question (the text, and the options when it chooses
        among them); its gold answer and references are not, so they are left out."""
        shown: dict[str, Any] = {"id": self.id, "text": self.text}
        if with_choices:
            shown["choices"] = list(self.choices)
        return shown


@dataclass(frozen=True)
class Answer:
    """A model's answer to one question, graded once ``correct`` is set.

    For multiple choice by cloze scoring, ``choice`` is the chosen option's index,
    ``text`` its text, and ``option_logprob_sum`` / ``option_logprob_mean`` hold every
    option's summed and per-token log-likelihood. ``logprob`` is the chosen answer's
    summed log-likelihood.
    """

    question_id: str
    model: str
    text: str
    logprob: float
    choice: int | None = None
    option_logprob_sum: tuple[float, ...] = ()
    option_logprob_mean: tuple[float, ...] = ()
    correct: bool | None = None
    grader: str = ""
    grader_output: str = ""
    token_logprobs: tuple[float, ...] = ()

    @property
    def label(self) -> int:
        """1 when graded correct, else 0: an answer the grader left undecided (``correct`` None) was
        not shown to be right, so it counts as wrong wherever a label is needed."""
        return int(self.correct is True)

    def content(self) -> dict[str, Any]:
        """Every field, as plain data (for cache keys)."""
        return asdict(self)


def answers_to_table(answers: list[Answer]):
    """Answers as a pandas DataFrame, one row each (tuples become lists)."""
    import dataclasses

    import pandas as pd

    rows = [dataclasses.asdict(a) for a in answers]
    return pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(Answer)])


def answers_from_table(table) -> list[Answer]:
    """The inverse of ``answers_to_table`` (tables written before ``token_logprobs`` existed read too)."""
    import pandas as pd

    out = []
    for row in table.to_dict(orient="records"):
        row["option_logprob_sum"] = tuple(float(x) for x in row["option_logprob_sum"])
        row["option_logprob_mean"] = tuple(float(x) for x in row["option_logprob_mean"])
        tokens = row.get("token_logprobs")
        row["token_logprobs"] = () if tokens is None or tokens is pd.NA else tuple(float(x) for x in tokens)
        row["choice"] = None if row["choice"] is None or row["choice"] != row["choice"] else int(row["choice"])
        correct = row["correct"]
        row["correct"] = None if correct is None or correct is pd.NA or correct != correct else bool(correct)
        out.append(Answer(**row))
    return out
