"""The causal test of the concordance analysis: intervene on the top-k heads vs random head sets (the
``analyses.circuits`` harness), one result per quantity the metric measures."""

from __future__ import annotations

import itertools
import random
from math import comb
from typing import TYPE_CHECKING, Any, Sequence

import torch

from analyses.circuits import ComponentStats, Head, Hypothesis, HypothesisResult, NullSets, test_hypothesis

from .metric import QUANTITIES, IntentLogOdds

if TYPE_CHECKING:
    from introspect_mech.models import Model

INTERVENTIONS = ("zero", "mean", "patch")
NULLS = ("downstream", "any", "same_layers")


def downstream_null(model: Model, heads: Sequence[Head], injection_layer: int, n_null: int,
                    seed: int) -> NullSets:
    """``n_null`` distinct sets of ``len(heads)`` random heads at layers after the injection layer,
    excluding the hypothesis heads (all of them when there are no more than ``n_null``)."""
    arch = model.arch
    pool = [Head(L, h) for L in range(injection_layer + 1, arch.n_layers) for h in range(arch.n_heads)
            if Head(L, h) not in set(heads)]
    if len(pool) < len(heads):
        raise ValueError(f"only {len(pool)} heads after layer {injection_layer} outside the hypothesis; "
                         f"need {len(heads)}")
    k, size = len(heads), comb(len(pool), len(heads))
    if size <= n_null:  # every possible set: an exact test (its minimum p is coarser, and says so)
        return NullSets([list(c) for c in itertools.combinations(pool, k)], True, size)
    rng = random.Random(seed)
    out: list[list[Head]] = []
    seen: set[tuple[Head, ...]] = set()
    while len(out) < n_null:  # distinct sets: a repeated null would claim a resolution the test lacks
        s = tuple(sorted(rng.sample(pool, k), key=lambda x: (x.layer, x.head)))
        if s not in seen:
            seen.add(s)
            out.append(list(s))
    return NullSets(out, False, size)


def causal_test(
    model: Model,
    metric: IntentLogOdds,
    heads: Sequence[Head],
    *,
    intervention: str = "zero",
    n_null: int = 20,
    seed: int = 0,
    null: str = "same_layers",
    stats: Any = None,
    baseline: dict[str, torch.Tensor] | None = None,
    start: int = 0,
) -> dict:
    """Intervene on ``heads`` (at positions ``>= start``) vs ``n_null`` random head sets of the same size;
    one result per quantity the metric measures (``HypothesisResult.to_dict()`` each), plus the null
    head sets."""
    if intervention not in INTERVENTIONS:
        raise ValueError(f"intervention must be one of {INTERVENTIONS}")
    if null not in NULLS:
        raise ValueError(f"null must be one of {NULLS}")
    heads = [Head(int(h.layer), int(h.head)) for h in heads]
    if stats is None and intervention == "patch":
        stats = metric.patch_source()
    if stats is None and intervention == "mean":
        stats = ComponentStats(model, [it.prompt for it in metric.items], start=max(start, 1))
    hyp = Hypothesis(f"top-{len(heads)} heads ({intervention})", list(heads), intervention, start=start)
    base_pp = baseline if baseline is not None else metric.per_pair([])
    base = IntentLogOdds.quantities(base_pp)
    metric.history.clear()
    null_kind = {"downstream": "random heads from the layers after the injection layer",
                 "same_layers": "random other heads at the hypothesis heads' layers",
                 "any": "random heads at any layer"}[null]
    if null == "downstream":
        drawn = downstream_null(model, heads, metric.layer, n_null, seed)
        null_kind += f"; {drawn.describe()}"
        test_hypothesis(model, hyp, metric, stats=stats, baseline=base[metric.quantity], null_sets=drawn.sets,
                        null_kind=null_kind)
    else:
        null_kind = test_hypothesis(model, hyp, metric, n_null=n_null, seed=seed, stats=stats,
                                    same_layers=(null == "same_layers"), baseline=base[metric.quantity],
                                    null_kind=null_kind).null_kind
    hist = list(metric.history)
    results = {}
    for q, name in QUANTITIES.items():
        if q not in base:
            continue
        nulls = [h[q] - base[q] for h in hist[1:]]
        results[name] = HypothesisResult.from_null(hyp.name, base[q], hist[0][q], nulls, len(heads), hyp.describe(),
                                                   null_kind=null_kind).to_dict()
    return {"intervention": intervention, "null": null, "null_kind": null_kind, "start": start,
            "primary": QUANTITIES[metric.quantity], "results": results,
            "null_head_sets": [h["heads"] for h in hist[1:]]}
