"""A judge behind an OpenAI-compatible chat-completions endpoint, using only the standard library.

The API key is read from an environment variable at each request and is kept nowhere:
not in the object, its repr, the judgement cache, logs or error messages.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from calibtune.errors import CalibtuneError
from calibtune.graders.judge import JUDGE_PROMPT_VERSION, PROMPT_SHA, Judge, judge_name


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
        return judge_name(self.model)

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
                "prompt_version": JUDGE_PROMPT_VERSION, "prompt_sha": PROMPT_SHA}

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
