"""Exp 3's generation-free measure vs a plain PyTorch reference (one HF forward per prompt+reply,
injection by a forward hook), packed (Llama) and unpacked (Gemma 3, sliding windows)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from introspect_mech.experiments.prefill_intent.measure import APOLOGY_REPLIES, INTENT_REPLIES
from introspect_mech.experiments.prefill_intent.config import PrefillIntentConfig
from introspect_mech.experiments.prefill_intent.protocol import PrefillIntent
from introspect_mech.prompts import encode_text
from introspect_mech.reply_scoring import packing_supported

pytestmark = pytest.mark.usefixtures("single_thread")


def _reference_logodds(m, x) -> float:
    """log-sum-exp over intent replies minus over apology replies, each reply scored in its own row."""
    (inj,) = x.injections or (None,)
    layer = m.arch.resolve_layer(inj.layer) if inj else None
    scores = []
    for rep in list(INTENT_REPLIES) + list(APOLOGY_REPLIES):
        full = encode_text(m.tokenizer, x.prompt.text + rep, x.prompt.fmt)
        n = len(x.prompt)
        ids = torch.tensor([full.input_ids])

        def hook(mod, args, out, inj=inj):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            end = inj.window.end if inj.window.end is not None else h.shape[1]
            h[:, inj.window.start:end] += inj.strength * inj.vector.to(h.dtype)
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

        handle = m.arch.layer(m.hf, layer).register_forward_hook(hook) if inj else None
        try:
            with torch.no_grad():
                logits = m.hf(ids).logits[0].double()
        finally:
            if handle:
                handle.remove()
        lp = torch.log_softmax(logits, -1)
        tgt = torch.tensor(full.input_ids[n:])
        scores.append(float(lp[torch.arange(n - 1, len(full) - 1), tgt].sum()))
    s = torch.tensor(scores)
    k = len(INTENT_REPLIES)
    return float(torch.logsumexp(s[:k], 0) - torch.logsumexp(s[k:], 0))


@pytest.mark.parametrize("arch, packed", [("llama", True), ("qwen2", True), ("gemma3", False), ("mistral", False),
                                          ("gemma2", False), ("phi3", True), ("qwen3", True), ("olmo2", True)])
def test_logit_measure_matches_hook_reference(tiny_model_of, arch, packed):
    m = tiny_model_of(arch)
    assert packing_supported(m) is packed
    exp = PrefillIntent(m, PrefillIntentConfig(layers=[0], strengths=[4.0], n_pairs=2, measure="logits"))
    exp.prepare(m)
    trials = [t for t in exp.trials() if t.condition in ("matching_concept", "question_turn", "no_injection")]
    g = torch.Generator().manual_seed(0)
    # random vectors: tiny Gemma 3's layer-0 concept vectors are ~0 (its sliding window hides the word
    # from the last prompt token), which would make the comparison vacuous
    inputs = [replace(x, injections=[replace(i, vector=torch.randn(m.arch.d_model, generator=g)) for i in x.injections])
              for x in (exp.build(m, t) for t in trials)]
    assert any(x.injections for x in inputs) and any(not x.injections for x in inputs)
    got = exp.execute_logits(m, inputs)
    moved = 0
    for x, g in zip(inputs, got):
        assert g["packed_replies"] is packed
        assert g["intent_logodds"] == pytest.approx(_reference_logodds(m, x), abs=1e-4)
        if x.injections:
            assert g["doses"] and g["doses"][0] > 0
            clean = exp.execute_logits(m, [type(x)(x.prompt, [], x.max_new_tokens, x.info)])[0]
            moved += abs(clean["intent_logodds"] - g["intent_logodds"]) > 1e-3
    # the injections matter, so agreeing with the reference is informative
    assert moved > 0


def test_logit_effects_are_paired_by_pair():
    from introspect_mech.experiments.prefill_intent.report import logit_effects

    recs = []
    for pair, base in enumerate([0.0, 5.0, -3.0]):  # large pair-to-pair spread, constant +1 matching effect
        recs.append({"condition": "no_injection", "layer": None, "strength": None, "extra": {"pair": pair},
                     "intent_logodds": base})
        recs.append({"condition": "random_other_concept", "layer": 4, "strength": 8.0, "extra": {"pair": pair},
                     "intent_logodds": base + 0.5})
        recs.append({"condition": "matching_concept", "layer": 4, "strength": 8.0, "extra": {"pair": pair},
                     "intent_logodds": base + 1.0 + 0.01 * pair})
    eff = {e["vs"]: e["effect"] for e in logit_effects(recs)}
    assert eff["no_injection"].mean == pytest.approx(1.01) and eff["no_injection"].n == 3
    assert eff["random_other_concept"].mean == pytest.approx(0.51)
    # paired: the interval is tight despite the spread of the pairs' baselines
    assert eff["random_other_concept"].hi - eff["random_other_concept"].lo < 0.1
