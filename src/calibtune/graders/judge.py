"""Language-model judges: a model is shown the question, the references and an answer, and says if it is right.

Every judge shares one prompt (``JUDGE_PROMPT``) and one reply parser (``parse_judgement``):
``LocalJudge`` wraps any ``generate(prompts) -> replies`` callable (a local model's greedy
replies), and ``HttpJudge`` (``calibtune.graders.http``) asks an OpenAI-compatible endpoint.
``judge_all`` judges a batch through a ``JudgementCache`` (``calibtune.graders.cache``), so a
run that stops halfway resumes without asking again.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from calibtune.errors import CalibtuneError
from calibtune.graders.normalize import normalize_answer
from calibtune.graders.types import Grade, GradeItem

if TYPE_CHECKING:
    from calibtune.graders.cache import JudgementCache

JUDGE_PROMPT_VERSION = 2  # 2: references listed once per normalised form, at most MAX_LISTED_REFERENCES
MAX_LISTED_REFERENCES = 10
JUDGE_PROMPT = """\
You are grading an answer to a question. Decide whether the proposed answer is correct, \
that is, whether it means the same as one of the reference answers. Ignore differences \
of wording, case, punctuation and extra detail that does not contradict the references.

Question: {question}

Reference answers (any one of them is correct):
{references}

Proposed answer: {answer}

Is the proposed answer correct? Reply with one word: yes or no."""

PROMPT_SHA = hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:12]


def judge_prompt(question: str, references: Sequence[str], answer: str) -> str:
    """The judge prompt for one item: references one per line, each normalised form once, the first
    ``MAX_LISTED_REFERENCES`` of them (TriviaQA lists 16 aliases on average and up to 230,
    mostly case and spelling variants that make the prompt long and tell a judge nothing)."""
    distinct: dict[str, str] = {}
    for ref in references:
        distinct.setdefault(normalize_answer(ref) or ref.strip(), ref.strip())
    listed = "\n".join(f"- {r}" for r in list(distinct.values())[:MAX_LISTED_REFERENCES]) or "- (none given)"
    return JUDGE_PROMPT.format(question=question.strip(), references=listed, answer=answer.strip())


# ----------------------------------------------------------------------------- reply parsing

_POSITIVE = frozenset({"yes", "correct", "true", "right", "accurate", "valid"})
_NEGATIVE = frozenset({"no", "incorrect", "false", "wrong", "inaccurate", "invalid"})
_NEGATED = re.compile(r"\b(?:is\s+not|isn['\u2019]?t|not)\s+(?:correct|right|true|accurate|valid)\b")
_UNSURE = re.compile(r"\b(?:not\s+(?:sure|certain)|unsure|no\s+idea|(?:cannot|can['\u2019]?t)\s+"
                     r"(?:tell|determine|decide|say)|unclear|uncertain|unknown|partially)\b")
_KEY_VALUE = re.compile(r"[\"']?\b(?:is_correct|correct|verdict|judgement|judgment|grade|answer|result)\b[\"']?"
                        r"\s*[:=]\s*[\"']?([a-z]+)")
_VERDICT_PHRASE = re.compile(r"\banswer\s+is\s+(correct|incorrect|right|wrong|true|false)\b")


def _word_verdict(word: str) -> bool | None:
    """True for a positive verdict word, False for a negative one, None otherwise."""
    if word in _POSITIVE:
        return True
    if word in _NEGATIVE:
        return False
    return None


def _json_verdict(text: str) -> bool | None:
    """The verdict of a JSON object reply such as ``{"correct": true}``, if there is one."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start:end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("correct", "is_correct", "verdict", "judgement", "judgment", "grade", "answer", "result"):
        value = data.get(key)
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _word_verdict(value.strip().lower())
    return None


def parse_judgement(reply: str) -> bool | None:
    """Read a judge's reply: True (correct), False (incorrect) or None (unparseable).

    Understands yes/no, correct/incorrect, true/false, right/wrong in any case and with
    markdown or punctuation around them ("**Correct.**"), negations ("not correct"),
    JSON or JSON-ish objects (``{"correct": false}``, ``verdict: yes``) and phrases like
    "the answer is wrong". A reply that hedges ("not sure") or mixes verdicts is None.
    """
    text = (reply or "").strip().lower()
    if not text:
        return None
    verdict = _json_verdict(text)
    if verdict is not None:
        return verdict
    text = _NEGATED.sub("incorrect", text)
    for pattern in (_KEY_VALUE, _VERDICT_PHRASE):
        found = pattern.search(text)
        if found and _word_verdict(found.group(1)) is not None:
            return _word_verdict(found.group(1))
    words = re.findall(r"[a-z]+", text)
    if words and words[0] == "not":
        return False
    if words and _word_verdict(words[0]) is not None:
        return _word_verdict(words[0])
    if _UNSURE.search(text):
        return None
    verdicts = {_word_verdict(w) for w in words} - {None}
    return verdicts.pop() if len(verdicts) == 1 else None


# ----------------------------------------------------------------------------- judges


class Judge(ABC):
    """The base of every judge: subclasses give ``name``, ``batch_size``, ``identity()`` and ``reply()``."""

    name: str
    batch_size: int

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes two judgements comparable (kind, model, endpoint, prompt); no secrets."""

    @abstractmethod
    def reply(self, prompts: list[str]) -> list[str]:
        """The judge model's replies to the prompts, in order."""

    def grade(self, answer_text: str, references: Sequence[str], question: str = "") -> Grade:
        """Judge one answer (no cache)."""
        return judge_all(self, [GradeItem(question, tuple(references), answer_text)])[0]

    def grade_batch(self, items: Sequence[GradeItem], cache: JudgementCache | None = None,
                    progress: Callable[[int], None] | None = None) -> list[Grade]:
        """Judge many answers, asking only for those not in ``cache``."""
        return judge_all(self, items, cache, progress)


def judge_name(model: str) -> str:
    """``judge:<model>``, the grader name of a judge."""
    return model if model.startswith("judge:") else f"judge:{model}"


@dataclass(frozen=True)
class LocalJudge(Judge):
    """A judge that replies through ``generate(prompts) -> replies`` (e.g. a local model's greedy generation).

    ``name`` is the judge model's name; it is stored as ``judge:<name>``. ``fingerprint``,
    ``dtype`` and ``max_new_tokens`` say which weights replied, at which precision and with
    how many tokens: they are part of the identity, so a changed judge is asked again.
    """

    generate: Callable[[list[str]], list[str]] = field(compare=False)
    name: str
    batch_size: int = 16
    fingerprint: str = ""
    dtype: str = ""
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", judge_name(self.name))
        if self.batch_size < 1:
            raise CalibtuneError(f"judge batch size must be at least 1, got {self.batch_size}")

    @property
    def model(self) -> str:
        """The judge model's name, without the ``judge:`` prefix."""
        return self.name.removeprefix("judge:")

    def identity(self) -> dict[str, Any]:
        """Kind, model (name, weights' fingerprint, dtype, token limit), prompt version and hash."""
        return {"kind": "local", "model": self.model, "fingerprint": self.fingerprint, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "base_url": "", "prompt_version": JUDGE_PROMPT_VERSION,
                "prompt_sha": PROMPT_SHA}

    def reply(self, prompts: list[str]) -> list[str]:
        """Call ``generate``; it must return one string per prompt."""
        replies = list(self.generate(list(prompts)))
        if len(replies) != len(prompts):
            raise CalibtuneError(f"judge {self.name} returned {len(replies)} replies to {len(prompts)} prompts")
        return [str(r) for r in replies]


def judgement_key(identity: dict[str, Any], item: GradeItem) -> str:
    """sha256 of the judge's identity, the question, the sorted references and the answer."""
    payload = json.dumps({"judge": identity, "question": item.question, "references": sorted(item.references),
                          "answer": item.answer}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()



def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def judge_all(judge: Judge, items: Sequence[GradeItem], cache: JudgementCache | None = None,
              progress: Callable[[int], None] | None = None) -> list[Grade]:
    """Judge every item, asking the judge only for those not in the cache; each verdict is cached at once.

    Identical items are asked once. ``progress(n)`` is called with the number of items
    settled (cached ones first, then each batch as it is judged).
    """
    identity = judge.identity()
    keys = [judgement_key(identity, item) for item in items]
    counts = Counter(keys)
    done: dict[str, Grade] = {}
    todo: dict[str, GradeItem] = {}
    for key, item in zip(keys, items):
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            done[key] = cached
        elif key not in todo:
            todo[key] = item
    settled = len(items) - sum(counts[k] for k in todo)
    if progress is not None and settled:
        progress(settled)
    for batch in _chunks(list(todo.items()), max(1, judge.batch_size)):
        replies = judge.reply([judge_prompt(i.question, i.references, i.answer) for _, i in batch])
        for (key, item), reply in zip(batch, replies, strict=True):
            grade = Grade(correct=parse_judgement(reply), grader=judge.name, raw=reply)
            if cache is not None:
                cache.put(key, grade, item, identity)
            done[key] = grade
        if progress is not None:
            progress(sum(counts[k] for k, _ in batch))
    return [done[key] for key in keys]
