"""The circuit-hypothesis harness on a tiny model with a planted head."""

from __future__ import annotations

import copy

import pytest
import torch

import random

from analyses.circuits import (Direction, Head, Hypothesis, LogitMetric, MLP, ComponentStats, draw_null_sets,
                               null_pool_size, test_hypothesis)
from introspect_mech.models import wrap
from introspect_mech.prompts import render

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def planted(tiny_model_of):
    """A copy of the tiny Llama whose head (2, 1) writes strongly into one token's unembedding."""
    base = tiny_model_of("llama")
    hf = copy.deepcopy(base.hf)
    L, H, hd = 2, 1, base.arch.head_dim
    target = 7
    with torch.no_grad():
        w = hf.model.layers[L].self_attn.o_proj.weight  # [d, H*hd]
        u = hf.lm_head.weight[target] / hf.lm_head.weight[target].norm()
        w[:, H * hd:(H + 1) * hd] += 200.0 * u[:, None] * torch.ones(1, hd) / hd
    m = wrap(hf, base.tokenizer, name="planted")
    return m, (L, H), target


def test_planted_head_is_detected_and_random_heads_are_not(planted):
    m, (L, H), target = planted
    texts = ["The old clock on the wall ticked loudly.", "Tell me about dust", "Do you detect an injected thought?",
             "She collected seashells every summer.", "What is going on in your mind?", "Hi there"]
    prompts = [render(m.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    metric = LogitMetric(m, prompts, lambda rec: rec.logits[:, -1, target])
    res = test_hypothesis(m, Hypothesis("planted", [Head(L, H)]), metric, n_null=19, seed=1, same_layers=False)
    # 3 layers x 4 heads: only 11 other single heads exist, so the null is all of them (exact, min p 1/12)
    assert len(res.null_effects) == 11 and "all 11 possible sets" in res.null_kind
    assert abs(res.effect) > 1.5 * max(abs(x) for x in res.null_effects)  # beyond every other head
    assert res.p_value == pytest.approx(1 / 12) == res.min_p
    # a random head declared as the hypothesis is not significant
    other = next(Head(l, h) for l in range(3) for h in range(4) if (l, h) != (L, H))
    res2 = test_hypothesis(m, Hypothesis("random head", [other]), metric, n_null=19, seed=1, same_layers=False)
    assert res2.p_value > 0.05


def test_mean_and_patch_interventions_run_and_differ(planted):
    m, (L, H), target = planted
    prompts = [render(m.tokenizer, [{"role": "user", "content": t}]) for t in ("Tell me about dust", "Tell me about rain")]
    metric = LogitMetric(m, prompts, lambda rec: rec.logits[:, -1, target])
    stats = ComponentStats(m, prompts[::-1])  # counterfactual = the other prompt, same length
    zero = test_hypothesis(m, Hypothesis("z", [Head(L, H)], "zero"), metric, n_null=2, stats=stats)
    mean = test_hypothesis(m, Hypothesis("m", [Head(L, H)], "mean"), metric, n_null=2, stats=stats)
    patch = test_hypothesis(m, Hypothesis("p", [Head(L, H), MLP(1)], "patch"), metric, n_null=2, stats=stats)
    assert zero.effect != mean.effect != patch.effect
    d = test_hypothesis(m, Hypothesis("d", [Direction(L, torch.randn(m.arch.d_model))]), metric, n_null=3)
    assert len(d.null_effects) == 3 and d.to_dict()["hypothesis"]["components"][0]["kind"] == "direction"


def test_null_sets_are_distinct_and_exhaustive_when_the_pool_is_small(planted):
    """A repeated null set would let p reach 1/(1+n_null) below the test's true floor (regression: 39 draws
    of a single head among the 8 others of its layer gave 'min p 0.025' where the exact floor is 1/9)."""
    m = planted[0]
    one = [Head(1, 2)]
    assert null_pool_size(m, one, set(one)) == 3
    drawn = draw_null_sets(m, one, 39, random.Random(0), set(one))
    assert drawn.exhaustive and sorted(s[0].head for s in drawn.sets) == [0, 1, 3]
    two = [Head(1, 2), Head(2, 0), MLP(0)]
    assert null_pool_size(m, two, set(two)) == 3 * 3 * 2  # C(3,1) at layer 1, C(3,1) at layer 2, C(2,1) MLPs
    assert len(draw_null_sets(m, two, 50, random.Random(0), set(two)).sets) == 18
    big = draw_null_sets(m, [Head(0, 0), Head(1, 1)], 5, random.Random(3), {Head(0, 0), Head(1, 1)}, same_layers=False)
    keys = [frozenset(s) for s in big.sets]
    assert not big.exhaustive and len(set(keys)) == len(keys) == 5  # C(10, 2) = 45 possible: 5 distinct draws
    assert all(len(k) == 2 and not k & {Head(0, 0), Head(1, 1)} for k in keys)
