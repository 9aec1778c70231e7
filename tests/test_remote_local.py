"""Traces go through nnsight's remote="local" path (serialized as for NDIF, package hidden) and give
the same results as local execution — so what runs here will serialize for NDIF."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import introspect_mech as im
from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt

from _real import smol  # noqa: F401

pytestmark = pytest.mark.integration


def test_forward_and_generate_survive_ndif_serialization(smol):
    p = exp1_prompt(smol.tokenizer)
    v = torch.randn(576, generator=torch.Generator().manual_seed(0)) * 5
    inj = im.Injection(v, 19, 4.0, p.window)
    spec = im.RecordSpec(layers=[18, 20], cosine_with=v[None], head_outputs=True)
    sim = dataclasses.replace(smol, simulate_remote=True)
    assert sim.trace_kwargs == {"remote": "local"} and smol.trace_kwargs == {}
    a = im.forward(smol, [p.rendered, "hello"], [inj, None], record=spec)
    b = im.forward(sim, [p.rendered, "hello"], [inj, None], record=spec)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.residual[20], b.residual[20])
    assert torch.equal(a.cosine[18], b.cosine[18]) and a.doses == b.doses
    g1 = im.generate(smol, [p.rendered], [inj], max_new_tokens=6)
    g2 = im.generate(sim, [p.rendered], [inj], max_new_tokens=6)
    assert g1.new_tokens == g2.new_tokens
