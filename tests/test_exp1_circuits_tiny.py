"""``analyze circuits`` (analyses/exp1_circuits.py): options, null draws, and the measured effect against a
plain-HF reference with forward hooks, on the tiny Llama."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from analyses.exp1_circuits import (ComponentSpec, Exp1CircuitConfig, build_trials, null_layer_sets, run)
from analyses.circuits import yes_no_token_ids
from introspect_mech import protocol
from introspect_mech.concepts import ConceptVectors
from introspect_mech.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_specs_parse_into_components():
    assert ComponentSpec.parse("mlp:17,18").layers == (17, 18)
    h = ComponentSpec.parse("heads:17-19")
    assert h.kind == "heads" and h.layers == (17, 18, 19)
    assert len(h.components(n_heads=9)) == 27
    n = ComponentSpec.parse("head:18.5,17.3")
    assert n.heads == ((17, 3), (18, 5)) and n.layers == (17, 18)
    # a whole-layer spec moved to other layers (how its null sets are built)
    assert [c.layer for c in ComponentSpec.parse("mlp:17,18").components(9, (3, 20))] == [3, 20]


@pytest.mark.parametrize("bad, match", [
    (dict(hypotheses=["attn:3"]), "use mlp:LAYERS"), (dict(hypotheses=["mlp:18-17"]), "backwards"),
    (dict(hypotheses=["head:17"]), "LAYER.HEAD"), (dict(intervention="resample"), "--intervention"),
    (dict(strength=0.0), "--strength"), (dict(mean_over="injected"), "--mean-over"), (dict(n_words=51), "--n-words"), (dict(n_null=0), "--n-null"),
    (dict(intervention="patch", n_words=3, n_clean=4), "--n-words >= --n-clean"),
])
def test_bad_configs_fail_before_the_model(bad, match):
    with pytest.raises(ConfigError, match=match):
        Exp1CircuitConfig(**bad).validate()


def test_model_dependent_checks():
    with pytest.raises(ConfigError, match="past the model's last layer 2"):
        Exp1CircuitConfig(hypotheses=["mlp:3"], injection_layer=0).check_model(3, 4)
    with pytest.raises(ConfigError, match="head 4 is past"):
        Exp1CircuitConfig(hypotheses=["head:1.4"], injection_layer=0).check_model(3, 4)


def test_null_layer_sets_are_distinct_same_size_and_outside_the_hypothesis():
    spec = ComponentSpec.parse("mlp:17,18")
    sets = null_layer_sets(spec, range(15, 30), 39, seed=0)
    assert len(sets) == 39 == len(set(sets))
    assert all(len(s) == 2 and not {17, 18} & set(s) and set(s) <= set(range(15, 30)) for s in sets)
    # fewer possible sets than asked: every one of them, once
    assert sorted(null_layer_sets(spec, [15, 16, 17, 18, 19], 39, 0)) == [(15, 16), (15, 19), (16, 19)]
    with pytest.raises(ConfigError, match="needs 2 layers outside it"):
        null_layer_sets(spec, [16, 17, 18], 5, 0)


def _vectors(model, n_words: int, layer: int, seed: int = 0) -> ConceptVectors:
    words = [w.lower() for w in protocol.concept_words()[:n_words]]
    g = torch.Generator().manual_seed(seed)
    vs = torch.randn(len(words), 1, model.arch.d_model, generator=g)
    return ConceptVectors(words, [layer], vs, {}, mean_norms=torch.tensor([10.0]))


def test_counterfactuals_pair_each_row_with_the_other_condition_on_the_same_prompt(tiny_model_of):
    m = tiny_model_of("llama")
    cfg = Exp1CircuitConfig(injection_layer=0, n_words=5, n_clean=3, intervention="patch")
    t = build_trials(m, cfg, _vectors(m, 5, 0))
    assert t.n_injected == 5 and len(t.prompts) == 8
    for i in range(5):  # injected row i: prompt i mod 3, counterfactual none
        assert t.prompts[i].text == t.prompts[5 + i % 3].text and t.counterfactual[i] is None
    for j in range(3):  # clean row j: its counterfactual is injected row j, on the same prompt
        assert t.injections[5 + j] is None and t.counterfactual[5 + j] is t.injections[j]


def _reference_logodds(m, prompt_ids: list[int], start: int, inj_vec, layer: int, strength: float,
                       zero_mlps: list[int]) -> float:
    """Plain HF forward with hooks, one unpadded row: add ``strength·v`` to layer ``layer``'s output from
    ``start`` on, zero the MLP outputs of ``zero_mlps`` from ``start`` on; yes-vs-no log-odds at the end."""
    hf = m.hf
    hooks = []
    layers = hf.model.layers

    def add(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, start:] += strength * inj_vec.to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def zero(mod, args, out):
        out = out.clone()
        out[:, start:] = 0
        return out

    if inj_vec is not None:
        hooks.append(layers[layer].register_forward_hook(add))
    for L in zero_mlps:
        hooks.append(layers[L].mlp.register_forward_hook(zero))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([prompt_ids])).logits[0, -1].double()
    finally:
        for h in hooks:
            h.remove()
    yes, no = yes_no_token_ids(m.tokenizer)
    lp = torch.log_softmax(logits, -1)
    return float(torch.logsumexp(lp[yes], -1) - torch.logsumexp(lp[no], -1))


def test_effects_match_a_plain_forward_hook_reference(tiny_model_of, tmp_path):
    m = tiny_model_of("llama")
    L, s = 0, 4.0
    vecs = _vectors(m, 4, L)
    cfg = Exp1CircuitConfig(hypotheses=["mlp:2"], intervention="zero", injection_layer=L, strength=s, n_words=4,
                            n_clean=2, n_null=5, null_layers=[1, 2])
    out = run(m, cfg, tmp_path, png=False, vectors=vecs)
    t = build_trials(m, cfg, vecs)
    ids = [list(p.input_ids) for p in t.prompts]
    words = t.words

    def mean_over(zero_mlps):
        inj = [_reference_logodds(m, ids[i], t.start, vecs.get(words[i], L), L, s, zero_mlps) for i in range(4)]
        clean = [_reference_logodds(m, ids[4 + j], t.start, None, L, s, zero_mlps) for j in range(2)]
        return sum(inj) / 4, sum(clean) / 2

    inj0, clean0 = mean_over([])
    inj2, clean2 = mean_over([2])
    inj1, clean1 = mean_over([1])
    assert out["intact"]["injected"] == pytest.approx(inj0, abs=1e-4)
    assert out["intact"]["clean"] == pytest.approx(clean0, abs=1e-4)
    r = out["results"][0]["metrics"]
    assert r["injected"]["effect"] == pytest.approx(inj2 - inj0, abs=1e-4)
    assert r["clean"]["effect"] == pytest.approx(clean2 - clean0, abs=1e-4)
    assert r["discrimination"]["effect"] == pytest.approx((inj2 - clean2) - (inj0 - clean0), abs=1e-4)
    # the null of mlp:2 within layers 1-2 is the one other layer's MLP, once: min p = 1/2
    assert out["results"][0]["null_layer_sets"] == [[1]]
    assert r["clean"]["null_effects"] == [pytest.approx(clean1 - clean0, abs=1e-4)]
    assert r["clean"]["min_p"] == pytest.approx(0.5)
    assert (tmp_path / "circuits_summary.json").exists()


def test_cli_rejects_bad_options_in_one_line_before_loading(monkeypatch):
    from introspect_mech import models
    from introspect_mech.cli import main

    def never(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(models, "load_model", never)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["analyze", "circuits", "--components", "mlp:17-x", "--out", "unused"])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "mlp:17-x" in lines[0], err.getvalue()
