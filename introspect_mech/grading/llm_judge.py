"""LLM-as-judge grading with the paper's exact grader prompts.

Why: the paper's numbers come from an LLM judge (Claude Sonnet 4) answering four YES/NO
prompts per response; reproducing them means using those prompts verbatim. The judge model is
pluggable: a local Hugging Face model (`HFBackend`) or any OpenAI-compatible chat endpoint
(`OpenAIBackend`), or anything with `complete(prompts, max_new_tokens) -> list[str]`.

Verdicts are cached on disk keyed by sha256(backend id, prompt name, filled prompt), so
re-grading a run (or grading the same response twice) costs nothing.

Blind: the judge is given only {prompt}, {response} and {word}; never the trial's condition.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import IntrospectError, MissingFileError
from .base import INJECTED_THOUGHTS, Grader, GradeRequest, Grades

PROTOCOL_FILE = Path(__file__).resolve().parents[1] / "protocol" / "lindsey2025.json"
# The four prompts of Experiment 1; word_choice and intended_prefill serve other experiments.
CRITERIA = ("coherence", "thinking_about_word", "affirmative", "affirmative_correct_id")
_NEEDS_WORD = {"thinking_about_word", "affirmative_correct_id"}
_PLACEHOLDER = re.compile(r"\{(prompt|response|word|words_list_raw)\}")


class JudgeError(IntrospectError, RuntimeError):
    """The judge backend is misconfigured or failed."""


def load_grader_prompts(path: str | Path | None = None) -> dict[str, str]:
    """The paper's grader prompts ("grader_prompts" in the protocol JSON)."""
    p = Path(path) if path else PROTOCOL_FILE
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
    """Anything that turns prompts into completions (one user turn each, greedy)."""

    def complete(self, prompts: list[str], max_new_tokens: int) -> list[str]: ...


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
            completions = self.backend.complete([j.filled for j in pending], max_new_tokens)
            if len(completions) != len(pending):
                raise JudgeError(f"backend {self.backend_id} returned {len(completions)} completions "
                                 f"for {len(pending)} prompts")
            self.calls += len(pending)
            for j, c in zip(pending, completions, strict=True):
                self.cache.put(j.key, {"backend": self.backend_id, "prompt_name": j.prompt_name,
                                       "completion": c, "verdict": parse_yes_no(c) if parse else None,
                                       "time": time.time()})
                out[j.key] = c
        return out

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
        import torch

        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(self.model.parameters()).device
        old_side = tok.padding_side
        tok.padding_side = "left"  # generation continues from the right edge of every row
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        outs: list[str] = []
        try:
            for i in range(0, len(prompts), self.batch_size):
                texts = [self._render(p) for p in prompts[i:i + self.batch_size]]
                # The chat template already holds BOS where the model wants one.
                enc = tok(texts, return_tensors="pt", padding=True,
                          add_special_tokens=not getattr(tok, "chat_template", None)).to(device)
                with torch.no_grad():
                    gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=pad_id)
                outs += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        finally:
            tok.padding_side = old_side
        return outs


class OpenAIBackend:
    """An OpenAI-compatible endpoint (POST {base_url}/chat/completions, temperature 0).

    Uses only the standard library. The API key is read from the environment variable named
    by `api_key_env` (None for endpoints that need no key, e.g. a local server).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 3, max_workers: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_workers = max_workers
        self.id = f"openai:{self.base_url}:{model}"
        self._key: str | None = None
        if api_key_env is not None:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise JudgeError(f"environment variable {api_key_env} is not set: export {api_key_env}=<key> "
                                 f"for {self.base_url}, or pass api_key_env=None if the endpoint needs no key")

    def _one(self, prompt: str, max_new_tokens: int) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": max_new_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body,
                                         headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = e
                if e.code not in (408, 409, 429) and e.code < 500:
                    detail = e.read().decode("utf-8", "replace")[:500]
                    raise JudgeError(f"{self.base_url} answered HTTP {e.code}: {detail}") from e
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as e:
                last = e
            if attempt < self.max_retries:
                time.sleep(min(2.0 ** attempt, 30.0))
        raise JudgeError(f"{self.base_url}: no answer after {self.max_retries + 1} tries: {last}")

    def complete(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        if len(prompts) <= 1 or self.max_workers <= 1:
            return [self._one(p, max_new_tokens) for p in prompts]
        with ThreadPoolExecutor(self.max_workers) as pool:
            return list(pool.map(lambda p: self._one(p, max_new_tokens), prompts))
