"""The records that flow between stages: questions in, answers out."""

from __future__ import annotations

from dataclasses import dataclass, field


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
        row["correct"] = None if row["correct"] is None else bool(row["correct"])
        out.append(Answer(**row))
    return out
