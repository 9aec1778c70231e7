"""How much of a held-out word a concept vector carries: the ceiling on what an organism can name.

Why: an organism that names 20 % of the held-out words could be limited by its training or by
the vectors themselves (a 135M model's layer-14 reading at "Tell me about {word}" might not
distinguish "xylophones" from "kaleidoscopes"). A linear read-out answers which: fit a ridge
map from the *training* words' concept vectors to a sentence-embedding of each word
(all-MiniLM-L6-v2, the grader's related-concept space), then rank every candidate word for
each *held-out* vector by cosine with its prediction. If the held-out word comes out first
among thousands of candidates, the identity is in the vector and the organism's read-out is
what falls short. A shuffled-target fit (the same ridge on permuted targets) gives the chance
level the rates are compared with.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..stats import Rate


@dataclass
class Decodability:
    """Retrieval of held-out words from their vectors by a ridge map fitted on training words."""

    layer: int
    ridge: float
    n_train: int
    n_test: int
    n_candidates: int  # held-out words + training words
    top1_among_test: Rate  # the right word ranked first among the held-out words only
    top1_among_all: Rate  # ... among every candidate (held-out and training words)
    top10_among_all: Rate
    nearest_related: Rate  # the first-ranked candidate is the word or within `related_threshold` of it
    related_threshold: float
    shuffled_top1_among_all: Rate  # the same fit on permuted training targets: chance level

    def to_dict(self) -> dict:
        return asdict(self)


def _fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(x.T @ x + ridge * eye, x.T @ y)


def _ranks(pred: torch.Tensor, cands: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of each row's true candidate among all candidates, by cosine."""
    sims = torch.nn.functional.normalize(pred, dim=-1) @ cands.T
    own = sims.gather(1, truth[:, None])
    return (sims > own).sum(1)


def word_decodability(train_vectors: torch.Tensor, train_words: Sequence[str], test_vectors: torch.Tensor,
                      test_words: Sequence[str], *, layer: int, ridge: float = 10.0, similarity: Any = None,
                      related_threshold: float | None = None, seed: int = 0) -> Decodability:
    """Fit on (train_vectors, train_words), evaluate on the held-out (test_vectors, test_words).

    ``*_vectors``: ``[n, d]`` concept vectors at one layer; ``similarity``: an object with
    ``embed(texts) -> [n, k]`` unit vectors (default: the grader's all-MiniLM-L6-v2)."""
    if len(train_words) != train_vectors.shape[0] or len(test_words) != test_vectors.shape[0]:
        raise ConfigError("one vector per word is needed (train and test)")
    if len(train_words) < 2 or not len(test_words) or ridge <= 0:
        raise ConfigError("need >= 2 training words, >= 1 test word and ridge > 0")
    if set(map(str.lower, train_words)) & set(map(str.lower, test_words)):
        raise ConfigError("training and test words overlap; the read-out must be fitted on other words")
    if similarity is None:
        from ..grading.similarity import shared_similarity

        similarity = shared_similarity()
    if related_threshold is None:
        from ..grading.rules import RELATED_THRESHOLD

        related_threshold = RELATED_THRESHOLD
    x, xt = train_vectors.double(), test_vectors.double()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mu) / sd, (xt - mu) / sd
    y = similarity.embed(list(train_words)).double()
    yt = similarity.embed(list(test_words)).double()
    cands = torch.cat([yt, y])  # held-out words first: candidate i < n_test is test word i
    truth = torch.arange(len(test_words))
    pred = xt @ _fit(x, y, ridge)
    r_test = _ranks(pred, yt, truth)
    r_all = _ranks(pred, cands, truth)
    first = (torch.nn.functional.normalize(pred, dim=-1) @ cands.T).argmax(1)
    related = (cands[first] * yt).sum(1) >= related_threshold
    perm = list(range(len(train_words)))
    random.Random(seed).shuffle(perm)
    r_null = _ranks(xt @ _fit(x, y[perm], ridge), cands, truth)
    return Decodability(layer, ridge, len(train_words), len(test_words), int(cands.shape[0]),
                        Rate.from_bools((r_test == 0).tolist()), Rate.from_bools((r_all == 0).tolist()),
                        Rate.from_bools((r_all < 10).tolist()), Rate.from_bools(related.tolist()),
                        float(related_threshold), Rate.from_bools((r_null == 0).tolist()))


def organism_decodability(model: Any, layers: Sequence[int] = (14,), n_english: int | None = None,
                          ridge: float = 100.0) -> list[Decodability]:
    """``word_decodability`` on the organism's own split (training words → the paper's 50 held-out words),
    one row per layer (``n_english=None``: the training recipe's default, so the split is `organism train`'s).

    The split is built once and each set of words is read in one pass for all layers outside the
    training range; layers inside it reuse the vectors `organism train` cached."""
    from ..concepts import extract_concept_vectors
    from .recipe import RecipeConfig
    from .words import build_split

    recipe = RecipeConfig()
    split = build_split(recipe.n_english if n_english is None else n_english, categories=recipe.categories)
    layers = [model.arch.resolve_layer(layer) for layer in layers]
    lo, hi = recipe.layers
    inside = [layer for layer in layers if lo <= layer <= hi]
    outside = sorted({layer for layer in layers if not lo <= layer <= hi})
    train_sets = ([extract_concept_vectors(model, split.train, layers=list(range(lo, hi + 1)))] if inside else []) + \
        ([extract_concept_vectors(model, split.train, layers=outside)] if outside else [])
    held = extract_concept_vectors(model, split.test, layers=sorted(set(layers)))
    out = []
    for layer in layers:
        tv = train_sets[0] if layer in inside else train_sets[-1]
        out.append(word_decodability(torch.stack([tv.get(w, layer) for w in split.train]), split.train,
                                     torch.stack([held.get(w, layer) for w in split.test]), split.test,
                                     layer=layer, ridge=ridge))
    return out


__all__ = ["Decodability", "organism_decodability", "word_decodability"]
