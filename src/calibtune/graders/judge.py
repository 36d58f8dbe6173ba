"""Language-model judges: a model is shown the question, the references and an answer, and says if it is right.

Two judges share one prompt (``JUDGE_PROMPT``) and one reply parser (``parse_judgement``):
``LocalJudge`` wraps any ``generate(prompts) -> replies`` callable, and ``HttpJudge``
asks an OpenAI-compatible chat-completions endpoint using only the standard library.
``judge_all`` judges a batch through a ``JudgementCache``, an append-only JSONL file
written (and fsynced) one judgement at a time, so a run that stops halfway resumes
without asking again.

The API key of ``HttpJudge`` is read from an environment variable at each request and
is kept nowhere: not in the object, its repr, the cache, logs or error messages.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibtune.errors import CalibtuneError
from calibtune.graders.match import Grade, GradeItem
from calibtune.graders.normalize import normalize_answer

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

_PROMPT_SHA = hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:12]


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


class Judge:
    """The base of every judge: subclasses give ``name``, ``batch_size``, ``identity()`` and ``reply()``."""

    name: str
    batch_size: int

    def identity(self) -> dict[str, Any]:
        """What makes two judgements comparable (kind, model, endpoint, prompt); no secrets."""
        raise NotImplementedError

    def reply(self, prompts: list[str]) -> list[str]:
        """The judge model's replies to the prompts, in order."""
        raise NotImplementedError

    def grade(self, answer_text: str, references: Sequence[str], question: str = "") -> Grade:
        """Judge one answer (no cache)."""
        return judge_all(self, [GradeItem(question, tuple(references), answer_text)])[0]

    def grade_batch(self, items: Sequence[GradeItem], cache: JudgementCache | None = None,
                    progress: Callable[[int], None] | None = None) -> list[Grade]:
        """Judge many answers, asking only for those not in ``cache``."""
        return judge_all(self, items, cache, progress)


def _judge_name(model: str) -> str:
    """``judge:<model>``, the grader name of a judge."""
    return model if model.startswith("judge:") else f"judge:{model}"


@dataclass(frozen=True)
class LocalJudge(Judge):
    """A judge that replies through ``generate(prompts) -> replies`` (e.g. a local model's greedy generation).

    ``name`` is the judge model's name; it is stored as ``judge:<name>``.
    """

    generate: Callable[[list[str]], list[str]] = field(compare=False)
    name: str
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _judge_name(self.name))
        if self.batch_size < 1:
            raise CalibtuneError(f"judge batch size must be at least 1, got {self.batch_size}")

    @property
    def model(self) -> str:
        """The judge model's name, without the ``judge:`` prefix."""
        return self.name.removeprefix("judge:")

    def identity(self) -> dict[str, Any]:
        """Kind, model, prompt version and hash."""
        return {"kind": "local", "model": self.model, "base_url": "", "prompt_version": JUDGE_PROMPT_VERSION,
                "prompt_sha": _PROMPT_SHA}

    def reply(self, prompts: list[str]) -> list[str]:
        """Call ``generate``; it must return one string per prompt."""
        replies = list(self.generate(list(prompts)))
        if len(replies) != len(prompts):
            raise CalibtuneError(f"judge {self.name} returned {len(replies)} replies to {len(prompts)} prompts")
        return [str(r) for r in replies]


def redact_url(url: str) -> str:
    """The URL without user name, password, query string or fragment (where keys may hide)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unreadable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class _Retryable(Exception):
    """A failure worth another try (5xx, 429, timeout, lost connection, malformed JSON)."""

    def __init__(self, message: str, wait: float = 0.0) -> None:
        super().__init__(message)
        self.wait = wait


def _excerpt(body: bytes, limit: int = 200) -> str:
    """A one-line excerpt of an error body: the JSON ``error.message`` if there is one."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            error = data.get("error", data)
            text = str(error.get("message", error) if isinstance(error, dict) else error)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _retry_after(headers: Any) -> float:
    """Seconds asked for by a Retry-After header (capped at a minute), else 0."""
    try:
        return min(float(headers.get("Retry-After", 0) or 0), 60.0)
    except (TypeError, ValueError, AttributeError):
        return 0.0


def _content(raw: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions response; malformed -> ``_Retryable``."""
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _Retryable(f"malformed response ({type(exc).__name__}): {_excerpt(raw, 100)!r}") from None
    return "" if content is None else str(content)


@dataclass(frozen=True)
class HttpJudge(Judge):
    """A judge behind an OpenAI-compatible endpoint: POST ``{base_url}/chat/completions``, temperature 0.

    The key comes from the environment variable ``api_key_env`` at each request and is
    sent as ``Authorization: Bearer``; ``api_key_env=None`` sends no key (local servers).
    HTTP 5xx, 429, timeouts, connection errors and malformed JSON are retried up to
    ``max_retries`` times, waiting ``backoff * 2**attempt`` seconds (longer if the server
    says Retry-After); any other HTTP error fails at once.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 30
    max_retries: int = 5
    backoff: float = 1.0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.model:
            raise CalibtuneError("the judge model name is empty: give the endpoint's model name")
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https"):
            raise CalibtuneError(f"judge base URL '{redact_url(self.base_url)}' must start with http:// or https://")
        if self.max_retries < 0 or self.timeout <= 0 or self.backoff < 0:
            raise CalibtuneError("judge max_retries and backoff must be >= 0 and timeout > 0")

    def __repr__(self) -> str:
        return (f"HttpJudge(base_url={redact_url(self.base_url)!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, timeout={self.timeout}, max_retries={self.max_retries})")

    @property
    def name(self) -> str:  # type: ignore[override]
        """``judge:<model>``."""
        return _judge_name(self.model)

    @property
    def url(self) -> str:
        """The chat-completions URL (as used for requests)."""
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def endpoint(self) -> str:
        """The chat-completions URL without credentials, for messages and records."""
        return redact_url(self.url)

    def identity(self) -> dict[str, Any]:
        """Kind, model, endpoint (redacted), prompt version and hash."""
        return {"kind": "http", "model": self.model, "base_url": redact_url(self.base_url.rstrip("/")),
                "prompt_version": JUDGE_PROMPT_VERSION, "prompt_sha": _PROMPT_SHA}

    def _key(self) -> str | None:
        """The API key from the environment, or None when none is wanted."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise CalibtuneError(f"the judge endpoint {self.endpoint} needs an API key: set the environment "
                                 f"variable {self.api_key_env} (or use api_key_env=None for a server without keys)")
        return key

    def _request(self, prompt: str, key: str | None) -> str:
        """One POST; returns the reply text, raises ``_Retryable`` or ``CalibtuneError``."""
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            try:
                excerpt = _excerpt(exc.read() or b"") if exc.fp is not None else ""
            except OSError:
                excerpt = ""
            message = f"HTTP {exc.code}" + (f": {excerpt}" if excerpt else "")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(message, _retry_after(exc.headers)) from None
            raise CalibtuneError(f"judge endpoint {self.endpoint} answered {message}") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"{type(reason).__name__}: {reason}".rstrip(": ")) from None
        return _content(raw)

    def complete(self, prompt: str) -> str:
        """The endpoint's reply to one prompt, retried as documented; failures are CalibtuneError."""
        key = self._key()
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._request(prompt, key)
            except _Retryable as exc:
                last = _redact(str(exc), key)
                if attempt < self.max_retries:
                    time.sleep(max(self.backoff * 2 ** attempt, exc.wait))
            except CalibtuneError as exc:
                raise CalibtuneError(_redact(str(exc), key)) from None
        raise CalibtuneError(f"judge endpoint {self.endpoint} failed after {self.max_retries + 1} attempts; "
                             f"last error: {last}")

    def reply(self, prompts: list[str]) -> list[str]:
        """One request per prompt, in order."""
        return [self.complete(p) for p in prompts]


def _redact(text: str, key: str | None) -> str:
    """The text with the key (should a server echo it) replaced by ``***``."""
    return text.replace(key, "***") if key else text


# ----------------------------------------------------------------------------- the cache


def judgement_key(identity: dict[str, Any], item: GradeItem) -> str:
    """sha256 of the judge's identity, the question, the sorted references and the answer."""
    payload = json.dumps({"judge": identity, "question": item.question, "references": sorted(item.references),
                          "answer": item.answer}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class JudgementCache:
    """Judgements on disk: an append-only JSONL file, one line per judgement, flushed and fsynced at once.

    Lines that do not parse (the fragment a crash left mid-write) are ignored on
    reading, and a fragment at the end is closed off with a newline before the next
    append. Unparseable replies are cached too (``correct`` null), so they are not
    asked again. Use ``JudgementCache.default()`` for ``<cache_dir>/judgements.jsonl``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._grades: dict[str, Grade] | None = None
        self.ignored_lines = 0

    def __repr__(self) -> str:
        return f"JudgementCache({str(self.path)!r})"

    @classmethod
    def default(cls) -> JudgementCache:
        """The cache at ``<calibtune cache dir>/judgements.jsonl``."""
        from calibtune.models import cache_dir

        return cls(cache_dir() / "judgements.jsonl")

    def _load(self) -> dict[str, Grade]:
        """Read the file once; later lookups use memory."""
        if self._grades is None:
            self._grades = {}
            if self.path.is_file():
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    self._read_line(line)
        return self._grades

    def _read_line(self, line: str) -> None:
        """Keep one record, or count the line as ignored."""
        if not line.strip():
            return
        try:
            row = json.loads(line)
            grade = Grade(correct=row["correct"], grader=str(row["grader"]), raw=str(row["raw"]))
            key = str(row["key"])
        except (ValueError, KeyError, TypeError):
            self.ignored_lines += 1
            return
        if grade.correct is not None and not isinstance(grade.correct, bool):
            self.ignored_lines += 1
            return
        assert self._grades is not None
        self._grades[key] = grade

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: str) -> bool:
        return key in self._load()

    def get(self, key: str) -> Grade | None:
        """The cached judgement for a key, if any."""
        return self._load().get(key)

    def put(self, key: str, grade: Grade, item: GradeItem | None = None,
            identity: dict[str, Any] | None = None) -> None:
        """Append one judgement (with the item and judge identity, for reading later) and fsync it."""
        grades = self._load()
        row: dict[str, Any] = {"key": key, "correct": grade.correct, "grader": grade.grader, "raw": grade.raw}
        if identity is not None:
            row["judge"] = identity
        if item is not None:
            row.update(question=item.question, references=list(item.references), answer=item.answer)
        line = json.dumps(row, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as handle:
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise CalibtuneError(f"cannot write the judgement cache {self.path}: {exc.strerror or exc}") from exc
        grades[key] = grade


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
