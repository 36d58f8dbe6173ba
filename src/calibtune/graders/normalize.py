"""Text normalisation for open-ended answers, and pulling the final number out of a reply.

``normalize_answer`` follows the SQuAD / TriviaQA evaluation scripts: Unicode NFKD with
accents stripped, lower case, punctuation removed, the articles "a", "an" and "the"
removed, white space collapsed. One difference: hyphens, dashes and slashes separate
words instead of vanishing ("rock-and-roll" becomes "rock and roll", not
"rockandroll"); every other punctuation mark is deleted ("U.S." becomes "us").
"""

from __future__ import annotations

import math
import re
import string
import unicodedata

_SEPARATORS = frozenset("-/\u2010\u2011\u2012\u2013\u2014\u2015\u2212")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _strip_accents(text: str) -> str:
    """NFKD-decompose and drop the combining marks ("é" -> "e", "ﬁ" -> "fi")."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _is_punctuation(char: str) -> bool:
    """ASCII punctuation and symbols (``string.punctuation``) or any Unicode punctuation."""
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def _remove_punctuation(text: str) -> str:
    """Delete punctuation; hyphens, dashes and slashes become spaces."""
    return "".join(" " if c in _SEPARATORS else "" if _is_punctuation(c) else c for c in text)


def normalize_answer(text: str) -> str:
    """The comparable form of an answer: no accents, case, punctuation, articles or extra white space."""
    text = _strip_accents(text).lower()
    text = _remove_punctuation(text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


_NUMBER = re.compile(
    r"""
    (?<![\w.])                                  # not inside a word or another number
    (?P<sign>[-+\u2212])?\s?\$?\s?
    (?:
        (?P<whole>\d+)\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)        # mixed number: 1 1/2
      | (?P<num>\d+)\s*/\s*(?P<den>\d+)                           # fraction: 3/4
      | (?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)   # 1,234.50  42  .5  1e6
    )
    (?!\d)
    """,
    re.VERBOSE,
)
_GSM8K_MARK = "####"
_ANSWER_MARK = re.compile(r"answer\s*(?:is|:|=)|\\boxed\{", re.IGNORECASE)


def _value(match: re.Match[str]) -> float | None:
    """The number one ``_NUMBER`` match stands for, or None for a zero denominator or overflow."""
    sign = -1.0 if match["sign"] in ("-", "\u2212") else 1.0
    if match["whole"] is not None:
        den = int(match["mden"])
        value = int(match["whole"]) + int(match["mnum"]) / den if den else None
    elif match["num"] is not None:
        den = int(match["den"])
        value = int(match["num"]) / den if den else None
    else:
        value = float(match["dec"].replace(",", ""))
    if value is None or not math.isfinite(value):
        return None
    return sign * value


def _numbers(text: str) -> list[float]:
    """Every number in the text, in order."""
    values = (_value(m) for m in _NUMBER.finditer(text))
    return [v for v in values if v is not None]


def parse_number(text: str) -> float | None:
    """The final numeric answer in a reply, or None when it holds no number.

    In order of preference: the first number after the last GSM8K ``####`` mark; the
    first number after the last "answer is" / "answer:" / ``\\boxed{``; else the last
    number in the text. Understands signs, ``$``, thousands commas, decimals, fractions
    ("3/4", "1 1/2") and exponents; "50%" reads as 50.
    """
    if not text:
        return None
    if _GSM8K_MARK in text:
        after = _numbers(text.rsplit(_GSM8K_MARK, 1)[1])
        if after:
            return after[0]
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        after = _numbers(text[marks[-1].end():])
        if after:
            return after[0]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None
