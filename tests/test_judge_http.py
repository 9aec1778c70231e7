"""The LLM judge over HTTP: no redirects (the key stays at its origin), verdicts cached as they
arrive (a failure keeps every paid answer), timeouts, and retries with backoff only where a retry
can help. Every server here is a real HTTP server on 127.0.0.1 (review cases 58-61)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from introspect_mech.grading import GradeRequest, JudgeError, LLMJudge, OpenAIBackend

KEY = "sk-TOPSECRET-123"
QUESTION = "Trial 1: Do you detect an injected thought? If so, what is the injected thought about?"


def requests(n: int) -> list[GradeRequest]:
    return [GradeRequest(QUESTION, f"I detect an injected thought about dust, number {i}.", "dust") for i in range(n)]


class Server:
    """A threaded HTTP server whose every request is recorded and answered by ``reply(server, handler)``."""

    def __init__(self, reply) -> None:
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.reply = reply
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with outer.lock:
                    outer.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": body})
                    index = len(outer.seen) - 1
                self.body = body
                outer.reply(index, self)

            do_GET = do_POST = do_PUT = _any  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a client that timed out is expected here
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, obj, headers: dict | None = None) -> None:
    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


def answer_yes(index: int, handler: BaseHTTPRequestHandler) -> None:
    send_json(handler, 200, {"choices": [{"message": {"role": "assistant", "content": "Reasoning.\nYES"}}]})


@pytest.fixture
def servers(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("JUDGE_HTTP_KEY", KEY)
    made: list[Server] = []

    def make(reply) -> Server:
        s = Server(reply)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("backoff", 0.0)
    return OpenAIBackend(url, "fake-judge", api_key_env="JUDGE_HTTP_KEY", **kw)


# ------------------------------------------------------------------------------------------
# Redirects (review case 60)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_key_never_reaches_the_other_origin(servers, tmp_path, status):
    """Case 60: no redirect is followed; the other origin never sees the key; nothing is cached."""
    other = servers(answer_yes)  # another origin (port) that would happily answer YES

    def redirect(index, h):
        h.send_response(status)
        h.send_header("Location", f"http://127.0.0.1:{other.port}/v1/chat/completions")
        h.send_header("Content-Length", "0")
        h.end_headers()

    judge_url = servers(redirect)
    cache = tmp_path / "judge_cache.jsonl"
    judge = LLMJudge(backend(judge_url.url, max_workers=4), cache_path=cache)
    with pytest.raises(JudgeError, match=rf"HTTP {status} \(a redirect to http://127.0.0.1:{other.port}/") as err:
        judge.grade_many(requests(3))
    assert "\n" not in str(err.value) and "--judge-url" in str(err.value)
    assert other.seen == []  # never contacted: neither the key nor the prompt left the configured origin
    assert all(s["headers"].get("Authorization") == f"Bearer {KEY}" for s in judge_url.seen)
    assert len(judge_url.seen) <= 4  # not retried: at most the requests that were already in flight
    assert not cache.exists() or cache.read_text() == ""  # nothing cached as a verdict
    assert KEY not in str(err.value)


# ------------------------------------------------------------------------------------------
# Each verdict cached as it arrives (review case 61)
# ------------------------------------------------------------------------------------------


def test_a_failure_after_n_answers_keeps_the_n_verdicts_and_the_rerun_asks_only_the_rest(servers, tmp_path):
    """Cases 58, 59, 61: paid verdicts survive a failure, a re-run asks only for the rest, the key is nowhere."""
    good = 7

    def flaky(index, h):
        if index < good:
            answer_yes(index, h)
        else:
            send_json(h, 500, {"error": "overloaded"})

    down = servers(flaky)
    cache = tmp_path / "judge_cache.jsonl"
    reqs = requests(5)  # 5 x 4 prompts = 20 completions
    with pytest.raises(JudgeError) as err:
        LLMJudge(backend(down.url, max_workers=4, max_retries=2), cache_path=cache).grade_many(reqs)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"after {good} of 20 new verdicts" in msg and "HTTP 500" in msg
    assert str(cache) in msg and f"asks only for the {20 - good} missing" in msg
    lines = cache.read_text().splitlines()
    assert len(lines) == good  # every paid answer kept, one line each
    assert all(json.loads(ln)["verdict"] is True for ln in lines)

    up = servers(answer_yes)
    rerun = LLMJudge(backend(up.url, max_workers=4), cache_path=cache)
    # the cache key holds the backend id, which names the URL: point the re-run at the same id
    rerun.backend_id = LLMJudge(backend(down.url)).backend_id
    grades = rerun.grade_many(reqs)
    assert len(up.seen) == 20 - good and rerun.calls == 20 - good
    assert all(g.success is True for g in grades)
    assert len(cache.read_text().splitlines()) == 20
    assert KEY not in cache.read_text() and KEY not in msg  # the key is nowhere on disk or in the error (case 58)
    again = LLMJudge(backend(up.url), cache_path=cache)
    again.backend_id = rerun.backend_id
    again.grade_many(reqs)
    assert again.calls == 0 and len(up.seen) == 20 - good


def test_answers_in_flight_when_another_request_fails_are_kept(servers, tmp_path):
    """The first request fails once 4 are in flight; the 3 others still answer, and are cached."""
    def reply(index, h):
        if index == 0:
            deadline = time.monotonic() + 10
            while len(s.seen) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            send_json(h, 400, {"error": "bad"})
            return
        time.sleep(0.3)
        answer_yes(index, h)

    s = servers(reply)
    cache = tmp_path / "c.jsonl"
    with pytest.raises(JudgeError, match=r"HTTP 400.*those \d+ are cached"):
        LLMJudge(backend(s.url, max_workers=4), cache_path=cache).grade_many(requests(3))
    started = len(s.seen)
    assert started == 4  # those in flight when it failed; none started after it (12 prompts in all)

    assert len(cache.read_text().splitlines()) == started - 1


class _StreamThenFail:
    """A streaming backend: yields `good` answers, then raises (a local judge that runs out of memory)."""

    id = "stream-then-fail"

    def __init__(self, good: int) -> None:
        self.good, self.asked = good, 0

    def complete(self, prompts, max_new_tokens):
        return [c for _, c in self.iter_complete(prompts, max_new_tokens)]

    def iter_complete(self, prompts, max_new_tokens):
        for i, _ in enumerate(prompts):
            if self.asked >= self.good:
                raise RuntimeError("CUDA out of memory")
            self.asked += 1
            yield i, "YES"


def test_any_streaming_backend_keeps_what_it_answered(tmp_path):
    cache = tmp_path / "c.jsonl"
    with pytest.raises(JudgeError, match=r"after 5 of 8 new verdicts \(CUDA out of memory\)"):
        LLMJudge(_StreamThenFail(5), cache_path=cache).grade_many(requests(2))
    assert len(cache.read_text().splitlines()) == 5
    b = _StreamThenFail(100)
    LLMJudge(b, cache_path=cache).grade_many(requests(2))
    assert b.asked == 3


def test_memory_only_cache_says_so():
    with pytest.raises(JudgeError, match="held in memory only"):
        LLMJudge(_StreamThenFail(1)).grade_many(requests(1))


# ------------------------------------------------------------------------------------------
# Timeouts and retries with backoff
# ------------------------------------------------------------------------------------------


def _script(statuses: list[int], headers: dict | None = None):
    """Answer request i with statuses[i] (200 = a YES completion); the last status repeats."""
    def reply(index, h):
        st = statuses[min(index, len(statuses) - 1)]
        if st == 200:
            answer_yes(index, h)
        else:
            send_json(h, st, {"error": st}, headers)
    return reply


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408])
def test_retryable_statuses_are_retried_with_exponential_backoff(servers, status):
    s = servers(_script([status, status, status, 200]))
    b = backend(s.url, max_retries=3, backoff=0.5, max_backoff=30.0)
    slept: list[float] = []
    b._sleep = slept.append
    assert b.complete(["q"], 5) == ["Reasoning.\nYES"]
    assert len(s.seen) == 4 and slept == [0.5, 1.0, 2.0]


def test_backoff_is_capped_and_retry_after_is_honoured(servers):
    s = servers(_script([429, 503, 500, 200], {"Retry-After": "3"}))
    b = backend(s.url, max_retries=3, backoff=4.0, max_backoff=5.0)
    slept: list[float] = []
    b._sleep = slept.append
    b.complete(["q"], 5)
    assert slept == [3.0, 3.0, 3.0]  # the server's wait, under the cap
    s2 = servers(_script([500, 500, 500, 200]))
    b2 = backend(s2.url, max_retries=3, backoff=4.0, max_backoff=5.0)
    slept.clear()
    b2._sleep = slept.append
    b2.complete(["q"], 5)
    assert slept == [4.0, 5.0, 5.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_client_errors_are_not_retried(servers, status):
    s = servers(_script([status, 200]))
    b = backend(s.url, max_retries=3)
    b._sleep = lambda d: pytest.fail("slept before a retry of a client error")
    with pytest.raises(JudgeError, match=f"HTTP {status}"):
        b.complete(["q"], 5)
    assert len(s.seen) == 1


def test_retries_give_up_with_a_one_line_error(servers):
    s = servers(_script([500]))
    b = backend(s.url, max_retries=2)
    with pytest.raises(JudgeError, match=r"no answer after 3 tries \(last: HTTP 500\)") as err:
        b.complete(["q"], 5)
    assert len(s.seen) == 3 and "\n" not in str(err.value)


def test_no_retry_is_paid_for_once_another_request_failed_for_good(servers):
    def reply(index, h):
        if index == 0:
            deadline = time.monotonic() + 10
            while len(s.seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            send_json(h, 400, {"error": "bad"})
        else:
            send_json(h, 500, {"error": "busy"})

    s = servers(reply)
    b = backend(s.url, max_workers=2, max_retries=5, backoff=0.3)
    t = time.monotonic()
    with pytest.raises(JudgeError, match="HTTP 400"):
        b.complete(["a", "b", "c"], 5)
    assert len(s.seen) <= 3 and time.monotonic() - t < 3  # without the stop: 1 + 6 tries over ~9 s


def test_a_slow_answer_times_out_and_is_retried(servers):
    def slow_first(index, h):
        if index == 0:
            time.sleep(1.5)
        try:
            answer_yes(index, h)
        except OSError:
            pass  # the client gave up on this one

    s = servers(slow_first)
    b = backend(s.url, max_retries=1, timeout=0.3)
    t = time.monotonic()
    assert b.complete(["q"], 5) == ["Reasoning.\nYES"]
    assert len(s.seen) == 2 and time.monotonic() - t < 1.4
    s2 = servers(lambda i, h: (time.sleep(1.0), answer_yes(i, h)))
    with pytest.raises(JudgeError, match=r"no answer after 2 tries \(last: .*(timed out|Timeout)"):
        backend(s2.url, max_retries=1, timeout=0.2).complete(["q"], 5)


def test_a_dropped_connection_is_retried(servers):
    def drop_first(index, h):
        if index == 0:
            h.close_connection = True
            h.connection.shutdown(2)  # no status line at all
            return
        answer_yes(index, h)

    s = servers(drop_first)
    assert backend(s.url, max_retries=1).complete(["q"], 5) == ["Reasoning.\nYES"]
    assert len(s.seen) == 2


@pytest.mark.parametrize("body", [b"not json", b'{"choices": []}', b'{"error": "x"}',
                                  b'{"choices": [{"message": {"content": 3}}]}'])
def test_a_reply_that_is_not_a_completion_is_an_error_not_a_verdict(servers, tmp_path, body):
    def reply(index, h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    s = servers(reply)
    cache = tmp_path / "c.jsonl"
    with pytest.raises(JudgeError, match="not a chat completion|not text"):
        LLMJudge(backend(s.url, max_retries=3, max_workers=1), cache_path=cache).grade(requests(1)[0])
    assert len(s.seen) == 1  # retrying a malformed answer would only pay for it again
    assert not cache.exists() or cache.read_text() == ""


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/v1", "api.openai.com/v1", "http://", ""])
def test_only_http_urls_are_accepted(url):
    with pytest.raises(JudgeError, match="not an http"):
        OpenAIBackend(url, "m", api_key_env=None)


@pytest.mark.parametrize(("kw", "what"), [({"timeout": 0}, "timeout"), ({"timeout": float("nan")}, "timeout"),
                                          ({"backoff": -1}, "backoff"), ({"max_retries": -1}, "max_retries"),
                                          ({"max_workers": 0}, "max_workers")])
def test_bad_backend_options_are_refused(kw, what):
    with pytest.raises(JudgeError, match=what):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env=None, **kw)


def test_a_local_judge_keeps_the_batches_it_finished(tmp_path, monkeypatch):
    """HFBackend streams batch by batch: a failure in batch 3 keeps batches 1 and 2."""
    from introspect_mech.grading import HFBackend
    from test_grading import tiny_llama

    model, tok = tiny_llama()
    real_generate, calls = model.generate, [0]

    def generate(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("CUDA out of memory")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    cache = tmp_path / "c.jsonl"
    judge = LLMJudge(HFBackend(model, tok, batch_size=2), cache_path=cache, max_new_tokens=2)
    with pytest.raises(JudgeError, match=r"after 4 of 8 new verdicts \(CUDA out of memory\)"):
        judge.grade_many(requests(2))
    assert len(cache.read_text().splitlines()) == 4
    assert tok.padding_side == "right"  # restored although the batch loop stopped half-way
