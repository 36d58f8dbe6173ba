"""HttpJudge against a real, scriptable OpenAI-compatible server on 127.0.0.1: retries, failures, secrecy, resume."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from calibtune.errors import CalibtuneError
from calibtune.graders import Grade, GradeItem, HttpJudge, JudgementCache, judge_all, judgement_key

KEY = "sk-test-SECRET-0123456789"
KEY_ENV = "CALIBTUNE_TEST_JUDGE_KEY"


@dataclass
class Script:
    """What the server does per request: queued actions first, then ``default``; every request is recorded."""

    actions: deque = field(default_factory=deque)
    default: tuple = ("ok",)
    requests: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, record: dict) -> tuple:
        """Record a request and return its action."""
        with self.lock:
            self.requests.append(record)
            return self.actions.popleft() if self.actions else self.default

    def prompts(self) -> list[str]:
        """The user prompts received, in order."""
        return [r["body"]["messages"][0]["content"] for r in self.requests]


def _verdict(prompt: str) -> str:
    """The scripted judge: "Yes" for the answer "right", "No" otherwise."""
    return "Yes." if "Proposed answer: right" in prompt else "No"


class Handler(BaseHTTPRequestHandler):
    """Speaks just enough of POST /v1/chat/completions."""

    def do_POST(self) -> None:  # the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        action = self.server.script.take({"path": self.path, "auth": auth, "body": body})
        try:
            if action[0] == "sleep":  # the client gives up before this answer comes
                time.sleep(action[1])
                action = ("ok",)
            if action[0] == "ok":
                reply = {"choices": [{"message": {"role": "assistant",
                                                  "content": _verdict(body["messages"][0]["content"])}}]}
                self._send(200, json.dumps(reply).encode())
            elif action[0] == "status":  # the error message echoes the key, as careless servers do
                message = {"error": {"message": f"{action[2]} (got {auth})", "type": "test"}}
                self._send(action[1], json.dumps(message).encode(), {"Retry-After": "0"})
            elif action[0] == "malformed":
                self._send(200, action[1])
        except OSError:
            pass

    def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> Iterator[tuple[str, Script]]:
    """A scriptable chat-completions server; yields its base URL and script. The key is in the environment."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.script = Script()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/", httpd.script
    httpd.shutdown()
    httpd.server_close()


def _judge(base_url: str, **kwargs) -> HttpJudge:
    settings = dict(model="test-model", api_key_env=KEY_ENV, timeout=2.0, max_retries=3, backoff=0.01)
    return HttpJudge(base_url, **{**settings, **kwargs})


def _items(n: int) -> list[GradeItem]:
    return [GradeItem(question=f"Question {i}?", references=("right", f"alias {i}"),
                      answer="right" if i % 2 == 0 else "wrong") for i in range(n)]


def _expected(n: int) -> list[bool]:
    return [i % 2 == 0 for i in range(n)]


def _assert_no_key(cache: JudgementCache) -> None:
    assert KEY not in cache.path.read_text()


def test_normal_replies_carry_the_key_and_the_request(server, tmp_path):
    base_url, script = server
    judge = _judge(base_url)
    cache = JudgementCache(tmp_path / "judgements.jsonl")
    grades = judge_all(judge, _items(3), cache)
    assert [g.correct for g in grades] == _expected(3)
    assert [g.raw for g in grades] == ["Yes.", "No", "Yes."] and {g.grader for g in grades} == {"judge:test-model"}
    assert len(script.requests) == 3
    for request in script.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["auth"] == f"Bearer {KEY}"
        assert request["body"]["model"] == "test-model" and request["body"]["temperature"] == 0
    assert "Question 1?" in script.prompts()[1] and "- alias 1" in script.prompts()[1]
    _assert_no_key(cache)
    assert KEY not in repr(judge) and KEY not in str(judge.identity())
    rows = [json.loads(line) for line in cache.path.read_text().splitlines()]
    assert rows[0]["judge"]["model"] == "test-model" and rows[0]["answer"] == "right"


def test_http_500_is_retried_and_nothing_is_lost(server, tmp_path):
    base_url, script = server
    script.actions.extend([("status", 500, "overloaded"), ("status", 503, "busy")])
    grades = judge_all(_judge(base_url), _items(2), JudgementCache(tmp_path / "j.jsonl"))
    assert [g.correct for g in grades] == _expected(2)
    assert len(script.requests) == 4


def test_429_is_retried(server):
    base_url, script = server
    script.actions.append(("status", 429, "rate limited"))
    assert [g.correct for g in judge_all(_judge(base_url), _items(1))] == [True]
    assert len(script.requests) == 2


def test_timeout_is_retried(server):
    base_url, script = server
    script.actions.append(("sleep", 0.6))
    started = time.monotonic()
    grades = judge_all(_judge(base_url, timeout=0.2), _items(2))
    assert [g.correct for g in grades] == _expected(2)
    assert len(script.requests) == 3 and time.monotonic() - started < 2


@pytest.mark.parametrize("payload", [b"{not json", b'{"choices": []}', b'{"object": "chat.completion"}'])
def test_malformed_json_is_retried(server, payload):
    base_url, script = server
    script.actions.append(("malformed", payload))
    assert [g.correct for g in judge_all(_judge(base_url), _items(1))] == [True]
    assert len(script.requests) == 2


def test_http_401_fails_at_once_with_a_clear_error(server, tmp_path):
    base_url, script = server
    script.default = ("status", 401, "Incorrect API key provided")
    cache = JudgementCache(tmp_path / "j.jsonl")
    with pytest.raises(CalibtuneError) as caught:
        judge_all(_judge(base_url), _items(2), cache)
    message = str(caught.value)
    assert len(script.requests) == 1
    assert "HTTP 401" in message and f"{base_url}chat/completions" in message
    assert "Incorrect API key provided" in message and "\n" not in message
    assert KEY not in message and "***" in message  # the server echoed the key; it is blanked out
    assert not cache.path.exists()


def test_persistent_500_names_the_endpoint_and_keeps_what_was_judged(server, tmp_path):
    base_url, script = server
    script.actions.append(("ok",))
    script.default = ("status", 500, "internal error")
    cache = JudgementCache(tmp_path / "j.jsonl")
    with pytest.raises(CalibtuneError) as caught:
        judge_all(_judge(base_url, max_retries=2), _items(3), cache)
    message = str(caught.value)
    assert f"judge endpoint {base_url}chat/completions failed after 3 attempts" in message
    assert "HTTP 500: internal error" in message and KEY not in message
    assert len(script.requests) == 1 + 3
    reread = JudgementCache(cache.path)
    assert len(reread) == 1 and reread.get(judgement_key(_judge(base_url).identity(), _items(1)[0])).correct is True
    _assert_no_key(cache)


def test_resume_asks_only_for_unjudged_items(server, tmp_path):
    base_url, script = server
    items = _items(5)
    script.actions.extend([("ok",), ("ok",)])
    script.default = ("status", 500, "down")
    path = tmp_path / "j.jsonl"
    with pytest.raises(CalibtuneError, match="failed after 2 attempts"):
        judge_all(_judge(base_url, max_retries=1), items, JudgementCache(path))
    assert len(JudgementCache(path)) == 2

    script.default = ("ok",)
    script.requests.clear()
    settled = []
    grades = judge_all(_judge(base_url), items, JudgementCache(path), progress=settled.append)
    assert [g.correct for g in grades] == _expected(5)
    assert len(script.requests) == 3
    assert [p.split("Question ")[1][:2] for p in script.prompts()] == ["2?", "3?", "4?"]
    assert settled == [2, 1, 1, 1]
    _assert_no_key(JudgementCache(path))


def test_missing_key_is_a_clear_error_without_a_request(server, monkeypatch):
    base_url, script = server
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CalibtuneError, match=f"set the environment variable {KEY_ENV}"):
        judge_all(_judge(base_url), _items(1))
    assert script.requests == []


def test_no_key_wanted_sends_no_authorization(server):
    base_url, script = server
    judge_all(_judge(base_url, api_key_env=None), _items(1))
    assert script.requests[0]["auth"] is None


def test_connection_refused_is_retried_then_named():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = _judge(f"http://127.0.0.1:{port}/v1", max_retries=1, api_key_env=None)
    with pytest.raises(CalibtuneError, match=f"judge endpoint http://127.0.0.1:{port}/v1/chat/completions failed"):
        judge_all(judge, _items(1))


def test_credentials_in_the_url_are_never_shown():
    judge = HttpJudge("https://user:hunter2@api.example.com/v1?api-key=abc", "m")
    shown = repr(judge) + judge.endpoint + json.dumps(judge.identity())
    assert "hunter2" not in shown and "abc" not in shown and "api.example.com/v1" in shown
    with pytest.raises(CalibtuneError, match="must start with http"):
        HttpJudge("ftp://example.com", "m")


def test_cache_ignores_a_truncated_last_line_and_appends_after_it(tmp_path):
    judge = _judge("http://127.0.0.1:9/v1")
    items = _items(3)
    cache = JudgementCache(tmp_path / "j.jsonl")
    keys = [judgement_key(judge.identity(), item) for item in items]
    for key, item in zip(keys[:2], items):
        cache.put(key, Grade(True, "judge:test-model", "Yes"), item, judge.identity())
    with open(cache.path, "ab") as handle:
        handle.write(b'{"key": "' + keys[2][:10].encode())  # a crash mid-write
    reread = JudgementCache(cache.path)
    assert len(reread) == 2 and reread.ignored_lines == 1 and keys[2] not in reread
    reread.put(keys[2], Grade(False, "judge:test-model", "No"), items[2])
    final = JudgementCache(cache.path)
    assert len(final) == 3 and final.get(keys[2]).correct is False and final.ignored_lines == 1


def test_cache_key_depends_on_judge_not_reference_order():
    item = GradeItem("Q?", ("a", "b"), "a")
    swapped = GradeItem("Q?", ("b", "a"), "a")
    one, other = _judge("http://127.0.0.1:9/v1"), _judge("http://127.0.0.1:9/v1", model="other")
    assert judgement_key(one.identity(), item) == judgement_key(one.identity(), swapped)
    assert judgement_key(one.identity(), item) != judgement_key(other.identity(), item)
    assert judgement_key(one.identity(), item) != judgement_key(one.identity(), GradeItem("Q?", ("a", "b"), "b"))
