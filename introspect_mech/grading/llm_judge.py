"""LLM-as-judge grading with the paper's exact grader prompts.

Why: the paper's numbers come from an LLM judge (Claude Sonnet 4) answering four YES/NO
prompts per response; reproducing them means using those prompts verbatim. The judge model is
pluggable: a local Hugging Face model (`HFBackend`) or any OpenAI-compatible chat endpoint
(`OpenAIBackend`), or anything with `complete(prompts, max_new_tokens) -> list[str]`.

Verdicts are cached on disk keyed by sha256(backend id, prompt name, filled prompt), so
re-grading a run (or grading the same response twice) costs nothing. Each verdict is cached the
moment it arrives: when a request fails half-way through a run, every answer already paid for is
kept and the re-run asks only for the missing ones.

The HTTP backend never follows a redirect (the bearer key must not reach another address, and a
redirected POST would come back as a GET whose answer is no verdict), times out, and retries with
exponential backoff only what a retry can fix (429, 5xx, timeouts, dropped connections).

Blind: the judge is given only {prompt}, {response} and {word}; never the trial's condition.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import IntrospectError, MissingFileError
from .base import INJECTED_THOUGHTS, Grader, GradeRequest, Grades

# The four prompts of Experiment 1; word_choice and intended_prefill serve other experiments.
CRITERIA = ("coherence", "thinking_about_word", "affirmative", "affirmative_correct_id")
_NEEDS_WORD = {"thinking_about_word", "affirmative_correct_id"}
_PLACEHOLDER = re.compile(r"\{(prompt|response|word|words_list_raw)\}")


class JudgeError(IntrospectError, RuntimeError):
    """The judge backend is misconfigured or failed."""


def load_grader_prompts(path: str | Path | None = None) -> dict[str, str]:
    """The paper's grader prompts ("grader_prompts" in the protocol JSON): the packaged protocol's
    (``protocol.grader_prompts``), or those of the protocol file at ``path``."""
    if path is None:
        from .. import protocol

        return protocol.grader_prompts()
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"protocol file not found: {p}; pass prompts_path= to the judge")
    return dict(json.loads(p.read_text(encoding="utf-8"))["grader_prompts"])


def fill(template: str, **fields: str) -> str:
    """Fill {prompt}/{response}/{word}/{words_list_raw} literally.

    str.format is not used because responses routinely contain braces; every placeholder
    present in the template must be supplied.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in fields or fields[name] is None:
            raise KeyError(f"grader prompt needs {{{name}}} but it was not given")
        return str(fields[name])

    return _PLACEHOLDER.sub(sub, template)


_FINAL_WORD = re.compile(r"([A-Za-z]+)[^A-Za-z]*$")
_YES_NO = re.compile(r"\b(YES|NO)\b")


def parse_yes_no(completion: str) -> bool | None:
    """Read the verdict the prompts ask for ("End your response with YES or NO").

    The last word decides ("... so the answer is **NO**." -> False). If the completion does not
    end with yes/no (e.g. it was cut off), the last upper-case YES/NO in it is used; otherwise
    None (unparseable, and not cached as a verdict).
    """
    if not completion:
        return None
    m = _FINAL_WORD.search(completion.strip())
    if m and m.group(1).lower() in ("yes", "no"):
        return m.group(1).lower() == "yes"
    hits = _YES_NO.findall(completion)
    if hits:
        return hits[-1] == "YES"
    return None


@runtime_checkable
class CompletionBackend(Protocol):
    """Anything that turns prompts into completions (one user turn each, greedy).

    A backend may also offer ``iter_complete(prompts, max_new_tokens)``, yielding
    ``(index, completion)`` as each answer arrives; the judge then caches every answer at once,
    so a failure later in the run loses none of them. With ``complete`` only, a failure loses the
    answers of that one call.
    """

    def complete(self, prompts: list[str], max_new_tokens: int) -> list[str]: ...


def _stream(backend: Any, prompts: list[str], max_new_tokens: int) -> Iterator[tuple[int, str]]:
    """(index, completion) pairs from a backend, as they arrive when it can stream them."""
    it = getattr(backend, "iter_complete", None)
    if callable(it):
        yield from it(prompts, max_new_tokens)
        return
    completions = backend.complete(prompts, max_new_tokens)
    if len(completions) != len(prompts):
        raise JudgeError(f"backend {backend_id(backend)} returned {len(completions)} completions "
                         f"for {len(prompts)} prompts")
    yield from enumerate(completions)


def backend_id(backend: Any) -> str:
    """Stable identity for cache keys: `backend.id` if set, else the class name."""
    return str(getattr(backend, "id", None) or type(backend).__qualname__)


class VerdictCache:
    """Append-only JSONL cache of judge completions; `path=None` keeps it in memory only.

    One line per entry, written with a single O_APPEND write, so concurrent writers do not
    interleave lines and a crash leaves at most one truncated last line (skipped on load).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._mem: dict[str, dict[str, Any]] = {}
        if self.path and self.path.is_file():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # truncated by an interrupted write
                    if isinstance(rec, dict) and "key" in rec:
                        self._mem[rec["key"]] = rec

    @staticmethod
    def key(backend: str, prompt_name: str, filled_prompt: str) -> str:
        blob = json.dumps([backend, prompt_name, filled_prompt], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._mem.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        rec = {"key": key, **record}
        self._mem[key] = rec
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._mem)


@dataclass
class _Job:
    prompt_name: str
    filled: str
    key: str


class LLMJudge(Grader):
    """Grades with the paper's four prompts through a completion backend, with caching.

    correct_id is the judge's affirmative_correct_id verdict as is (that prompt already
    requires an affirmative answer and the ordering rule); before_mention is not judged
    separately (None). Prompts that need {word} are skipped (None) when the request has none.
    For questions other than "injected_thoughts" only coherence and thinking_about_word apply.
    """

    def __init__(
        self,
        backend: CompletionBackend,
        cache_path: str | Path | None = None,
        prompts: Mapping[str, str] | None = None,
        prompts_path: str | Path | None = None,
        max_new_tokens: int = 1024,
        retry_unparsed: bool = True,
        name: str | None = None,
    ) -> None:
        if not hasattr(backend, "complete"):
            raise TypeError("backend needs a complete(prompts, max_new_tokens) method")
        self.backend = backend
        self.backend_id = backend_id(backend)
        self.prompts = dict(prompts) if prompts is not None else load_grader_prompts(prompts_path)
        self.cache = VerdictCache(cache_path)
        self.max_new_tokens = max_new_tokens
        self.retry_unparsed = retry_unparsed
        self.name = name or f"llm-judge:{self.backend_id}"
        self.calls = 0  # prompts actually sent to the backend (cache misses)

    # -- generic ---------------------------------------------------------------------------
    def _run(self, jobs: list[_Job], max_new_tokens: int, parse: bool = True) -> dict[str, str]:
        """Completions for the jobs' keys, querying the backend once for all cache misses."""
        out: dict[str, str] = {}
        todo: dict[str, _Job] = {}
        for j in jobs:
            hit = self.cache.get(j.key)
            if hit is not None and not (parse and self.retry_unparsed and hit.get("verdict") is None):
                out[j.key] = hit["completion"]
            else:
                todo.setdefault(j.key, j)
        if todo:
            pending = list(todo.values())
            kept = 0
            try:
                for i, c in _stream(self.backend, [j.filled for j in pending], max_new_tokens):
                    j = pending[i]
                    if not isinstance(c, str):
                        raise JudgeError(f"backend {self.backend_id} returned a {type(c).__name__}, not text")
                    self.cache.put(j.key, {"backend": self.backend_id, "prompt_name": j.prompt_name,
                                           "completion": c, "verdict": parse_yes_no(c) if parse else None,
                                           "time": time.time()})
                    self.calls += 1
                    kept += 1
                    out[j.key] = c
            except Exception as exc:  # noqa: BLE001 - any backend failure: say what was kept
                raise JudgeError(self._failure(exc, kept, len(pending))) from exc
            missing = [j for j in pending if j.key not in out]
            if missing:
                raise JudgeError(self._failure(RuntimeError(f"no answer for {len(missing)} prompts"), kept,
                                               len(pending)))
        return out

    def _failure(self, exc: Exception, kept: int, asked: int) -> str:
        """One line: what failed, how many new verdicts were kept, and that a re-run reuses them."""
        why = " ".join(str(exc).split()) or type(exc).__name__
        if kept == 0:
            return f"judge {self.backend_id} failed before any of {asked} verdicts arrived ({why})"
        if self.cache.path is None:
            where = "held in memory only (pass cache_path= to keep them across runs)"
        else:
            where = f"cached in {self.cache.path}; re-running the same command reuses them and asks only " \
                    f"for the {asked - kept} missing"
        return f"judge {self.backend_id} failed after {kept} of {asked} new verdicts ({why}); those {kept} are {where}"

    def _job(self, prompt_name: str, **fields: str) -> _Job:
        filled = fill(self.prompts[prompt_name], **fields)
        return _Job(prompt_name, filled, VerdictCache.key(self.backend_id, prompt_name, filled))

    def ask(self, prompt_name: str, fields: Sequence[Mapping[str, str]],
            max_new_tokens: int | None = None) -> list[tuple[str, bool | None]]:
        """(completion, YES/NO verdict) for each filling of one named grader prompt."""
        jobs = [self._job(prompt_name, **f) for f in fields]
        done = self._run(jobs, max_new_tokens or self.max_new_tokens)
        return [(done[j.key], parse_yes_no(done[j.key])) for j in jobs]

    # -- Experiment 1 ----------------------------------------------------------------------
    def criteria_for(self, request: GradeRequest) -> tuple[str, ...]:
        names = CRITERIA if request.question == INJECTED_THOUGHTS else ("coherence", "thinking_about_word")
        if request.word is None:
            names = tuple(n for n in names if n not in _NEEDS_WORD)
        return names

    def grade_many(self, requests: list[GradeRequest]) -> list[Grades]:
        plan: list[list[_Job]] = []
        for r in requests:
            fields = {"prompt": r.prompt, "response": r.response}
            if r.word is not None:
                fields["word"] = r.word
            plan.append([self._job(n, **fields) for n in self.criteria_for(r)])
        done = self._run([j for jobs in plan for j in jobs], self.max_new_tokens)
        grades = []
        for jobs in plan:
            verdicts = {j.prompt_name: parse_yes_no(done[j.key]) for j in jobs}
            grades.append(Grades(
                coherent=verdicts.get("coherence"),
                affirmative=verdicts.get("affirmative"),
                correct_id=verdicts.get("affirmative_correct_id"),
                thinking_about_word=verdicts.get("thinking_about_word"),
                before_mention=None,
                raw={"grader": self.name, "verdicts": verdicts,
                     "completions": {j.prompt_name: done[j.key] for j in jobs}},
            ))
        return grades

    # -- other experiments -----------------------------------------------------------------
    def choose_words(self, responses: Sequence[str], candidates: Sequence[Sequence[str]],
                     max_new_tokens: int = 16) -> list[str]:
        """The judge's answer to the word_choice prompt (10-way forced choice, Exp. 2)."""
        jobs = [self._job("word_choice", response=r, words_list_raw="\n".join(c))
                for r, c in zip(responses, candidates, strict=True)]
        done = self._run(jobs, max_new_tokens, parse=False)
        return [done[j.key] for j in jobs]

    @staticmethod
    def word_choice_correct(answer: str, word: str) -> bool:
        """Paper's rule: success if the injected word appears in the judge's answer."""
        return word.strip().lower() in answer.lower()

    def intended(self, words: Sequence[str], responses: Sequence[str],
                 max_new_tokens: int = 16) -> list[bool | None]:
        """intended_prefill verdicts: did the model claim it meant to say the word? (Exp. 3)"""
        fields = [{"word": w, "response": r} for w, r in zip(words, responses, strict=True)]
        return [v for _, v in self.ask("intended_prefill", fields, max_new_tokens)]


class HFBackend:
    """A local Hugging Face causal LM as judge: chat template, greedy decoding, batched.

    Tokenizers without a chat template get the raw prompt (base models).
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, id: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self.id = id or f"hf:{name}"

    def _render(self, prompt: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": prompt}],
                                           tokenize=False, add_generation_prompt=True)
        return prompt

    def complete(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return [c for _, c in self.iter_complete(prompts, max_new_tokens)]

    def iter_complete(self, prompts: list[str], max_new_tokens: int) -> Iterator[tuple[int, str]]:
        """(index, completion) batch by batch, so an interrupted local judge keeps its finished batches."""
        import torch

        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(self.model.parameters()).device
        old_side = tok.padding_side
        tok.padding_side = "left"  # generation continues from the right edge of every row
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        try:
            for i in range(0, len(prompts), self.batch_size):
                texts = [self._render(p) for p in prompts[i:i + self.batch_size]]
                # The chat template already holds BOS where the model wants one.
                enc = tok(texts, return_tensors="pt", padding=True,
                          add_special_tokens=not getattr(tok, "chat_template", None)).to(device)
                with torch.no_grad():
                    gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=pad_id)
                texts_out = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                yield from enumerate(texts_out, start=i)
        finally:
            tok.padding_side = old_side


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every 3xx into an HTTPError instead of following it.

    urllib's default handler would resend the Authorization header to whatever origin the
    Location names, and turn the POST into a body-less GET whose answer is then read as a verdict.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class _NotSent(Exception):
    """A request skipped because another one had already failed."""


_RETRY_STATUS = frozenset({408, 429})
_MAX_REPLY_BYTES = 16 * 2**20  # a chat completion is kilobytes; refuse to buffer an endless body


def check_judge_url(base_url: str) -> str:
    """An OpenAI-compatible endpoint must be an http(s) address (checked before a run is read)."""
    url = urllib.parse.urlsplit(str(base_url).strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise JudgeError(f"judge URL {base_url!r} is not an http(s) address; pass the endpoint's base URL, "
                         "e.g. --judge-url https://api.openai.com/v1")
    return base_url


class OpenAIBackend:
    """An OpenAI-compatible endpoint (POST {base_url}/chat/completions, temperature 0).

    Uses only the standard library. The API key is read from the environment variable named
    by `api_key_env` (None for endpoints that need no key, e.g. a local server). Redirects are
    refused, each request times out after `timeout` s, and 408/429/5xx, timeouts and dropped
    connections are retried up to `max_retries` times, waiting `backoff`, 2x, 4x ... seconds
    (at most `max_backoff`, or the server's Retry-After when it is shorter than that).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 3, max_workers: int = 4,
                 backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        check_judge_url(base_url)
        for name, value, positive in (("timeout", timeout, True), ("backoff", backoff, False),
                                      ("max_backoff", max_backoff, False)):
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 if positive else value >= 0)
            if not ok:
                raise JudgeError(f"judge {name} must be a finite number of seconds {'> 0' if positive else '>= 0'} "
                                 f"(got {value!r})")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise JudgeError(f"judge max_retries must be an integer >= 0 (got {max_retries!r})")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise JudgeError(f"judge max_workers must be an integer >= 1 (got {max_workers!r})")
        self.base_url = str(base_url).strip().rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_workers = max_workers
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.id = f"openai:{self.base_url}:{model}"
        self._opener = urllib.request.build_opener(_RefuseRedirects())
        self._sleep = time.sleep  # replaced by tests that check the backoff without waiting
        self._key: str | None = None
        if api_key_env is not None:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise JudgeError(f"environment variable {api_key_env} is not set: export {api_key_env}=<key> "
                                 f"for {self.base_url}, or pass api_key_env=None if the endpoint needs no key")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2.0 ** attempt)
        if retry_after:
            try:
                delay = min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        return delay

    def _one(self, prompt: str, max_new_tokens: int, stop: threading.Event | None = None) -> str:
        """One completion, retried where a retry can help; gives up at once when ``stop`` is set."""
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": max_new_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            retry_after = None
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read(_MAX_REPLY_BYTES + 1)
                return self._content(raw)
            except urllib.error.HTTPError as e:
                if 300 <= e.code < 400:
                    where = e.headers.get("Location", "?") if e.headers else "?"
                    raise JudgeError(f"{url} answered HTTP {e.code} (a redirect to {where}); redirects are not "
                                     "followed, so the API key never goes to another address: pass the final "
                                     "endpoint as --judge-url") from None
                if e.code not in _RETRY_STATUS and e.code < 500:
                    detail = " ".join(e.read(500).decode("utf-8", "replace").split())
                    raise JudgeError(f"{url} answered HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except urllib.error.URLError as e:
                reason = e.reason
                if not isinstance(reason, (TimeoutError, ConnectionError)):
                    raise JudgeError(f"cannot reach {url}: {reason}") from None
                last = f"{type(reason).__name__}: {reason}"
            except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__} after {self.timeout:g} s"
            if attempt < self.max_retries:
                if stop is None:
                    self._sleep(self._delay(attempt, retry_after))
                elif stop.wait(self._delay(attempt, retry_after)):
                    raise _NotSent  # another request failed for good: no point paying for a retry
        raise JudgeError(f"{url}: no answer after {self.max_retries + 1} tries (last: {last})")

    def _content(self, raw: bytes) -> str:
        """The completion text of a chat-completions reply, or a JudgeError (not retried) saying why not."""
        if len(raw) > _MAX_REPLY_BYTES:
            raise JudgeError(f"{self.base_url} sent a reply over {_MAX_REPLY_BYTES} bytes; it is not a chat completion")
        try:
            content = json.loads(raw.decode("utf-8"))["choices"][0]["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"{self.base_url} answered something that is not a chat completion "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise JudgeError(f"{self.base_url} answered a {type(content).__name__} as message content, not text")
        return content

    def iter_complete(self, prompts: list[str], max_new_tokens: int) -> Iterator[tuple[int, str]]:
        """(index, completion) as each answer arrives (up to `max_workers` requests in flight).

        After the first failure no new request starts and no retry is made; answers to those
        already in flight are still yielded (they are paid for), then the failure is raised.
        """
        if len(prompts) <= 1 or self.max_workers <= 1:
            for i, p in enumerate(prompts):
                yield i, self._one(p, max_new_tokens)
            return
        stop = threading.Event()  # set by the first failure: no request starts after it

        def task(prompt: str) -> str:
            if stop.is_set():
                raise _NotSent
            try:
                return self._one(prompt, max_new_tokens, stop)
            except BaseException:
                stop.set()
                raise

        pool = ThreadPoolExecutor(min(self.max_workers, len(prompts)))
        try:
            futures = {pool.submit(task, p): i for i, p in enumerate(prompts)}
            error: BaseException | None = None
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if isinstance(exc, _NotSent):
                    continue
                if exc is not None:
                    if error is None:
                        error = exc
                        for other in futures:
                            other.cancel()
                    continue
                yield futures[fut], fut.result()
            if error is not None:
                raise error
        finally:
            stop.set()  # interrupted (Ctrl-C): the requests in flight finish, none is retried
            pool.shutdown(wait=True, cancel_futures=True)

    def complete(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        out: list[str | None] = [None] * len(prompts)
        for i, c in self.iter_complete(prompts, max_new_tokens):
            out[i] = c
        return out  # type: ignore[return-value]  # every index is filled, or iter_complete raised
