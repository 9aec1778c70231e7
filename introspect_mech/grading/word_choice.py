"""Offline 10-way forced choice for Experiment 2: which candidate word does a short answer name?

The paper asks an LLM judge to pick, from the injected word and 9 other concept
words, the one the response is about. Offline we do two things, in order:

1. If the response names exactly one candidate (the word or a simple morphological
   variant, word boundaries, case-insensitive), choose it — the unambiguous case,
   and most 5-token answers are a single word.
2. Otherwise compare the mean input embedding of the response with each candidate's
   mean input embedding (the model's own embedding space) and take the most similar.

Step 2 is a weak semantic proxy, so every report also gives the share of choices that
came from step 1 (``exact``), and the chooser's accuracy is measured in the tests on
responses that are the candidate word itself (must be 100 %) and on near-synonyms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .rules import word_pattern


@dataclass(frozen=True)
class Choice:
    word: str
    method: str  # "exact" | "embedding" | "empty"
    scores: dict


class EmbeddingChooser:
    name = "embedding-choice-v1"

    def __init__(self, model: Any) -> None:
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
        named = [c for c in candidates if word_pattern(c).search(response)]
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
