"""Concordance heads (Exp 3): attention features vs a direct HF computation, a planted head, the
packed reply scoring vs Exp 3's own logit measure, and the causal harness; one real-model run."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from analyses import concordance as ch
from analyses.circuits import Head
from introspect_mech.reply_scoring import packing_supported
from introspect_mech.experiments.prefill_intent.protocol import PrefillIntent
from introspect_mech.experiments.prefill_intent.config import PrefillIntentConfig
from introspect_mech.models import wrap
from introspect_mech.runner import TrialInput

pytestmark = pytest.mark.usefixtures("single_thread")

INJ_LAYER, STRENGTH = 0, 4.0


@pytest.fixture(scope="module")
def llama_exp(tiny_model_of):
    m = tiny_model_of("llama")
    exp = PrefillIntent(m, PrefillIntentConfig(layers=[INJ_LAYER], strengths=[STRENGTH], n_pairs=3, measure="logits"))
    exp.prepare(m)
    return m, exp, ch.exp3_pairs(exp, range(3), INJ_LAYER)


# ---- features -----------------------------------------------------------------------------


def test_qk_contrast_equals_the_raw_logit_contrast_and_ignores_per_query_shifts():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 3, 11, generator=g, dtype=torch.float64) * 3  # [layers, heads, keys]
    mask = torch.zeros(11, dtype=torch.bool)
    mask[4:8] = True
    want = s[..., mask].mean(-1) - s[..., ~mask].mean(-1)
    got = ch.qk_contrast(torch.softmax(s, -1), mask)
    shifted = ch.qk_contrast(torch.softmax(s + torch.randn(5, 3, 1, generator=g, dtype=torch.float64) * 10, -1), mask)
    assert torch.allclose(got, want, atol=1e-10) and torch.allclose(shifted, want, atol=1e-10)
    with pytest.raises(ValueError):
        ch.qk_contrast(torch.softmax(s, -1), torch.ones(11, dtype=torch.bool))


def _reference_features(model, item, inject: bool):
    """Independent reference: HF forward of the single (unpadded) prompt with output_attentions, the
    injection added by a forward hook on the decoder layer, features by plain loops."""
    hf = model.hf
    s0, s1 = item.sentence
    w0, w1 = item.word
    handle = None
    if inject:
        def hook(_mod, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[:, s0:s1] += STRENGTH * item.vector.to(h.dtype)
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        handle = hf.model.layers[INJ_LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = hf(torch.tensor([item.prompt.input_ids]), output_attentions=True)
    finally:
        if handle is not None:
            handle.remove()
    n_layers, n_heads = len(out.attentions), out.attentions[0].shape[1]
    ref = torch.zeros(3, n_layers, n_heads, dtype=torch.float64)
    last = len(item.prompt) - 1
    for L, A in enumerate(out.attentions):
        A = A[0].double()
        for h in range(n_heads):
            ref[0, L, h] = sum(float(A[h, last, j]) for j in range(w0, w1))
            ref[1, L, h] = sum(float(A[h, last, j]) for j in range(s0, s1))
            cs = []
            for q in range(w0, w1):
                sent = [math.log(float(A[h, q, j])) for j in range(q) if s0 <= j < s1]
                other = [math.log(float(A[h, q, j])) for j in range(q) if not s0 <= j < s1]
                cs.append(sum(sent) / len(sent) - sum(other) / len(other))
            ref[2, L, h] = sum(cs) / len(cs)
    return ref


def test_features_match_a_direct_hf_computation(llama_exp):
    m, exp, items = llama_exp
    assert len({len(it.prompt) for it in items}) > 1  # some rows are left-padded in the batch
    f = ch.head_attention_features(m, exp, [0, 1, 2], INJ_LAYER, STRENGTH)
    assert f.none.shape == (3, 3, m.arch.n_layers, m.arch.n_heads) and f.floored_fraction == 0.0
    assert f.other is not None and f.other.shape == f.none.shape
    for r, it in enumerate(items):
        for cond, got in (("none", f.none), ("matched", f.matched), ("other", f.other)):
            ref = _reference_features(m, it if cond != "other" else it.as_other(), inject=(cond != "none"))
            assert torch.allclose(got[:2, r], ref[:2], atol=2e-5), (cond, r)
            assert torch.allclose(got[2, r], ref[2], atol=2e-3), (cond, r)
    # the vector enters after layer INJ_LAYER: heads there and before cannot change
    assert f.diff()[:, :, :INJ_LAYER + 1].abs().max() < 1e-5
    assert f.diff()[:, :, INJ_LAYER + 1:].abs().max() > 1e-3
    # explicit PairInputs (chunked, no control) give the same arrays
    f2 = ch.head_attention_features(m, None, items, INJ_LAYER, STRENGTH, batch_size=2, control=False)
    assert torch.allclose(f2.matched, f.matched, atol=1e-5) and torch.allclose(f2.none, f.none, atol=1e-5)
    assert f2.other is None and "other_change" not in f2.top("attn_word", 1)[0]
    top = f.top("qk_sentence", 2)[0]
    c = f.change("qk_sentence", a="other", b="none")
    assert top["other_change"]["mean"] == pytest.approx(float(c["mean"][top["layer"], top["head"]]))


@pytest.fixture(scope="module")
def planted(tiny_model_of):
    """A tiny Qwen2 copy whose head (2, 0) has a constant query and keys reading the injected direction,
    so under injection it attends from everywhere to the sentence tokens."""
    base = tiny_model_of("qwen2")
    hf = copy.deepcopy(base.hf)
    hd = base.arch.head_dim
    e = hd // 2 - 1  # the slowest RoPE pair: rotation over ~130 tokens is negligible
    g = torch.Generator().manual_seed(0)
    v = torch.randn(base.arch.d_model, generator=g)
    u = v / v.norm()
    with torch.no_grad():
        at = hf.model.layers[2].self_attn
        at.q_proj.weight[0:hd] = 0
        at.q_proj.bias[0:hd] = 0
        at.q_proj.bias[e] = 2.0
        for d in (hd + e, hd + e + hd // 2):  # head 1 shares the KV head: make it blind to the planted key dims
            at.q_proj.weight[d] = 0
            at.q_proj.bias[d] = 0
        at.k_proj.weight[0:hd] = 0
        at.k_proj.bias[0:hd] = 0
        at.k_proj.weight[e] = 2.0 * u
    m = wrap(hf, base.tokenizer, name="planted-concordance", attention=True)
    exp = PrefillIntent(m, PrefillIntentConfig(layers=[INJ_LAYER], strengths=[STRENGTH], n_pairs=4, measure="logits"))
    exp.prepare(m)
    items = [replace(it, vector=v) for it in ch.exp3_pairs(exp, range(4), INJ_LAYER)]
    return m, items


def test_planted_head_ranks_first(planted):
    m, items = planted
    f = ch.head_attention_features(m, None, items, INJ_LAYER, STRENGTH)
    for feat in ("attn_sentence", "qk_sentence"):
        top = f.top(feat, 3)
        assert (top[0]["layer"], top[0]["head"]) == (2, 0), (feat, top)
        assert top[0]["lo"] > 0 and abs(top[0]["mean_change"]) > 3 * abs(top[1]["mean_change"])
    assert f.top("attn_sentence", 1)[0]["mean_change"] > 0.5
    assert [d["head"] for d in f.top("attn_sentence", 2, by="increase")][0] == 0


# ---- the metric and the causal test -----------------------------------------------------------


def test_packed_reply_scoring_matches_execute_logits(llama_exp, tiny_model_of):
    m, exp, items = llama_exp
    inputs = {"matched": [TrialInput(it.prompt, [it.injection(INJ_LAYER, STRENGTH)], 5, {}) for it in items],
              "none": [TrialInput(it.prompt, [], 5, {}) for it in items]}
    for packed in (True, False):
        met = ch.IntentLogOdds(m, items, INJ_LAYER, STRENGTH, conditions=("matched", "none"), packed=packed,
                               batch_size=5)
        pp = met.per_pair([])
        for cond, xs in inputs.items():
            ref = torch.tensor([r["intent_logodds"] for r in exp.execute_logits(m, xs)], dtype=torch.float64)
            assert torch.allclose(pp[cond], ref, atol=1e-4), (packed, cond, pp[cond], ref)
    # a custom 4D mask would bypass sliding windows: those models score separate rows
    assert packing_supported(m) and not packing_supported(tiny_model_of("gemma3"))


def test_causal_harness_gives_effects_and_p_values(llama_exp):
    m, _exp, items = llama_exp
    met = ch.IntentLogOdds(m, items[:2], INJ_LAYER, STRENGTH, conditions=("matched", "none"))
    base = met.per_pair([])
    heads = [Head(2, 1), Head(1, 3)]
    for interv in ("zero", "mean", "patch"):
        res = ch.causal_test(m, met, heads, intervention=interv, n_null=3, seed=1, baseline=base)
        r = res["results"]["intent_logodds_matched"]
        assert r["n_null"] == 3 and r["p_value"] in (0.25, 0.5, 0.75, 1.0) and math.isfinite(r["effect"])
        assert set(res["results"]) == {"intent_logodds_matched", "intent_logodds_none", "injection_effect"}
        assert all(L in (1, 2) for s in res["null_head_sets"] for L, _h in s)  # same layers as the heads
        assert all(sorted(map(tuple, s)) != sorted((h.layer, h.head) for h in heads) for s in res["null_head_sets"])
        if interv == "patch":  # the no-injection run is the patch source: none rows do not move
            assert res["results"]["intent_logodds_none"]["effect"] == pytest.approx(0, abs=1e-6)
    # the harness's own sampler (any layer) through test_hypothesis
    res = ch.causal_test(m, met, heads, intervention="zero", n_null=3, null="any", baseline=base)
    assert len(res["null_head_sets"]) == 3 and 0 < res["results"]["intent_logodds_matched"]["p_value"] <= 1
    # patching a head at or before the injection layer is an exact no-op
    res = ch.causal_test(m, met, [Head(INJ_LAYER, 0)], intervention="patch", n_null=1, baseline=base)
    assert res["results"]["intent_logodds_matched"]["effect"] == pytest.approx(0, abs=1e-6)


def test_planted_head_zero_ablation_is_extreme_vs_null(planted):
    m, items = planted
    met = ch.IntentLogOdds(m, items[:2], INJ_LAYER, STRENGTH)
    res = ch.causal_test(m, met, [Head(2, 0)], intervention="patch", n_null=5, seed=0)
    r = res["results"]["intent_logodds_matched"]
    # only 3 other heads share layer 2: the null is all of them (exact), not 5 draws with repeats
    assert r["n_null"] == 3 and r["min_p"] == pytest.approx(1 / 4) and 1 / 4 <= r["p_value"] <= 1 and r["effect"] != 0
    assert sorted(tuple(map(tuple, s)) for s in res["null_head_sets"]) == [((2, 1),), ((2, 2),), ((2, 3),)]
    assert "all 3 possible sets" in r["null_kind"]


def test_downstream_null_sets_are_distinct_or_exhaustive(llama_exp):
    m = llama_exp[0]
    after = [Head(L, h) for L in range(INJ_LAYER + 1, m.arch.n_layers) for h in range(m.arch.n_heads)]
    few = ch.downstream_null(m, [after[0]], INJ_LAYER, n_null=50, seed=0).sets
    assert sorted((s[0].layer, s[0].head) for s in few) == [(h.layer, h.head) for h in after[1:]]  # each once
    many = ch.downstream_null(m, after[:2], INJ_LAYER, n_null=5, seed=0).sets
    assert len({tuple(s) for s in many}) == 5 and all(not set(s) & set(after[:2]) for s in many)


def test_run_writes_summary_and_figures_on_a_tiny_model(tiny_model_of, tmp_path):
    m = tiny_model_of("llama")
    s = ch.run(m, n_pairs=2, injection_layer=INJ_LAYER, strength=STRENGTH, k=2, n_null=2, out_dir=tmp_path,
               png=False, interventions=("zero", "patch"))
    d = json.loads((tmp_path / "concordance_summary.json").read_text())
    assert d["config"]["k"] == 2 and len(d["hypothesis_heads"]) == 2
    for f in ch.FEATURES:
        assert len(d["features"][f]["top"]) == 2 and "matched_minus_other" in d["features"][f]["top"][0]
    assert set(d["causal"]) == {"zero", "patch"}
    assert "injection_effect_other_concept" in d["behaviour"]
    for name in ("concordance_heatmap", "concordance_top_heads", "concordance_causal"):
        assert (tmp_path / f"{name}.html").exists()
    assert (tmp_path / "concordance_features.npz").exists() and s["seconds"] > 0
    assert d["config"]["causal_pair_indices"] == [0, 1]
    # defaults: heads ranked by the QK concordance contrast (named), same-layer random heads, interventions
    # from the sentence on, and every p with its minimum attainable p
    assert d["config"]["rank_feature"] == "qk_sentence" and "QK" in d["config"]["rank_feature_title"]
    # the floor is the test's own: 1 / (1 + the number of distinct null sets), at most n_null of them
    floors = {r["min_p"] for c in d["causal"].values() for r in c["results"].values()}
    assert d["config"]["null"] == "same_layers" and d["config"]["min_attainable_p"] == max(floors) >= 1 / 3
    assert d["config"]["ablation_start"] == s["config"]["ablation_start"] > 0
    for c in d["causal"].values():
        r = c["results"]["intent_logodds_matched"]
        assert r["min_p"] == pytest.approx(1 / (1 + len(c["null_head_sets"])))
        assert len(c["null_head_sets"]) <= 2 and r["hypothesis"]["start"] == d["config"]["ablation_start"]
        assert "median" in r["p_method"] and c["null_kind"].startswith("random other heads")
        hyp_layers = {L for L, _h in d["hypothesis_heads"]}
        assert all(L in hyp_layers for hs in c["null_head_sets"] for L, _h in hs)
    (tmp_path / "concordance_heatmap.html").unlink()
    assert set(ch.redraw(tmp_path, png=False)) == {"heatmap", "top_heads", "causal"}
    assert (tmp_path / "concordance_heatmap.html").exists()
    s2 = ch.run(m, n_pairs=2, injection_layer=INJ_LAYER, strength=STRENGTH, k=1, n_null=1, out_dir=tmp_path / "ho",
                png=False, interventions=("patch",), held_out=True, causal_pairs=1)
    assert s2["config"]["causal_pair_indices"] == [2] and len(s2["behaviour"]["per_pair"]["none"]) == 1


@pytest.mark.integration
def test_main_on_the_real_model(tmp_path):
    out = tmp_path / "conc"
    rc = ch.main(["--n-pairs", "2", "--n-null", "2", "--k", "2", "--out", str(out), "--no-png"])
    assert rc == 0
    d = json.loads((out / "concordance_summary.json").read_text())
    assert d["config"]["model"] == "smollm2-135m-instruct" and d["config"]["injection_layer"] == 14
    assert d["config"]["packed_replies"] is True
    for f in ch.FEATURES:
        top = d["features"][f]["top"]
        assert len(top) == 2 and all(t["layer"] > 14 for t in top if t["mean_change"] != 0)
    for interv in ("zero", "patch"):
        r = d["causal"][interv]["results"]["intent_logodds_matched"]
        assert r["n_null"] == 2 and 0 < r["p_value"] <= 1 and math.isfinite(r["effect"])
    assert math.isfinite(d["behaviour"]["injection_effect"]["mean"])
    for name in ("concordance_heatmap", "concordance_top_heads", "concordance_causal"):
        assert (out / f"{name}.html").exists()
