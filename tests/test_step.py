"""The engine step API (``introspect_mech.step``): ``forward`` and ``generate`` return the same ``Recording`` type,
named as ``RecordSpec`` asks, built from one typed ``StepStore``."""

from __future__ import annotations

import pytest
import torch

from introspect_mech.execution import forward, generate
from introspect_mech.inject import Injection, Window
from introspect_mech.interventions import InterventionPlan
from introspect_mech.prompts import render
from introspect_mech.record import RecordSpec, Recording
from introspect_mech.step import StepStore, as_batch, make_plan

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ("Tell me about dust", "Hi")


def _setup(m):
    ps = [render(m.tokenizer, [{"role": "user", "content": t}]) for t in TEXTS]
    v = torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(1))
    return ps, [Injection(v, 1, 4.0, Window.from_position(len(ps[0]) - 3)), None]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_returns_one_recording_per_step_of_the_forward_type(tiny_model_of, arch):
    m = tiny_model_of(arch)
    ps, injs = _setup(m)
    spec = RecordSpec(layers=[1, 2], residual=True, head_outputs=True, components=True,
                      cosine_with=torch.randn(3, m.arch.d_model, generator=torch.Generator().manual_seed(0)),
                      logits=False)
    n = 4
    gen = generate(m, ps, injs, max_new_tokens=n, record=spec)
    one = forward(m, ps, injs, record=spec)
    assert all(type(r) is Recording for r in gen.recording) and type(one) is Recording
    assert len(gen.recording) == n  # the prefill and n - 1 KV-cached steps (no row of a tiny model stops early)
    pre = gen.recording[0]
    # the prefill of `generate` is the pass `forward` makes: same fields, same layers, same values, same doses
    for name in ("residual", "head_outputs", "cosine", "attn_out", "mlp_out"):
        got, want = getattr(pre, name), getattr(one, name)
        assert set(got) == set(want) == {1, 2}, name
        for L in want:
            assert got[L].shape == want[L].shape and torch.allclose(got[L], want[L], atol=1e-5), (name, L)
    assert pre.doses == gen.doses and pre.doses[0][0] == pytest.approx(one.doses[0][0], rel=1e-5)
    for r in gen.recording[1:]:
        assert r.residual[1].shape == (len(ps), 1, m.arch.d_model) and r.doses == [] and r.ref_norms == {}
    assert generate(m, ps, injs, max_new_tokens=2).recording == []  # nothing asked, nothing recorded


def test_step_store_counts_the_steps_that_ran(tiny_model_of):
    m = tiny_model_of("llama")
    ps, injs = _setup(m)
    batch = as_batch(m, ps)
    plan = make_plan(m, batch, injs)
    assert isinstance(plan, InterventionPlan) and plan.batch_size == 2
    store = StepStore()
    assert store.n_steps() == 0 and store.recordings(batch, plan, [1]) == []
    a, b = torch.zeros(2, 5, 8), torch.ones(2, 1, 8)
    store.residual[1] = [a, b]
    store.cosine[1] = [a[..., :3]]  # a field recorded at the prefill only
    store.ref_norms[1] = torch.tensor([2.0, 1.0])
    recs = store.recordings(batch, plan, [1])
    assert len(recs) == 2 and recs[0].residual[1] is a and recs[1].residual[1] is b
    assert set(recs[0].cosine) == {1} and recs[1].cosine == {}
    assert recs[0].ref_norms == store.ref_norms and len(recs[0].doses) == 2 and recs[1].doses == []
