"""The circuit-hypothesis harness on a tiny model with a planted head."""

from __future__ import annotations

import copy

import pytest
import torch

from analyses.circuits import Direction, Head, Hypothesis, LogitMetric, MLP, ComponentStats, test_hypothesis
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
    assert abs(res.effect) > 3 * max(abs(x) for x in res.null_effects)
    assert res.p_value == pytest.approx(1 / 20)
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
