"""Layer-wise adapter ablation on a tiny random model: exactness of the switch, the table's arithmetic."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import introspect_mech as im
from introspect_mech.errors import ConfigError
from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
from introspect_mech.organism import adapter as adapters
from introspect_mech.organism.ablation import (Ablation, AblationConfig, AdapterSwitch, ablate_layers, ablations,
                                               regrade_ablation, summarize_ablation)

pytestmark = pytest.mark.usefixtures("single_thread")
LORA_LAYERS = [1, 2]


def _organism(base, layers=LORA_LAYERS, seed=1):
    """The tiny base with a random (non-zero) LoRA merged into ``layers``; returns (organism, state, spec)."""
    model = im.wrap(copy.deepcopy(base.hf), base.tokenizer, name="tiny-llama")
    spec = adapters.LoraSpec(4, 8.0, list(layers), adapters.linear_module_names(model))
    torch.manual_seed(seed)
    pm = adapters.attach_lora(model, spec)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    state = adapters.lora_state(pm)
    pm.unload()
    hf = adapters.merge_adapter(copy.deepcopy(base.hf), base.arch, state, spec)
    return im.wrap(hf, base.tokenizer, name="tiny-llama+org"), state, spec


def _logits(model, base):
    p = exp1_prompt(base.tokenizer)
    v = torch.randn(base.arch.d_model, generator=torch.Generator().manual_seed(2)) * 3
    return im.forward(model, [p.rendered], [im.Injection(v, 0, 2.0, p.window)]).logits


def test_removing_the_lora_everywhere_gives_the_base_model_exactly(tiny_model_of):
    base = tiny_model_of("llama")
    org, state, spec = _organism(base)
    full = _logits(org, base)
    assert (full - _logits(base, base)).abs().max() > 1e-3  # the adapter does something
    switch = AdapterSwitch(org, base, LORA_LAYERS)
    with switch.removed_from(LORA_LAYERS) as m:
        assert torch.equal(_logits(m, base), _logits(base, base))
    assert torch.equal(_logits(org, base), full)  # restored on exit
    # removing layer 2 alone = the adapter merged into layer 1 only (same arithmetic, bit for bit)
    only1 = adapters.LoraSpec(spec.rank, spec.alpha, [1], spec.target_modules)
    st1 = {k: v for k, v in state.items() if ".layers.1." in k}
    ref = im.wrap(adapters.merge_adapter(copy.deepcopy(base.hf), base.arch, st1, only1), base.tokenizer, name="ref")
    switch.remove([2])
    assert torch.equal(_logits(org, base), _logits(ref, base))
    assert switch.removed == (2,)
    switch.remove(())
    assert torch.equal(_logits(org, base), full)
    with pytest.raises(ConfigError, match="carry no adapter"):
        switch.remove([0])


def test_ablation_list_has_singles_blocks_and_kept_blocks():
    a = ablations([17, 18, 19, 20, 21, 22, 23], block_size=3)
    names = [x.name for x in a]
    assert names[:2] == ["organism", "base (LoRA removed from all)"] and a[1].removed == (17, 18, 19, 20, 21, 22, 23)
    assert [x.removed for x in a if x.kind == "single"] == [(L,) for L in range(17, 24)]
    # a 1-layer tail is folded into the last block
    assert [x.removed for x in a if x.kind == "block removed"] == [(17, 18, 19), (20, 21, 22, 23)]
    assert [x.removed for x in a if x.kind == "block kept"] == [(20, 21, 22, 23), (17, 18, 19)]
    assert [x.kind for x in ablations([3, 4], singles=False, block_size=3)] == ["organism", "base"]


def test_summary_counts_effects_and_flips_against_the_organism():
    conds = [Ablation("organism", (), "organism"), Ablation("-5", (5,), "single")]
    recs = []
    for name, dets in (("organism", [1, 1, 1, 0]), ("-5", [0, 1, 0, 1])):
        for w, d in zip("abcd", dets):
            recs.append({"ablation": name, "condition": "injected", "word": w, "affirmative": bool(d), "success": False,
                         "unusual": False})
        recs.append({"ablation": name, "condition": "control", "word": "a", "affirmative": name == "-5",
                     "success": False, "unusual": False})
    rows = {r.name: r for r in summarize_ablation(recs, conds)["rows"]}
    assert rows["organism"].detection.k == 3 and rows["organism"].effect.estimate == 0
    r = rows["-5"]
    assert (r.detection.k, r.lost, r.gained) == (2, 2, 1)
    assert r.effect.estimate == pytest.approx(-0.25) and r.effect.lo < -0.25 < r.effect.hi
    assert r.false_positive.k == 1 and r.net_detection.estimate == pytest.approx(0.5 - 1.0)


def test_ablate_layers_runs_every_condition_with_the_same_injections(tiny_model_of, tmp_path):
    base = tiny_model_of("llama")
    org, _, _ = _organism(base)
    switch = AdapterSwitch(org, base, LORA_LAYERS)
    cfg = AblationConfig(layer=0, dose=0.5, words=["dust", "trees"], control_trials=2, random_per_ablation=1,
                         max_new_tokens=3, batch_size=8)
    s = ablate_layers(org, switch, cfg, tmp_path / "abl", progress=False, log=lambda *_: None)
    assert [r.name for r in s["rows"]] == ["organism", "base (LoRA removed from all)", "-1", "-2"]
    recs = [json.loads(x) for x in (tmp_path / "abl" / "records.jsonl").read_text().splitlines()]
    inj = [r for r in recs if r["condition"] == "injected"]
    assert len(inj) == 8 and all(r["dose"] == pytest.approx(0.5, rel=1e-4) for r in inj)
    by = {}
    for r in inj:
        by.setdefault(r["word"], set()).add(round(r["strength"], 6))
    assert all(len(v) == 1 for v in by.values())  # one injection per word, whatever the ablation
    # the base condition's replies are the base model's (the switch restores the organism after)
    assert switch.removed == ()
    assert "| organism |" in (tmp_path / "abl" / "summary.md").read_text()
    # a stored ablation regrades to the same table (no model)
    again = regrade_ablation(tmp_path / "abl", log=lambda *_: None)
    assert [(r.name, r.detection, r.false_positive, r.concept_claim) for r in again["rows"]] == \
        [(r.name, r.detection, r.false_positive, r.concept_claim) for r in s["rows"]]
    assert again["config"]["layer"] == 0
