"""The verbalized-confidence baseline: ask the model how likely its own answer is correct, and read the reply.

``parse_confidence`` turns a free-text reply into a probability in [0, 1] or None. The
caller keeps None as "unparsed" and reports how many there were; it must never silently
substitute 0.5.

Rules, in order:

* An echoed range ("(0 to 1)", "between 0 and 1", "from 0 to 100") is ignored; a
  "1 to 10" / "0 to 10" scale makes plain numbers count in tenths ("scale of 1 to 10: 7"
  is 0.7).
* Of several numbers, the first one after the word probability / confidence / likelihood
  / chance is taken, else the first in the reply. The chosen number alone decides:
  if it is out of range the result is None, the next number is not tried.
* "80%", "80 %", "80 percent" -> 0.8 (0 to 100, else None).
* "7/10", "8 out of 10" -> 0.7, 0.8 (numerator between 0 and the denominator, else None).
* A plain number in [0, 1] is the probability; in (1, 100] it is a percent ("80" -> 0.8);
  negative or above 100 -> None. "0,8" (decimal comma after a zero) reads as 0.8.
* Words without a number ("high", "low", "very likely", "certain") give None: any
  mapping of words to numbers would be arbitrary, so they count as unparsed.
* Empty text or text without a number gives None.
"""

from __future__ import annotations

import re

VERBALIZED_PROMPT = """\
Question: {question}
Proposed answer: {answer}

How likely is it that the proposed answer is correct? Reply with a single number between 0 and 1.
Probability that the answer is correct (0 to 1):"""


def verbalized_prompt(question: str, answer: str, template: str = VERBALIZED_PROMPT) -> str:
    """The prompt asking for the probability that ``answer`` to ``question`` is correct."""
    return template.format(question=question.strip(), answer=answer.strip())


_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_CANDIDATE = re.compile(
    rf"""
    (?<![\w.])(?P<sign>-)?
    (?:
        (?P<num>{_NUM})\s*(?:/|\bout\s+of\b)\s*(?P<den>{_NUM})
      | (?P<pct>{_NUM})\s*(?:%|\bper\s*cent\b|\bpercent(?:age)?\b)
      | (?P<plain>{_NUM})
    )
    (?!\d)
    """,
    re.VERBOSE,
)
_RANGE = re.compile(r"\(?\b(?:between|from)?\s*[01](?:\.0+)?\s*(?:to|and|-|\u2013)\s*(?P<top>1|10|100)(?:\.0+)?\b\)?")
_KEYWORD = re.compile(r"\b(?:probability|confidence|likelihood|chance)\b")
_DECIMAL_COMMA = re.compile(r"(?<![\d,])0,(\d+)(?![\d,])")


def _scale_and_clean(text: str) -> tuple[str, float | None]:
    """Blank out echoed ranges; return the text and the 10-point scale's size if one was named."""
    scale = None
    for found in _RANGE.finditer(text):
        if found["top"] == "10":
            scale = 10.0
    return _RANGE.sub(" ", text), scale


def _candidate_value(match: re.Match[str], scale: float | None) -> float | None:
    """The probability one number stands for, or None when it is out of range."""
    if match["sign"]:
        return None
    if match["num"] is not None:
        num, den = float(match["num"]), float(match["den"])
        return num / den if den > 0 and 0 <= num <= den else None
    if match["pct"] is not None:
        value = float(match["pct"])
        return value / 100 if value <= 100 else None
    value = float(match["plain"])
    if scale is not None and value <= scale:
        return value / scale
    if value <= 1:
        return value
    return value / 100 if value <= 100 else None


def parse_confidence(reply: str | None) -> float | None:
    """The probability a verbalized-confidence reply states, in [0, 1], or None when it states none (see module)."""
    if not reply:
        return None
    text = reply.lower().replace("\u2212", "-")
    text = _DECIMAL_COMMA.sub(r"0.\1", text)
    text, scale = _scale_and_clean(text)
    candidates = list(_CANDIDATE.finditer(text))
    if not candidates:
        return None
    keyword = _KEYWORD.search(text)
    chosen = candidates[0]
    if keyword is not None:
        chosen = next((c for c in candidates if c.start() >= keyword.end()), candidates[0])
    return _candidate_value(chosen, scale)
