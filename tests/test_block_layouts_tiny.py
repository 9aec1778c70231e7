"""Block layouts: where each sub-block writes to the residual stream, and the analyses that split a
layer's residual change into an attention write and an MLP write.

References are plain HF forwards with torch hooks on modules reached by their literal paths
(``post_feedforward_layernorm``, ``mlp``, ``fc2``), never through ``Architecture``.
"""

from __future__ import annotations

import pytest
import torch

from introspect_mech.errors import ArchitectureError
from introspect_mech.execution import forward
from introspect_mech.interventions import MLPAblation
from introspect_mech.prompts import render
from introspect_mech.record import RecordSpec

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5


def _prompts(m):
    return [render(m.tokenizer, [{"role": "user", "content": t}])
            for t in ("The old clock on the wall ticked loudly.", "Hi")]


def _split_error(m, prompts) -> float:
    """max |h_L − h_{L−1} − attn_write_L − mlp_write_L| over layers 1, 2 and both rows."""
    rec = forward(m, prompts, record=RecordSpec(layers=None, components=True))
    err = 0.0
    for r in range(len(prompts)):
        for L in (1, 2):
            d = (rec.residual_at(L, r) - rec.residual_at(L - 1, r) - rec.row(rec.attn_out[L][r], r)
                 - rec.row(rec.mlp_out[L][r], r))
            err = max(err, float(d.abs().max()))
    return err


@pytest.mark.parametrize("arch, block", [("gpt_neox", "parallel"), ("gpt_neox_sequential", "pre-norm"),
                                         ("opt", "pre-norm")])
def test_config_dependent_layouts_split_exactly(tiny_model_of, arch, block):
    """GPT-NeoX (parallel or sequential residual) and pre-LN OPT: the two writes add up to the change."""
    m = tiny_model_of(arch)
    assert m.arch.block.name == block and m.arch.block.additive
    assert _split_error(m, _prompts(m)) <= TOL


def test_post_ln_blocks_are_refused(tiny_model_of, tmp_path, monkeypatch):
    """OPT-350m's layout normalizes after the residual sum: the split is wrong there, so it is refused
    with one line naming the layout, before any model is run and before anything is written."""
    import analyses.thought_control as tc

    m = tiny_model_of("opt_post_ln")
    assert m.arch.block.name == "post-LN" and not m.arch.block.additive
    assert _split_error(m, _prompts(m)) > 1e-3  # non-vacuity: the split really fails on this layout
    with pytest.raises(ArchitectureError, match=r"^the thought-control decomposition splits .*'opt' has post-LN "
                                                r"blocks") as e:
        tc.contributions(m, n_pairs=2)
    assert "\n" not in str(e.value)
    calls = []
    monkeypatch.setattr(tc, "contributions", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(ArchitectureError, match="post-LN"):
        tc.run([tiny_model_of("llama"), m], out_dir=tmp_path / "tc", png=False)
    assert calls == [] and not (tmp_path / "tc").exists()


@pytest.mark.parametrize("arch", ["gemma2", "olmo2", "gemma3"])
def test_thought_control_split_is_exact_on_post_norm_blocks(tiny_model_of, arch):
    """On sandwich/post-norm blocks the attention and MLP parts of thought control add up to the change of
    the projection exactly (they are projections of the post-norm outputs)..."""
    from analyses.thought_control import contributions

    m = tiny_model_of(arch)
    c, meta = contributions(m, n_pairs=2)
    for L in range(1, m.arch.n_layers):
        assert c.delta[L].mean == pytest.approx(c.attention[L].mean + c.mlp[L].mean, abs=1e-5), L
    # ... while the raw module outputs (before the post-norms) do not add up to the residual change
    hf, raw = m.hf, {}
    block = hf.model.layers[1]
    hooks = [block.self_attn.register_forward_hook(lambda mod, a, o: raw.__setitem__("attn", o[0])),
             block.mlp.register_forward_hook(lambda mod, a, o: raw.__setitem__("mlp", o))]
    try:
        with torch.no_grad():
            hs = hf(torch.tensor([_prompts(m)[0].input_ids]), output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    assert float((hs[2] - hs[1] - raw["attn"] - raw["mlp"]).abs().max()) > 1e-2


def _replace_output_hook(value):
    def fn(module, args, out):
        return torch.zeros_like(out) + value.to(out.dtype)
    return fn


@pytest.mark.parametrize("arch, module", [("gemma2", "post_feedforward_layernorm"), ("olmo2", "post_feedforward_layernorm"),
                                          ("gemma3", "post_feedforward_layernorm"), ("phi3", "mlp"), ("opt", "fc2")])
def test_mlp_mean_ablation_replaces_the_write(tiny_model_of, arch, module):
    """A mean MLP ablation sets the MLP's *write* (the post-norm output where there is one, OPT's flattened
    fc2 output) to the mean; in the batch, rows=(1,) touches only row 1."""
    m = tiny_model_of(arch)
    prompts = _prompts(m)
    value = torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(3))
    rec = forward(m, prompts, ablations=[MLPAblation(1, "mean", value, rows=(1,))])
    clean = forward(m, prompts)
    blocks = m.hf.model.decoder.layers if arch == "opt" else m.hf.model.layers
    handle = getattr(blocks[1], module).register_forward_hook(_replace_output_hook(value))
    try:
        with torch.no_grad():
            ref = m.hf(torch.tensor([prompts[1].input_ids])).logits[0]
    finally:
        handle.remove()
    got = rec.row(rec.logits[1], 1)
    assert float((got - ref).abs().max()) <= TOL
    assert float((got - clean.row(clean.logits[1], 1)).abs().max()) > 1e-3
    assert float((rec.row(rec.logits[0], 0) - clean.row(clean.logits[0], 0)).abs().max()) <= TOL


@pytest.mark.parametrize("arch", ["gemma2", "olmo2", "opt"])
def test_mlp_patch_with_its_own_recorded_write_is_identity(tiny_model_of, arch):
    """What components=True records is what MLP ablations overwrite (circuits' mean/patch values go back
    where they came from): patching a layer's MLP write with its own recording changes nothing, while
    patching it with layer 2's write does."""
    m = tiny_model_of(arch)
    prompts = _prompts(m)
    # every module a step reads, in execution order: o_proj input, attention weights, the writes, the residual
    rec = forward(m, prompts, record=RecordSpec(layers=[1, 2], components=True, attention=True, head_outputs=True))
    assert rec.attention[1].shape[:2] == (2, m.arch.n_heads) and rec.head_outputs[1].shape[2] == m.arch.n_heads
    same = forward(m, prompts, ablations=[MLPAblation(1, "patch", rec.mlp_out[1])])
    other = forward(m, prompts, ablations=[MLPAblation(1, "patch", rec.mlp_out[2])])
    for r in range(2):
        assert float((same.row(same.logits[r], r) - rec.row(rec.logits[r], r)).abs().max()) <= TOL
    assert float((other.logits - rec.logits).abs().max()) > 1e-3


def test_phi3_qk_features_equal_logits_from_the_fused_projection(tiny_model_of):
    """Concordance heads' QK contrast is derived from attention weights, so a fused qkv_proj needs no special
    case: on Phi-3 it equals the contrast of raw QK logits computed by splitting qkv_proj's output."""
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    from analyses.concordance import qk_contrast

    m = tiny_model_of("phi3")
    hf, H, KV, hd = m.hf, m.arch.n_heads, m.arch.n_kv_heads, m.arch.head_dim
    p = _prompts(m)[0]
    T, (s0, s1), q_pos = len(p), (2, 6), list(range(8, len(p)))
    rec = forward(m, [p], record=RecordSpec(layers=[2], attention=True))
    seen = {}
    attn = hf.model.layers[2].self_attn
    handle = attn.register_forward_pre_hook(lambda mod, a, kw: seen.update(x=kw["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad():
            hf(torch.tensor([p.input_ids]))
            qkv = attn.qkv_proj(seen["x"])[0]  # [T, (H + 2 KV) hd]: q | k | v
            q = qkv[:, :H * hd].reshape(T, H, hd).transpose(0, 1)[None]
            k = qkv[:, H * hd:(H + KV) * hd].reshape(T, KV, hd).transpose(0, 1)[None]
            cos, sin = hf.model.rotary_emb(seen["x"], torch.arange(T)[None])
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
    finally:
        handle.remove()
    weights = rec.attention[2][0]  # [H, T, T]
    for h in range(H):
        logits = (q[0, h] @ k[0, h // (H // KV)].T) * hd ** -0.5  # [T, T]
        for qi in q_pos:
            mask = torch.zeros(qi, dtype=torch.bool)
            mask[s0:s1] = True
            want = logits[qi, :qi][mask].mean() - logits[qi, :qi][~mask].mean()
            got = qk_contrast(weights[h, qi, :qi], mask)
            assert float(got) == pytest.approx(float(want), abs=1e-3), (h, qi)


@pytest.mark.parametrize("arch", ["olmo2", "opt"])
def test_write_recording_and_mlp_ablation_serialize_for_ndif(tiny_model_of, arch):
    """The post-norm write (OLMo-2) and the flattened MLP output (OPT) go through nnsight's remote="local"
    serialization unchanged: same logits and same recorded writes as local execution."""
    import dataclasses

    m = tiny_model_of(arch)
    sim = dataclasses.replace(m, simulate_remote=True)
    value = torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(4))
    kw = dict(record=RecordSpec(layers=[1], components=True), ablations=[MLPAblation(1, "mean", value, rows=(1,))])
    local, remote = forward(m, _prompts(m), **kw), forward(sim, _prompts(m), **kw)
    assert torch.equal(local.logits, remote.logits)
    assert torch.equal(local.attn_out[1], remote.attn_out[1]) and torch.equal(local.mlp_out[1], remote.mlp_out[1])
