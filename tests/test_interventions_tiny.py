"""MLP ablation, direction ablation and component recording on tiny models, against plain hooks."""

from __future__ import annotations

import pytest
import torch

from introspect_mech.execution import forward
from introspect_mech.interventions import DirectionAblation, MLPAblation
from introspect_mech.prompts import render
from introspect_mech.record import RecordSpec

from conftest import ALL_TINY_ARCHS

pytestmark = pytest.mark.usefixtures("single_thread")


def _prompt(model, text="The old clock on the wall ticked loudly."):
    return render(model.tokenizer, [{"role": "user", "content": text}])


def _blocks(model):
    hf = model.hf
    return hf.model.layers if hasattr(hf, "model") else hf.transformer.h


def _ref_logits(model, ids, module, hook):
    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.hf(torch.tensor([ids])).logits[0]
    finally:
        h.remove()


@pytest.mark.parametrize("arch", ALL_TINY_ARCHS)
def test_mlp_zero_ablation_matches_hook(tiny_model_of, arch):
    m = tiny_model_of(arch)
    p = _prompt(m)
    got = forward(m, [p], ablations=[MLPAblation(1, "zero")]).logits[0]
    ref = _ref_logits(m, p.input_ids, _blocks(m)[1].mlp, lambda mod, a, o: torch.zeros_like(o))
    clean = forward(m, [p]).logits[0]
    assert (got - ref).abs().max().item() < 1e-5
    assert (got - clean).abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", ALL_TINY_ARCHS)
def test_direction_projection_matches_hook(tiny_model_of, arch):
    m = tiny_model_of(arch)
    p = _prompt(m)
    u = torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(0))
    un = u / u.norm()

    def hook(mod, a, o):
        h = o[0] if isinstance(o, tuple) else o
        h = h - (h @ un)[..., None] * un
        return (h,) + tuple(o[1:]) if isinstance(o, tuple) else h

    got = forward(m, [p], ablations=[DirectionAblation(1, u)], record=RecordSpec(layers=[1])).logits
    rec = forward(m, [p], ablations=[DirectionAblation(1, u)], record=RecordSpec(layers=[1]))
    ref = _ref_logits(m, p.input_ids, _blocks(m)[1], hook)
    assert (got[0] - ref).abs().max().item() < 1e-5
    assert rec.residual_at(1, 0).matmul(un).abs().max().item() < 1e-4  # nothing left along u
    # setting the projection to a value instead of zero
    rec2 = forward(m, [p], ablations=[DirectionAblation(1, u, value=2.5)], record=RecordSpec(layers=[1]))
    assert torch.allclose(rec2.residual_at(1, 0) @ un, torch.full((len(p),), 2.5), atol=1e-4)


@pytest.mark.parametrize("arch", ALL_TINY_ARCHS)
def test_components_sum_to_residual(tiny_model_of, arch):
    """h_L = h_{L-1} + attn_out_L + mlp_out_L on every architecture: the recorded writes are the attention / MLP
    outputs on pre-norm blocks and their post-norms' outputs on Gemma 2/3 (sandwich) and OLMo-2 (post-norm)."""
    m = tiny_model_of(arch)
    prompts = [_prompt(m), _prompt(m, "Hi")]
    rec = forward(m, prompts, record=RecordSpec(layers=[0, 1], components=True))
    for r in range(2):
        h0, h1 = rec.residual_at(0, r), rec.residual_at(1, r)
        a1, m1 = rec.row(rec.attn_out[1][r], r), rec.row(rec.mlp_out[1][r], r)
        assert (h0 + a1 + m1 - h1).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ablations_from_a_start_position_match_hooks_and_spare_earlier_tokens(tiny_model_of, arch):
    """Head, MLP and direction ablations with ``start``: only tokens at or after it are edited
    (a causal test must leave the attention-sink token alone), checked against plain hooks in a
    left-padded batch."""
    from introspect_mech.interventions import HeadAblation

    m = tiny_model_of(arch)
    long, short = _prompt(m), _prompt(m, "Hi")
    start = 5
    H, hd = 1, m.arch.head_dim
    u = torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(1))
    un = u / u.norm()
    blk = _blocks(m)[1]
    o_proj = blk.self_attn.o_proj if hasattr(blk, "self_attn") else blk.attn.c_proj

    def head_pre(mod, args):
        x = args[0].clone()
        x[:, start:, H * hd:(H + 1) * hd] = 0
        return (x,) + tuple(args[1:])

    def mlp_hook(mod, a, o):
        o = o.clone()
        o[:, start:] = 0
        return o

    def dir_hook(mod, a, o):
        h = o[0] if isinstance(o, tuple) else o
        h = h.clone()
        h[:, start:] = h[:, start:] - (h[:, start:] @ un)[..., None] * un
        return (h,) + tuple(o[1:]) if isinstance(o, tuple) else h

    cases = [([HeadAblation(1, (H,), "zero", start=start)], o_proj, "pre", head_pre),
             ([MLPAblation(1, "zero", start=start)], blk.mlp, "fwd", mlp_hook),
             ([DirectionAblation(1, u, start=start)], blk, "fwd", dir_hook)]
    clean = forward(m, [long, short], record=RecordSpec(layers=[1])).logits
    for abl, module, kind, hook in cases:
        got = forward(m, [long, short], ablations=abl).logits  # the long row is unpadded, the short one padded
        handle = module.register_forward_pre_hook(hook) if kind == "pre" else module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                ref = m.hf(torch.tensor([long.input_ids])).logits[0]
        finally:
            handle.remove()
        assert (got[0] - ref).abs().max().item() < 1e-5, abl
        assert torch.equal(got[0, :start], clean[0, :start]), abl  # tokens before the start are untouched
        assert (got[0, start:] - clean[0, start:]).abs().max().item() > 1e-4, abl
