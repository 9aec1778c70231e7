"""Recording and interventions on tiny random models, checked against independent references.

Every reference here is computed with plain Hugging Face calls and plain torch hooks on
modules reached by their literal paths (``model.layers[i].self_attn`` / ``transformer.h[i].attn``),
one *unpadded* prompt at a time; the code under test runs under nnsight on left-padded
batches. Each intervention comparison is paired with a check that the intervention really
changes the output, so that equality is informative.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from introspect_mech.execution import forward, generate
from introspect_mech.inject import Injection, Window
from introspect_mech.interventions import HeadAblation, ResidualPatch
from introspect_mech.prompts import render
from introspect_mech.record import RecordSpec, head_contributions, o_proj_bias

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_any):
    """Every test here runs on all nine tiny architectures (conftest's four plus mistral, qwen3, gemma2, phi3, olmo2)."""
    return tiny_model_any

TOL = 1e-5
# KV-cached decode steps of a left-padded batch vs one unpadded row: attention sums run over other widths, so
# float32 rounding differs; measured up to 7.6e-6 (llama) and 1.3e-5 (mistral) on values of magnitude up to ~20.
# A wrong position, window or per-step injection moves them by more than 1e-2.
STEP_TOL = 3e-5
CHANGED = 1e-3  # an intervention that "changes the logits" moves some logit by more than this

TEXTS = (
    "Tell me about dust",
    "The old clock on the wall ticked loudly. Do you detect an injected thought?",
    "Hi",
)


# ---------------------------------------------------------------------------------------
# Independent references: literal module paths, plain torch hooks, unpadded single rows
# ---------------------------------------------------------------------------------------


def blocks(hf):
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def attn_module(hf, layer):
    b = blocks(hf)[layer]
    return b.attn if hasattr(hf, "transformer") else b.self_attn


def o_proj_module(hf, layer):
    a = attn_module(hf, layer)
    return a.c_proj if hasattr(hf, "transformer") else a.o_proj


def final_norm_module(hf):
    return hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, h):
    return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h


@contextmanager
def hooks(*pairs):
    """Register (module, kind, fn) hooks for the duration of the block; kind is 'fwd' or 'pre'."""
    handles = []
    try:
        for module, kind, fn in pairs:
            handles.append(module.register_forward_hook(fn) if kind == "fwd" else module.register_forward_pre_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def add_hook(start, end, delta, captured=None):
    """Decoder-layer forward hook adding ``delta`` at positions [start, end), tracking positions
    itself across KV-cached calls (prefill sees T tokens, step k sees 1 token at T+k-1)."""
    state = {"seen": 0}

    def fn(module, args, out):
        h = _first(out)
        s = h.shape[1]
        pos = torch.arange(state["seen"], state["seen"] + s)
        state["seen"] += s
        m = ((pos >= start) & (pos < end)).to(h.dtype)
        h = h + m[None, :, None] * delta.to(h.dtype)
        if captured is not None:
            captured.append(h.detach().clone())
        return _replace_first(out, h)

    return fn


def hf_run(model, prompt, *pairs, **kw):
    """Plain HF forward of one unpadded prompt with the given hooks; returns the HF output."""
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad(), hooks(*pairs):
        return model.hf(input_ids=ids, **kw)


def prompts_for(model, texts=TEXTS):
    return [render(model.tokenizer, [{"role": "user", "content": t}]) for t in texts]


def rand_vec(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g) * scale


def maxdiff(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max())


@pytest.fixture(scope="module")
def clean(tiny_model):
    """Padded-batch recording of everything, plus per-row plain HF outputs of the same prompts."""
    prompts = prompts_for(tiny_model)
    lens = {len(p) for p in prompts}
    assert len(lens) == len(prompts), "test prompts must have different lengths (left padding)"
    rec = forward(tiny_model, prompts, record=RecordSpec(layers=None, attention=True, head_outputs=True))
    refs = [hf_run(tiny_model, p, output_hidden_states=True, output_attentions=True) for p in prompts]
    return prompts, rec, refs


# ---------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------


def test_batch_is_left_padded(tiny_model, clean):
    prompts, rec, _ = clean
    width = max(len(p) for p in prompts)
    assert [int(x) for x in rec.batch.pad] == [width - len(p) for p in prompts]
    assert rec.logits.shape == (3, width, tiny_model.hf.config.vocab_size)


def test_residuals_equal_hf_hidden_states(tiny_model, clean):
    prompts, rec, refs = clean
    n = tiny_model.hf.config.num_hidden_layers
    assert rec.layers == list(range(n))
    for r, (p, ref) in enumerate(zip(prompts, refs)):
        hs = ref.hidden_states
        assert len(hs) == n + 1
        for i in range(n - 1):
            got = rec.residual_at(i, r)
            assert got.shape == (len(p), tiny_model.arch.d_model)
            assert maxdiff(got, hs[i + 1][0]) <= TOL, (r, i)
        # HF's last hidden state is after the final norm
        with torch.no_grad():
            normed = final_norm_module(tiny_model.hf)(rec.residual_at(n - 1, r)[None])[0]
        assert maxdiff(normed, hs[-1][0]) <= TOL
        assert maxdiff(rec.row(rec.logits[r], r), ref.logits[0]) <= TOL


def test_residual_layers_are_distinct(tiny_model, clean):
    """Non-vacuity: consecutive layers' residuals differ (a recording of one tensor n times would pass nothing)."""
    _, rec, _ = clean
    for i in range(tiny_model.arch.n_layers - 1):
        assert maxdiff(rec.residual_at(i, 0), rec.residual_at(i + 1, 0)) > CHANGED


def test_subset_of_layers_and_fractions(tiny_model, clean):
    prompts, _, refs = clean
    rec = forward(tiny_model, prompts, record=RecordSpec(layers=[0.0, -2]))
    assert rec.layers == [0, 1] and set(rec.residual) == {0, 1}
    for r in range(len(prompts)):
        assert maxdiff(rec.residual_at(1, r), refs[r].hidden_states[2][0]) <= TOL


def test_last_token_only(tiny_model, clean):
    prompts, _, refs = clean
    rec = forward(tiny_model, prompts, record=RecordSpec(layers=[1], last_token_only=True))
    assert rec.residual[1].shape == (3, 1, tiny_model.arch.d_model)
    assert rec.logits.shape[:2] == (3, 1)
    for r in range(len(prompts)):
        assert maxdiff(rec.residual[1][r, 0], refs[r].hidden_states[2][0, -1]) <= TOL
        assert maxdiff(rec.logits[r, 0], refs[r].logits[0, -1]) <= TOL


def test_cosine_with_vectors(tiny_model, clean):
    prompts, _, refs = clean
    n, d = tiny_model.arch.n_layers, tiny_model.arch.d_model
    shared = torch.stack([rand_vec(d, 61), rand_vec(d, 62)])  # [K, d]
    per_layer = torch.stack([torch.stack([rand_vec(d, 70 + 10 * k + L) for L in range(n)]) for k in range(2)])  # [K, n, d]
    for vecs in (shared, per_layer):
        rec = forward(tiny_model, prompts, record=RecordSpec(layers=[0, 1], cosine_with=vecs))
        for r in range(len(prompts)):
            for L in (0, 1):
                h = refs[r].hidden_states[L + 1][0]  # [T, d]
                v = vecs if vecs.ndim == 2 else vecs[:, L]
                want = torch.nn.functional.cosine_similarity(h[:, None, :], v[None, :, :], dim=-1)  # [T, K]
                assert maxdiff(rec.row(rec.cosine[L][r], r), want) <= 1e-5, (r, L)
            curve = rec.cosine_curve(r, positions=slice(1, 4))
            assert curve.shape == (2, 2)
            want0 = torch.nn.functional.cosine_similarity(
                refs[r].hidden_states[1][0, 1:4, None, :], (vecs if vecs.ndim == 2 else vecs[:, 0])[None], dim=-1).mean(0)
            assert maxdiff(curve[0], want0) <= 1e-5


def test_attention_equals_hf_output_attentions(tiny_model, clean):
    prompts, rec, refs = clean
    H = tiny_model.hf.config.num_attention_heads
    for r, (p, ref) in enumerate(zip(prompts, refs)):
        pad, T = int(rec.batch.pad[r]), len(p)
        for L in range(tiny_model.arch.n_layers):
            a = rec.attention[L][r]  # [H, Tpad, Tpad]
            assert a.shape[0] == H
            want = ref.attentions[L][0]
            assert want.shape == (H, T, T)
            assert maxdiff(a[:, pad:, pad:], want) <= TOL, (r, L)
            if pad:  # real tokens put no weight on padding
                assert float(a[:, pad:, :pad].abs().max()) == 0.0
            # rows are distributions
            assert maxdiff(a[:, pad:, pad:].sum(-1), torch.ones(H, T)) <= 1e-5


def test_attention_heads_differ(tiny_model, clean):
    _, rec, _ = clean
    a = rec.attention[0][1]
    assert maxdiff(a[0], a[1]) > CHANGED


def test_head_outputs_equal_o_proj_input(tiny_model, clean):
    prompts, rec, _ = clean
    arch = tiny_model.arch
    for L in range(arch.n_layers):
        for r, p in enumerate(prompts):
            seen = []
            hf_run(tiny_model, p, (o_proj_module(tiny_model.hf, L), "pre", lambda m, a: seen.append(a[0].clone())))
            got = rec.row(rec.head_outputs[L][r], r)
            assert got.shape == (len(p), arch.n_heads, arch.head_dim)
            assert maxdiff(got.reshape(len(p), -1), seen[0][0]) <= TOL


def test_head_contributions_sum_to_attention_output(tiny_model, clean):
    prompts, rec, _ = clean
    arch = tiny_model.arch
    for L in range(arch.n_layers):
        bias = o_proj_bias(tiny_model, L)
        ref_bias = o_proj_module(tiny_model.hf, L).bias
        assert (bias is None) == (ref_bias is None)
        for r, p in enumerate(prompts):
            seen = []
            hf_run(tiny_model, p, (attn_module(tiny_model.hf, L), "fwd", lambda m, a, o: seen.append(_first(o).clone())))
            heads = rec.row(rec.head_outputs[L][r], r)[None]  # [1, T, H, hd]
            contrib = head_contributions(tiny_model, L, heads)
            assert contrib.shape == (1, len(p), arch.n_heads, arch.d_model)
            total = contrib.sum(2) + (0 if bias is None else bias)
            assert maxdiff(total, seen[0]) <= TOL, (L, r)
            # a single head is not the whole output
            assert maxdiff(contrib[:, :, 0], seen[0]) > CHANGED


# ---------------------------------------------------------------------------------------
# Injection
# ---------------------------------------------------------------------------------------


def _inj_vec(model, seed=0):
    return rand_vec(model.arch.d_model, seed)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_injection_span_equals_hook(tiny_model, clean, layer):
    prompts, _, refs = clean
    p = prompts[0]
    v, s, (a, b) = _inj_vec(tiny_model, layer), 4.0, (3, 9)
    rec = forward(tiny_model, [p], [Injection(v, layer, s, Window(a, b))], record=RecordSpec(layers=[layer]))
    captured = []
    ref = hf_run(tiny_model, p, (blocks(tiny_model.hf)[layer], "fwd", add_hook(a, b, s * v, captured)))
    assert maxdiff(rec.logits[0], ref.logits[0]) <= TOL
    assert maxdiff(ref.logits[0], refs[0].logits[0]) > CHANGED
    # positions before the window see nothing
    assert maxdiff(ref.logits[0, :a], refs[0].logits[0, :a]) == 0.0
    # the residual is recorded after the injection at its layer
    assert maxdiff(rec.residual_at(layer, 0), captured[0][0]) <= TOL


def test_injection_from_position_equals_hook(tiny_model, clean):
    prompts, _, refs = clean
    p = prompts[1]
    v, s, a = _inj_vec(tiny_model, 7), 3.0, 10
    rec = forward(tiny_model, [p], [Injection(v, 1, s, Window.from_position(a))])
    ref = hf_run(tiny_model, p, (blocks(tiny_model.hf)[1], "fwd", add_hook(a, 10**9, s * v)))
    assert maxdiff(rec.logits[0], ref.logits[0]) <= TOL
    assert maxdiff(ref.logits[0, -1], refs[1].logits[0, -1]) > CHANGED


def test_injection_fractional_layer_and_scale_mode(tiny_model, clean):
    prompts, _, _ = clean
    p = prompts[0]
    # layer 0.5 on a 3-layer model is layer 1
    v = _inj_vec(tiny_model, 3)
    rec = forward(tiny_model, [p], [Injection(v, 0.5, 2.0, Window(2, 6))])
    ref = hf_run(tiny_model, p, (blocks(tiny_model.hf)[1], "fwd", add_hook(2, 6, 2.0 * v)))
    assert maxdiff(rec.logits[0], ref.logits[0]) <= TOL

    def scale_hook(m, a, out):
        h = _first(out).clone()
        h[:, 4:] = h[:, 4:] * 3.0
        return _replace_first(out, h)

    rec = forward(tiny_model, [p], [Injection.scaling(2, 3.0, Window.from_position(4))])
    ref = hf_run(tiny_model, p, (blocks(tiny_model.hf)[2], "fwd", scale_hook))
    assert maxdiff(rec.logits[0], ref.logits[0]) <= TOL


def test_injection_padded_batch_rows_equal_single_runs(tiny_model, clean):
    prompts, _, refs = clean
    d = tiny_model.arch.d_model
    specs = [
        (rand_vec(d, 11), 1, 4.0, Window(2, 8)),
        (rand_vec(d, 12), 0, 2.0, Window.from_position(5)),
        None,  # a clean row in the same batch
    ]
    injs = [None if sp is None else Injection(sp[0], sp[1], sp[2], sp[3]) for sp in specs]
    rec = forward(tiny_model, prompts, injs)
    for r, (p, sp) in enumerate(zip(prompts, specs)):
        got = rec.row(rec.logits[r], r)
        if sp is None:
            assert maxdiff(got, refs[r].logits[0]) <= TOL
            continue
        v, L, s, w = sp
        ref = hf_run(tiny_model, p, (blocks(tiny_model.hf)[L], "fwd", add_hook(w.start, w.end_or_inf, s * v)))
        assert maxdiff(got, ref.logits[0]) <= TOL, r
        assert maxdiff(ref.logits[0], refs[r].logits[0]) > CHANGED


def test_several_injections_per_row(tiny_model, clean):
    """Two overlapping injections at one layer plus one at another, in one row of a padded batch."""
    prompts, _, refs = clean
    d = tiny_model.arch.d_model
    v1, v2, v3, v4 = (rand_vec(d, k) for k in (81, 82, 83, 84))
    injs = [
        [Injection(v1, 1, 2.0, Window(2, 8)), Injection(v2, 1, 3.0, Window(5, 12)), Injection(v3, 0, 1.5, Window(1, 4))],
        None,
        Injection(v4, 1, 2.5, Window.from_position(1)),
    ]
    rec = forward(tiny_model, prompts, injs)
    b = blocks(tiny_model.hf)
    ref0 = hf_run(tiny_model, prompts[0], (b[1], "fwd", add_hook(2, 8, 2.0 * v1)), (b[1], "fwd", add_hook(5, 12, 3.0 * v2)),
                  (b[0], "fwd", add_hook(1, 4, 1.5 * v3)))
    ref2 = hf_run(tiny_model, prompts[2], (b[1], "fwd", add_hook(1, 10**9, 2.5 * v4)))
    assert maxdiff(rec.row(rec.logits[0], 0), ref0.logits[0]) <= TOL
    assert maxdiff(rec.row(rec.logits[1], 1), refs[1].logits[0]) <= TOL
    assert maxdiff(rec.row(rec.logits[2], 2), ref2.logits[0]) <= TOL
    # dropping any one of row 0's injections gives a different result
    ref0_partial = hf_run(tiny_model, prompts[0], (b[1], "fwd", add_hook(2, 8, 2.0 * v1)), (b[0], "fwd", add_hook(1, 4, 1.5 * v3)))
    assert maxdiff(ref0_partial.logits[0], ref0.logits[0]) > CHANGED
    assert len(rec.doses[0]) == 3 and all(x is not None and x > 0 for x in rec.doses[0])


def test_plain_string_prompts_are_raw_text_with_bos(tiny_model):
    texts = ["Human: Tell me about dust", "Hi there"]
    rec = forward(tiny_model, texts)
    for r, t in enumerate(texts):
        ids = tiny_model.tokenizer(t)["input_ids"]
        assert ids[0] == tiny_model.tokenizer.bos_token_id
        assert list(rec.batch.prompts[r].input_ids) == ids
        with torch.no_grad():
            want = tiny_model.hf(input_ids=torch.tensor([ids])).logits[0]
        assert maxdiff(rec.row(rec.logits[r], r), want) <= TOL


def test_injection_doses(tiny_model, clean):
    prompts, _, refs = clean
    v, s, L = _inj_vec(tiny_model, 5), 4.0, 1
    rec = forward(tiny_model, prompts[:2], [Injection(v, L, s, Window(1, 4)), None])
    h = refs[0].hidden_states[L + 1][0]  # clean output of layer L, unpadded
    mean_norm = h[1:].norm(dim=-1).mean()  # positions >= 1 (the first token is excluded)
    assert rec.doses[1] == []
    assert abs(rec.doses[0][0] - float(s * v.norm() / mean_norm)) <= 1e-4 * rec.doses[0][0]


def test_raw_format_injection_on_sentence_tokens(tiny_raw_model):
    m = tiny_raw_model
    assert not m.has_chat_template
    sentence = "The old clock on the wall ticked loudly."
    p = render(m.tokenizer, [{"role": "user", "content": f"Repeat the line below.\n\n{sentence}"}])
    assert p.fmt == "raw" and p.text == f"Human: Repeat the line below.\n\n{sentence}\n\nAssistant:"
    a, b = p.token_span_of(sentence)
    assert sentence in m.tokenizer.decode(p.input_ids[a:b])
    assert sentence not in m.tokenizer.decode(p.input_ids[a + 1:b])
    assert sentence not in m.tokenizer.decode(p.input_ids[a:b - 1])
    v = rand_vec(m.arch.d_model, 21)
    rec = forward(m, [p], [Injection(v, 1, 4.0, Window(a, b))])
    ref = hf_run(m, p, (blocks(m.hf)[1], "fwd", add_hook(a, b, 4.0 * v)))
    clean_ref = hf_run(m, p)
    assert maxdiff(rec.logits[0], ref.logits[0]) <= TOL
    assert maxdiff(ref.logits[0], clean_ref.logits[0]) > CHANGED


# ---------------------------------------------------------------------------------------
# Head ablation
# ---------------------------------------------------------------------------------------


def _zero_heads_pre_hook(heads, hd, value=None):
    def fn(module, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * hd:(h + 1) * hd] = 0 if value is None else value[h]
        return (x,) + tuple(args[1:])

    return fn


@pytest.mark.parametrize("layer, heads", [(0, (1,)), (1, (0, 3)), (2, (2,))])
def test_head_ablation_equals_o_proj_pre_hook(tiny_model, clean, layer, heads):
    prompts, _, refs = clean
    cfg = tiny_model.hf.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rec = forward(tiny_model, prompts, ablations=[HeadAblation(layer, heads)])
    for r, p in enumerate(prompts):
        ref = hf_run(tiny_model, p, (o_proj_module(tiny_model.hf, layer), "pre", _zero_heads_pre_hook(heads, hd)))
        got = rec.row(rec.logits[r], r)
        assert maxdiff(got, ref.logits[0]) <= TOL, r
        assert maxdiff(got, refs[r].logits[0]) > CHANGED  # planted: ablating a head changes logits


def test_head_ablation_noops(tiny_model, clean):
    prompts, _, refs = clean
    rec = forward(tiny_model, prompts, ablations=[HeadAblation(1, ())])
    for r in range(len(prompts)):
        assert maxdiff(rec.row(rec.logits[r], r), refs[r].logits[0]) <= TOL
    # rows=(1,): only row 1 is ablated
    rec = forward(tiny_model, prompts, ablations=[HeadAblation(1, (2,), rows=(1,))])
    for r in (0, 2):
        assert maxdiff(rec.row(rec.logits[r], r), refs[r].logits[0]) <= TOL
    assert maxdiff(rec.row(rec.logits[1], 1), refs[1].logits[0]) > CHANGED


def test_head_ablation_mean_mode(tiny_model, clean):
    prompts, _, refs = clean
    arch = tiny_model.arch
    mean = rand_vec(arch.n_heads * arch.head_dim, 31).reshape(arch.n_heads, arch.head_dim)
    rec = forward(tiny_model, prompts, ablations=[HeadAblation(0, (3,), mode="mean", mean=mean)])
    for r, p in enumerate(prompts):
        ref = hf_run(tiny_model, p, (o_proj_module(tiny_model.hf, 0), "pre",
                                     _zero_heads_pre_hook((3,), arch.head_dim, value=mean)))
        assert maxdiff(rec.row(rec.logits[r], r), ref.logits[0]) <= TOL
        assert maxdiff(ref.logits[0], refs[r].logits[0]) > CHANGED


def test_head_ablation_rejects_bad_head(tiny_model, clean):
    from introspect_mech.errors import LayerError

    prompts, _, _ = clean
    with pytest.raises(LayerError):
        forward(tiny_model, prompts, ablations=[HeadAblation(0, (tiny_model.arch.n_heads,))])


# ---------------------------------------------------------------------------------------
# Residual patching
# ---------------------------------------------------------------------------------------


def _overwrite_hook(pos, vector):
    def fn(module, args, out):
        h = _first(out).clone()
        h[:, pos] = vector.to(h.dtype)
        return _replace_first(out, h)

    return fn


@pytest.mark.parametrize("layer", [0, 1])
def test_patch_with_own_residual_is_identity(tiny_model, clean, layer):
    prompts, _, refs = clean
    r, pos = 1, 4
    own = refs[r].hidden_states[layer + 1][0, pos]
    rec = forward(tiny_model, prompts, patches=[ResidualPatch(layer, r, pos, own)])
    for i in range(len(prompts)):
        assert maxdiff(rec.row(rec.logits[i], i), refs[i].logits[0]) <= TOL


@pytest.mark.parametrize("layer", [0, 1])
def test_patch_from_source_equals_overwrite_hook(tiny_model, clean, layer):
    prompts, _, refs = clean
    src_row, src_pos = 1, 12  # source: a token of the long prompt
    tgt_row, tgt_pos = 0, 5  # target: the padded first prompt
    vector = refs[src_row].hidden_states[layer + 1][0, src_pos]
    rec = forward(tiny_model, prompts, patches=[ResidualPatch(layer, tgt_row, tgt_pos, vector)],
                  record=RecordSpec(layers=[layer]))
    ref = hf_run(tiny_model, prompts[tgt_row], (blocks(tiny_model.hf)[layer], "fwd", _overwrite_hook(tgt_pos, vector)))
    got = rec.row(rec.logits[tgt_row], tgt_row)
    assert maxdiff(got, ref.logits[0]) <= TOL
    assert maxdiff(got, refs[tgt_row].logits[0]) > CHANGED
    assert maxdiff(got[:tgt_pos], refs[tgt_row].logits[0, :tgt_pos]) == 0.0  # causal: earlier tokens untouched
    assert maxdiff(rec.residual_at(layer, tgt_row)[tgt_pos], vector) == 0.0
    for i in (1, 2):  # other rows untouched
        assert maxdiff(rec.row(rec.logits[i], i), refs[i].logits[0]) <= TOL


def test_patch_position_outside_row_raises(tiny_model, clean):
    prompts, _, _ = clean
    v = torch.zeros(tiny_model.arch.d_model)
    with pytest.raises(ValueError):
        forward(tiny_model, prompts, patches=[ResidualPatch(0, 2, len(prompts[2]), v)])


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------


def eos_ids(model):
    return {int(model.tokenizer.eos_token_id)}


def greedy_reference(model, prompt, n_new, inject=None, capture=()):
    """Hand-written KV-cached greedy loop.

    ``inject = (layer, start, end, delta)``: a decoder-layer hook adds ``delta`` wherever the
    token position is in [start, end), counting positions itself (prefill: T tokens, then one
    token per step). ``capture``: layers whose (post-injection) outputs are kept, one tensor per
    forward call. Returns (new tokens up to and including EOS, {layer: [tensor per call]}).
    """
    hf = model.hf
    caps = {L: [] for L in capture}
    pairs = []
    if inject is not None:
        L, start, end, delta = inject
        pairs.append((blocks(hf)[L], "fwd", add_hook(start, end, delta, caps.get(L))))
    for L in capture:
        if inject is None or L != inject[0]:
            pairs.append((blocks(hf)[L], "fwd", lambda m, a, o, L=L: caps[L].append(_first(o).detach().clone())))
    ids = torch.tensor([prompt.input_ids])
    out_tokens = []
    with torch.no_grad(), hooks(*pairs):
        out = hf(input_ids=ids, use_cache=True)
        for _ in range(n_new):
            nxt = int(out.logits[0, -1].argmax())
            out_tokens.append(nxt)
            if nxt in eos_ids(model) or len(out_tokens) == n_new:
                break
            out = hf(input_ids=torch.tensor([[nxt]]), cache=out.cache, use_cache=True)
    return out_tokens, caps


def no_cache_reference(model, prompt, n_new, inject):
    """The same greedy decode recomputing the whole sequence at every step (no KV cache)."""
    L, start, end, delta = inject
    seq = list(prompt.input_ids)
    toks = []
    for _ in range(n_new):
        with torch.no_grad(), hooks((blocks(model.hf)[L], "fwd", add_hook(start, end, delta))):
            logits = model.hf(input_ids=torch.tensor([seq]), use_cache=False).logits
        nxt = int(logits[0, -1].argmax())
        toks.append(nxt)
        seq.append(nxt)
        if nxt in eos_ids(model):
            break
    return toks


def _generated(gen, r, n):
    return gen.sequences[r, gen.batch.width:gen.batch.width + n].tolist()


def _check_steps(gen, r, caps):
    """Per-step recordings of row ``r`` equal the reference's per-call layer outputs."""
    pad = int(gen.batch.pad[r])
    for L, calls in caps.items():
        steps = [s.residual[L] for s in gen.recording]
        assert len(steps) >= len(calls) >= 1
        assert maxdiff(steps[0][r, pad:], calls[0][0]) <= TOL, (r, L, 0)  # prefill [B, Tpad, d]
        for k in range(1, len(calls)):
            assert steps[k].shape[1] == 1  # one token per KV-cached step
            assert maxdiff(steps[k][r], calls[k][0]) <= STEP_TOL, (r, L, k)


def test_generate_injection_through_generated_tokens(tiny_model, clean):
    prompts, _, _ = clean
    p, L, s, n = prompts[0], 1, 6.0, 5
    a = len(p) - 4  # starts inside the prompt, continues through every generated token
    inject = (L, a, 10**9, s * _inj_vec(tiny_model, 41))
    want, caps = greedy_reference(tiny_model, p, n, inject, capture=(L, 2))
    assert want == no_cache_reference(tiny_model, p, n, inject)
    gen = generate(tiny_model, [p], [Injection(_inj_vec(tiny_model, 41), L, s, Window.from_position(a))],
                   max_new_tokens=n, record=RecordSpec(layers=[L, 2]))
    assert _generated(gen, 0, len(want)) == want
    assert gen.new_tokens[0] == [t for t in want if t not in eos_ids(tiny_model)]
    assert gen.recording[0].residual[L].shape == (1, len(p), tiny_model.arch.d_model)
    _check_steps(gen, 0, caps)
    # planted: injecting in the prompt only (not at decode steps) is a different computation
    _, prompt_only = greedy_reference(tiny_model, p, n, (L, a, len(p), inject[3]), capture=(L,))
    assert len(caps[L]) > 1 and maxdiff(prompt_only[L][1], caps[L][1]) > CHANGED


def test_generate_window_ending_in_generated_tokens(tiny_model, clean):
    """Window [T-2, T+2): the last two prompt tokens and the first two generated ones, nothing after."""
    prompts, _, _ = clean
    p, L, s, n = prompts[2], 1, 6.0, 5
    T = len(p)
    inject = (L, T - 2, T + 2, s * _inj_vec(tiny_model, 43))
    want, caps = greedy_reference(tiny_model, p, n, inject, capture=(L,))
    assert want == no_cache_reference(tiny_model, p, n, inject)
    gen = generate(tiny_model, [p], [Injection(_inj_vec(tiny_model, 43), L, s, Window(T - 2, T + 2))],
                   max_new_tokens=n, record=RecordSpec(layers=[L]))
    assert _generated(gen, 0, len(want)) == want
    _check_steps(gen, 0, caps)


def test_generate_window_inside_prompt_only(tiny_model, clean):
    prompts, _, _ = clean
    p, L, s, (a, b), n = prompts[1], 0, 5.0, (3, 10), 5
    inject = (L, a, b, s * _inj_vec(tiny_model, 42))
    want, caps = greedy_reference(tiny_model, p, n, inject, capture=(L,))
    gen = generate(tiny_model, [p], [Injection(_inj_vec(tiny_model, 42), L, s, Window(a, b))], max_new_tokens=n,
                   record=RecordSpec(layers=[L]))
    assert _generated(gen, 0, len(want)) == want
    _check_steps(gen, 0, caps)
    clean_steps = greedy_reference(tiny_model, p, n, capture=(L,))[1][L]
    assert maxdiff(clean_steps[0][0, a:b], caps[L][0][0, a:b]) > CHANGED


def test_generate_padded_batch_rows_equal_single_runs(tiny_model, clean):
    prompts, _, _ = clean
    d, n = tiny_model.arch.d_model, 5
    T2 = len(prompts[2])
    specs = [
        (rand_vec(d, 51), 1, 6.0, Window.from_position(len(prompts[0]) - 3)),
        None,
        (rand_vec(d, 52), 2, 4.0, Window(2, T2 + 2)),  # the shortest (most padded) row; ends after 2 new tokens
    ]
    injs = [None if sp is None else Injection(*sp) for sp in specs]
    gen = generate(tiny_model, prompts, injs, max_new_tokens=n, record=RecordSpec(layers=[1, 2]))
    assert gen.sequences.shape[0] == 3
    for r, (p, sp) in enumerate(zip(prompts, specs)):
        inject = None if sp is None else (sp[1], sp[3].start, sp[3].end_or_inf, sp[2] * sp[0])
        want, caps = greedy_reference(tiny_model, p, n, inject, capture=(1, 2))
        assert _generated(gen, r, len(want)) == want, r
        _check_steps(gen, r, caps)
        # the prompt itself is kept, left padded
        pad = int(gen.batch.pad[r])
        assert gen.sequences[r, pad:gen.batch.width].tolist() == list(p.input_ids)


def test_generate_with_head_ablation(tiny_model, clean):
    prompts, _, _ = clean
    cfg = tiny_model.hf.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n, L, heads = 5, 1, (0, 2)
    gen = generate(tiny_model, prompts[:2], None, max_new_tokens=n, ablations=[HeadAblation(L, heads, rows=(1,))],
                   record=RecordSpec(layers=[2]))
    pre = (o_proj_module(tiny_model.hf, L), "pre", _zero_heads_pre_hook(heads, hd))
    for r, p in enumerate(prompts[:2]):
        if r == 1:
            with hooks(pre):
                want, caps = greedy_reference(tiny_model, p, n, capture=(2,))
        else:
            want, caps = greedy_reference(tiny_model, p, n, capture=(2,))
        assert _generated(gen, r, len(want)) == want, r
        _check_steps(gen, r, caps)
    with hooks(pre):
        _, ablated = greedy_reference(tiny_model, prompts[0], n, capture=(2,))
    _, plain = greedy_reference(tiny_model, prompts[0], n, capture=(2,))
    assert maxdiff(ablated[2][0], plain[2][0]) > CHANGED


def test_generate_survives_every_row_stopping_before_max_new_tokens(tiny_model, clean):
    """When all rows hit EOS early, the statements after nnsight's bounded step loop never run; the
    recording and the doses must not depend on them (the run used to end in UnboundLocalError)."""
    prompts, _, _ = clean
    p, L = prompts[0], 1
    first = generate(tiny_model, [p], max_new_tokens=1).sequences[0, -1].item()  # the greedy first token
    inj = Injection(_inj_vec(tiny_model, 41), L, 0.0, Window.from_position(len(p) - 1))  # strength 0: same tokens
    gen = generate(tiny_model, [p, p], [None, inj], max_new_tokens=6, eos_token_id=first,
                   record=RecordSpec(layers=[L]))
    assert gen.sequences.shape[1] == gen.batch.width + 1  # stopped after one step of six
    assert gen.doses[1][0] == 0.0 and gen.doses[0] == []
    assert gen.recording[0].residual[L].shape[:2] == (2, len(p))


def test_forward_without_logits_stops_after_the_last_layer_it_needs(tiny_model):
    """``logits=False``: the pass stops after the highest recorded/edited layer (the layers above and the LM
    head never run) and records exactly what a full pass records."""
    m = tiny_model
    n = m.arch.n_layers
    ps = prompts_for(m)
    calls: list[int] = []
    handle = m.arch.layer(m.hf, n - 1).register_forward_hook(lambda *_: calls.append(1))
    try:
        v = torch.randn(m.arch.d_model) * 3
        inj = [Injection(v, 0, 2.0, Window(1, None)) for _ in ps]
        short = forward(m, ps, inj, record=RecordSpec(layers=[1], residual=True, logits=False))
        assert calls == [], "the last layer ran although nothing above layer 1 was needed"
        full = forward(m, ps, inj, record=RecordSpec(layers=[1], residual=True, logits=True))
        assert calls == [1]
    finally:
        handle.remove()
    assert torch.equal(short.residual[1], full.residual[1])
    assert short.ref_norms.keys() == full.ref_norms.keys()
    assert all(torch.equal(short.ref_norms[L], full.ref_norms[L]) for L in short.ref_norms)
