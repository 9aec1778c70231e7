"""Offline 10-way forced choice for Experiment 2: which candidate word does a short answer name?

The paper asks an LLM judge to pick, from the injected word and 9 other concept
words, the one the response is about. Offline we do two things, in order:

1. If the response names exactly one candidate (the word or a simple morphological
   variant, word boundaries, case-insensitive), choose it — the unambiguous case.
2. Otherwise take the candidate most similar to the response in a sentence-embedding
   space: all-MiniLM-L6-v2, the same similarity that decides "a closely related concept"
   in the Exp 1 rule grader (`grading/similarity.py`), so both experiments share one
   notion of relatedness.

Step 2 used to compare mean input embeddings of the model under test (`LMEmbeddingChooser`,
kept for comparison): a weaker proxy, and circular, since the model's own lexical space
decides what its answer "is about". On 50 one-word associates of the paper's concept words
(tests/test_word_choice.py) MiniLM picks the intended word 10-way far more often; see the
README for the measured numbers. Every report also gives the share of choices that came
from step 1 (``exact``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .rules import word_pattern

if TYPE_CHECKING:
    from ..models import Model


@dataclass(frozen=True)
class Choice:
    word: str
    method: str  # "exact" | "embedding" | "empty"
    scores: dict


def _named(response: str, candidates: Sequence[str]) -> list[str]:
    return [c for c in candidates if word_pattern(c).search(response)]


class EmbeddingChooser:
    """Literal match first, else the candidate closest to the response in all-MiniLM-L6-v2 space."""

    name = "minilm-choice-v2"

    def __init__(self, similarity: Any = None) -> None:
        self._similarity = similarity

    @property
    def similarity(self):
        if self._similarity is None:
            from .similarity import shared_similarity

            self._similarity = shared_similarity()
        return self._similarity

    def choose(self, response: str, candidates: Sequence[str]) -> Choice:
        named = _named(response, candidates)
        if len(named) == 1:
            return Choice(named[0], "exact", {})
        if not response.strip():
            return Choice("", "empty", {})
        pool = named or list(candidates)
        sims = self.similarity.matrix([response.strip()], [c.lower() for c in pool])[0]
        scores = {c: float(v) for c, v in zip(pool, sims, strict=True)}
        return Choice(max(scores, key=scores.get), "embedding", scores)

    def choose_many(self, responses: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[Choice]:
        self.similarity.embed(list(dict.fromkeys([r.strip() for r in responses if r.strip()]
                                                 + [c.lower() for cs in candidates for c in cs])))
        return [self.choose(r, c) for r, c in zip(responses, candidates)]


class LMEmbeddingChooser:
    """The former step 2: mean input embedding of the model under test (kept to measure the switch)."""

    name = "embedding-choice-v1"

    def __init__(self, model: Model) -> None:
        emb = model.arch.embed(model.hf)
        self.E = emb.weight.detach().float()
        self.tok = model.tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    def _vec(self, text: str) -> torch.Tensor | None:
        text = text.strip()
        if text in self._cache:
            return self._cache[text]
        ids = self.tok(" " + text, add_special_tokens=False)["input_ids"]
        ids = [i for i in ids if i < self.E.shape[0]]
        if not ids:
            return None
        v = self.E[ids].mean(0)
        self._cache[text] = v
        return v

    def choose(self, response: str, candidates: Sequence[str]) -> Choice:
        named = _named(response, candidates)
        if len(named) == 1:
            return Choice(named[0], "exact", {})
        pool = named or list(candidates)
        r = self._vec(response)
        if r is None:
            return Choice("", "empty", {})
        scores = {}
        for c in pool:
            v = self._vec(c) if self._vec(c.lower()) is None else self._vec(c.lower())
            scores[c] = float(torch.nn.functional.cosine_similarity(r, v, dim=0)) if v is not None else -1.0
        return Choice(max(scores, key=scores.get), "embedding", scores)

    def choose_many(self, responses: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[Choice]:
        return [self.choose(r, c) for r, c in zip(responses, candidates)]
