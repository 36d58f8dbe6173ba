"""The verbalized-confidence baseline: its prompt and the parser of real-looking replies."""

from __future__ import annotations

import pytest

from calibtune.verbalized import VERBALIZED_PROMPT, parse_confidence, verbalized_prompt

REPLIES = [
    ("0.8", 0.8),
    (" 0.95\n", 0.95),
    (".75", 0.75),
    ("80%", 0.8),
    ("80 %", 0.8),
    ("Probability: 0.9", 0.9),
    ("I'd say 70 percent", 0.7),
    ("About 65 per cent.", 0.65),
    ("7/10", 0.7),
    ("8 out of 10", 0.8),
    ("1", 1.0),
    ("0", 0.0),
    ("100%", 1.0),
    ("85", 0.85),  # a bare number above 1 is a percent
    ("Confidence: 95%.", 0.95),
    ("**0.9**", 0.9),
    ("\\boxed{0.65}", 0.65),
    ("p = 0.42", 0.42),
    ("I am 90% confident that this is right.", 0.9),
    ("The answer 1945 is correct. Probability: 0.85", 0.85),  # the number after "probability" wins
    ("Probability that the answer is correct (0 to 1): 0.35", 0.35),  # the echoed range is ignored
    ("between 0 and 1, I'd put it at 0.6", 0.6),
    ("On a scale of 1 to 10, I'd give it a 7.", 0.7),
    ("0.7-0.8", 0.7),  # a range: the first number
    ("Somewhere between 0.6 and 0.7.", 0.6),
    ("0,8", 0.8),  # decimal comma
    ("Sure! 0.9\n\nExplanation: the question has 2 parts and both match.", 0.9),
    ("My confidence is 0.55 because 3 sources agree.", 0.55),
    ("0/10", 0.0),
    ("-0.2", None),  # negative
    ("Probability: -5", None),
    ("150", None),  # above 100
    ("Confidence: 120%", None),
    ("3/2", None),  # more than the whole
    ("high", None),  # words are not mapped to numbers
    ("Low.", None),
    ("Very likely correct.", None),
    ("I cannot estimate that.", None),
    ("", None),
    ("   ", None),
    ("?!#@", None),
    ("The proposed answer is plausible but I'm unsure.", None),
]


@pytest.mark.parametrize("reply, expected", REPLIES)
def test_parse_confidence(reply, expected):
    value = parse_confidence(reply)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)
        assert 0.0 <= value <= 1.0


def test_there_are_many_cases():
    assert len(REPLIES) >= 25 and sum(e is None for _, e in REPLIES) >= 8


def test_none_reply():
    assert parse_confidence(None) is None


def test_prompt_asks_for_a_probability():
    prompt = verbalized_prompt("  What is the capital of France?\n", "Paris ")
    assert prompt.startswith("Question: What is the capital of France?\nProposed answer: Paris\n")
    assert prompt.endswith("Probability that the answer is correct (0 to 1):")
    assert "{question}" in VERBALIZED_PROMPT and "{answer}" in VERBALIZED_PROMPT
