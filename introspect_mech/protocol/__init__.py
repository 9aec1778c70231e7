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


def concept_words() -> list[str]:
    return list(load_protocol()["concept_words"])


def baseline_words(unique: bool = False) -> list[str]:
    """The paper's published baseline list: 100 entries, 'Butterflies' listed twice.

    By default the list is used as published (100 entries, so 'Butterflies' weighs twice in the
    mean), which is what the paper and three public replications average: with it their concept
    vectors agree to float precision, with the 99 unique words they differ by 0.8-1.4 %.
    ``unique=True`` drops the repeat (99 words)."""
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
