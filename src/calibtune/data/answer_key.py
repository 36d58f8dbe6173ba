"""Turn a user file's ``answer`` (index, letter or option text) into the gold index."""

from __future__ import annotations

import string
from collections.abc import Sequence

from calibtune.data.errors import show

LETTERS = string.ascii_uppercase


class AnswerError(ValueError):
    """The answer cannot be read as one of the options; the message says why."""


def letter(index: int) -> str:
    """The letter of option ``index`` (0 -> "A")."""
    return LETTERS[index] if 0 <= index < len(LETTERS) else f"#{index}"


def _forms(count: int) -> str:
    """The valid ways to name one of ``count`` options, for messages."""
    return f"0-{count - 1}, A-{letter(count - 1)} or the text of an option"


def _checked(index: int, count: int, given: object) -> int:
    """``index`` when it names one of ``count`` options; else raise ``AnswerError``."""
    if not 0 <= index < count:
        raise AnswerError(
            f"answer {show(given)} is out of range: {count} options, use {_forms(count)}"
        )
    return index


def resolve_answer(answer: object, choices: Sequence[str]) -> int:
    """The gold index that ``answer`` names among ``choices``.

    ``answer`` is an int index (0-based), a string of digits (the same index, as CSV
    files write it), one upper-case letter "A".."Z", or the exact text of one option
    (surrounding spaces ignored). A string that reads two ways naming different options
    (option texts "1", "2", ... with answer "2") is refused as ambiguous.
    """
    count = len(choices)
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise AnswerError(f"answer {show(answer)} must be {_forms(count)}")
    if isinstance(answer, int):
        return _checked(answer, count, answer)
    text = answer.strip()
    if not text:
        raise AnswerError("answer is empty")
    matches = [i for i, choice in enumerate(choices) if choice.strip() == text]
    if len(matches) > 1:
        raise AnswerError(
            f"answer {show(text)} is the text of several options "
            f"({', '.join(letter(i) for i in matches)}); give its letter instead"
        )
    positional: int | None = None
    if len(text) == 1 and text in LETTERS:
        positional = LETTERS.index(text)
    elif text.isascii() and text.isdigit():
        positional = int(text)
    if matches:
        if positional is not None and positional < count and positional != matches[0]:
            raise AnswerError(
                f"answer {show(text)} is ambiguous: it is the text of option "
                f"{letter(matches[0])} but also names option {letter(positional)}; "
                "write it another way (index, letter or text)"
            )
        return matches[0]
    if positional is None:
        raise AnswerError(f"answer {show(text)} is not {_forms(count)}")
    return _checked(positional, count, text)
