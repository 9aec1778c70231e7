"""The paper's stimuli, shipped with the package.

``lindsey2025.json`` reproduces the word lists, sentences, prompts and grader prompts
of Lindsey (2025), *Emergent Introspective Awareness in Large Language Models*,
Transformer Circuits Thread (transformer-circuits.pub/2025/introspection), appendix
incl. the 2026-01-01 revision. See ``SOURCE.md``. ``protocol_hash()`` goes into every
record so results can be traced to the exact stimuli used.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib.resources import files
from typing import Any

PROTOCOL_FILE = "lindsey2025.json"


@lru_cache(maxsize=1)
def _raw() -> bytes:
    return files(__name__).joinpath(PROTOCOL_FILE).read_bytes()


def load_protocol() -> dict[str, Any]:
    """A fresh copy of the protocol dict (callers may mutate it)."""
    return json.loads(_raw())


def protocol_hash() -> str:
    return hashlib.sha256(_raw()).hexdigest()[:16]


def source() -> str:
    return load_protocol()["source"]


def concept_words() -> list[str]:
    return list(load_protocol()["concept_words"])


def baseline_words(unique: bool = True) -> list[str]:
    """The paper's 100 baseline words; 'Butterflies' is listed twice as published, so by default
    duplicates are dropped (99 words) — a duplicate would silently double its weight in the mean."""
    words = load_protocol()["baseline_words"]
    return list(dict.fromkeys(words)) if unique else list(words)


def category_words() -> dict[str, list[str]]:
    return {k: list(v) for k, v in load_protocol()["category_words"].items()}


def sentences() -> list[str]:
    return list(load_protocol()["sentences"])


def experiment(name: str) -> dict[str, Any]:
    exps = load_protocol()["experiments"]
    if name not in exps:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(exps)}")
    return exps[name]


def grader_prompts() -> dict[str, str]:
    return dict(load_protocol()["grader_prompts"])
