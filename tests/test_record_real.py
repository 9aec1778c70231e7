"""One-pass recording on the real embedded model, against HF's own outputs and plain hooks."""

from __future__ import annotations

import pytest
import torch

import introspect_mech as im
from introspect_mech.record import head_contributions

from _real import smol, smol_eager, smol_vectors  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prompts(smol):
    return [im.render(smol.tokenizer, [im.Turn("user", "Tell me about the ocean.")]),
            im.render(smol.tokenizer, [im.Turn("user", "Hi")])]


def test_residuals_equal_hf_hidden_states(smol, prompts):
    rec = im.forward(smol, prompts, record=im.RecordSpec(layers=None))
    for r, p in enumerate(prompts):
        with torch.no_grad():
            hs = smol.hf(torch.tensor([p.input_ids]), output_hidden_states=True).hidden_states
        scale = 0.0
        for L in range(smol.arch.n_layers - 1):
            # batched (left-padded) vs single run: float noise only. Relative to the largest magnitude the
            # residual has reached so far (the attention sink's ~2.5e4 at layers 18-27): rounding errors made
            # at that size persist when the sink shrinks at layer 28 (measured: 0.0146 at 1.0e4 there, after
            # 0.0117 at 2.5e4 one layer earlier — 5e-7 of the largest value; elsewhere differences are < 6e-4)
            ref = hs[L + 1][0]
            scale = max(scale, ref.abs().max().item())
            assert (rec.residual_at(L, r) - ref).abs().max().item() <= 1e-6 * scale + 5e-4, (r, L)
        # HF's last hidden state is after the final norm
        last = smol.hf.model.norm(rec.residual_at(smol.arch.n_layers - 1, r))
        assert (last - hs[-1][0]).abs().max().item() < 5e-4


def test_attention_equals_output_attentions_and_heads_recombine(smol_eager, prompts):
    m = smol_eager
    L = 11
    rec = im.forward(m, prompts, record=im.RecordSpec(layers=[L, 20], attention=True, head_outputs=True))
    captured = {}
    handle = m.hf.model.layers[L].self_attn.register_forward_hook(lambda mod, a, o: captured.update(out=o[0]))
    try:
        with torch.no_grad():
            out = m.hf(torch.tensor([prompts[0].input_ids]), output_attentions=True)
    finally:
        handle.remove()
    att = rec.attention[L][0][:, rec.batch.pad[0]:, rec.batch.pad[0]:]
    assert att.shape == (9, len(prompts[0]), len(prompts[0]))
    assert (att - out.attentions[L][0]).abs().max().item() < 1e-5
    heads = rec.row(rec.head_outputs[L][0], 0)  # [T, H, hd]
    contrib = head_contributions(m, L, heads[None])[0]  # [T, H, d]
    assert (contrib.sum(1) - captured["out"][0]).abs().max().item() < 1e-4


def test_cosine_in_same_pass(smol, smol_vectors, prompts):
    stack = smol_vectors.stack(["dust", "ocean"] if "ocean" in smol_vectors else ["dust", "origami"])
    rec = im.forward(smol, prompts, record=im.RecordSpec(layers=None, cosine_with=stack))
    L = 20
    h = rec.residual_at(L, 0)
    v = stack[0, L]
    ref = torch.nn.functional.cosine_similarity(h, v[None], dim=-1)
    assert (rec.row(rec.cosine[L][0], 0)[:, 0] - ref).abs().max().item() < 1e-5
    assert rec.cosine_curve(0).shape == (30, 2)


def test_head_ablation_matches_pre_hook(smol, prompts):
    L, head, hd = 15, 4, smol.arch.head_dim
    rec = im.forward(smol, prompts[:1], ablations=[im.HeadAblation(L, (head,))])

    def pre(mod, args):
        x = args[0].clone()
        x[..., head * hd:(head + 1) * hd] = 0
        return (x,)

    handle = smol.hf.model.layers[L].self_attn.o_proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            ref = smol.hf(torch.tensor([prompts[0].input_ids])).logits[0]
    finally:
        handle.remove()
    clean = im.forward(smol, prompts[:1]).logits[0]
    assert (rec.logits[0] - ref).abs().max().item() < 1e-4
    assert (clean - ref).abs().max().item() > 1e-3


def test_activation_patching_between_prompts(smol):
    src = im.render(smol.tokenizer, [im.Turn("user", "The capital of France is")])
    dst = im.render(smol.tokenizer, [im.Turn("user", "The capital of Italy is")])
    assert len(src) == len(dst)
    L, pos = 10, len(src) - 5
    src_rec = im.forward(smol, [src], record=im.RecordSpec(layers=[L]))
    vec = src_rec.residual_at(L, 0)[pos]
    patched = im.forward(smol, [dst], patches=[im.ResidualPatch(L, 0, pos, vec)], record=im.RecordSpec(layers=[L]))
    assert torch.equal(patched.residual_at(L, 0)[pos], vec)

    def hook(mod, a, o):
        o = o.clone()
        o[0, pos] = vec
        return o

    handle = smol.hf.model.layers[L].register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref = smol.hf(torch.tensor([dst.input_ids])).logits[0]
    finally:
        handle.remove()
    assert (patched.logits[0] - ref).abs().max().item() < 1e-4
