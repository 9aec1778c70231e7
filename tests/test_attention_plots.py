"""Per-layer attention plots: recorded maps against HF's own ``output_attentions``, the causality of
an injection's effect on attention, the figures' structure, and one end-to-end CLI run on the real model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from analyses.attention_plots import (AttentionMapsError, attention_maps, difference, layer_grid_figure, main, run,
                                      slider_figure, summarize, token_labels)
from introspect_mech.errors import IntrospectError
from introspect_mech.inject import Injection, Window
from introspect_mech.models import wrap
from introspect_mech.prompts import render

pytestmark = pytest.mark.usefixtures("single_thread")

TEXT = "The old clock on the wall ticked loudly.\n\nDo you detect an injected thought?"


def _prompt(m, text=TEXT):
    return render(m.tokenizer, [{"role": "user", "content": text}])


def _vector(m, seed=0, norm=8.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(m.arch.d_model, generator=g)
    return v / v.norm() * norm


def test_maps_equal_hf_output_attentions(tiny_model):
    """Independent reference: a plain HF call on the unpadded prompt with output_attentions=True."""
    m = tiny_model
    rp = _prompt(m)
    maps = attention_maps(m, rp)
    with torch.no_grad():
        ref = m.hf(torch.tensor([rp.input_ids]), output_attentions=True).attentions
    assert maps.layers == list(range(m.arch.n_layers))
    assert maps.n_tokens == len(rp) and maps.n_heads == m.arch.n_heads
    for L in maps.layers:
        assert maps.weights[L].shape == (m.arch.n_heads, len(rp), len(rp))
        torch.testing.assert_close(maps.weights[L], ref[L][0].float(), atol=1e-5, rtol=1e-5)
    # rows are distributions over past keys
    w = maps.weights[0]
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2]), atol=1e-5, rtol=0)
    assert torch.triu(w, diagonal=1).abs().max() == 0


def test_layer_subset_and_plain_text(tiny_model_of):
    m = tiny_model_of("llama")
    maps = attention_maps(m, "Tell me about dust", layers=[-1, 0])
    assert maps.layers == [0, m.arch.n_layers - 1] and set(maps.weights) == {0, m.arch.n_layers - 1}
    with pytest.raises(AttentionMapsError, match="not recorded"):
        layer_grid_figure(maps, 1)


def test_token_labels_are_unique_and_readable(tiny_model_of):
    m = tiny_model_of("llama")
    rp = _prompt(m)
    labels = token_labels(m.tokenizer, rp.input_ids)
    assert len(labels) == len(set(labels)) == len(rp)
    assert all(lab.startswith(f"{i}:") for i, lab in enumerate(labels))
    nl = [i for i, t in enumerate(rp.input_ids) if "\n" in m.tokenizer.decode([t])]
    assert nl and all("↵" in labels[i] and "\n" not in labels[i] for i in nl)
    assert not any("<" in lab or ">" in lab for lab in labels)  # chat markers such as <|im_start|> are escaped


def test_missing_attention_weights_is_a_clear_error(tiny_model_of):
    base = tiny_model_of("llama")
    hf = copy.deepcopy(base.hf)
    hf.config._attn_implementation = "sdpa"  # SDPA returns no weights
    m = wrap(hf, base.tokenizer, name="sdpa")
    with pytest.raises(IntrospectError, match="attention=True"):
        attention_maps(m, _prompt(m))


def test_difference_of_identical_maps_is_zero_and_mismatches_are_refused(tiny_model_of):
    m = tiny_model_of("llama")
    a, b = attention_maps(m, _prompt(m)), attention_maps(m, _prompt(m))
    d = difference(a, b)
    assert d.kind == "difference" and d.tokens == a.tokens
    assert all(d.weights[L].abs().max() == 0 for L in d.layers)
    with pytest.raises(AttentionMapsError, match="different prompts"):
        difference(a, attention_maps(m, _prompt(m, "Hi")))
    with pytest.raises(AttentionMapsError, match="layers differ"):
        difference(a, attention_maps(m, _prompt(m), layers=[0]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("inject_layer", [0, 1])
def test_injection_changes_attention_only_after_its_layer_and_window(tiny_model_of, arch, inject_layer):
    """Injection at layer L's output: layers 0..L are exactly unchanged, later layers change, and
    only in query rows at or after the window's start (causal attention)."""
    m = tiny_model_of(arch)
    rp = _prompt(m)
    start = rp.token_span_of("\n\nDo")[0]
    inj = Injection(_vector(m), inject_layer, 1.0, Window.from_position(start), label="rand")
    clean, injected = attention_maps(m, rp), attention_maps(m, rp, inj)
    d = difference(injected, clean)
    assert injected.label.startswith("injected") and injected.meta["injections"][0]["layer"] == inject_layer
    for L in d.layers:
        if L <= inject_layer:
            assert d.weights[L].abs().max() == 0, L
        else:
            assert d.weights[L][:, start:].abs().max() > 1e-3, L
            assert d.weights[L][:, :start].abs().max() < 1e-6, L
    s = summarize(d)
    assert [r["layer"] for r in s["per_layer"]] == d.layers
    for r in s["per_layer"]:
        assert (r["total_abs_delta"] == 0) == (r["layer"] <= inject_layer)
    top = s["top_heads_last_query"]
    assert len(top) == min(5, m.arch.n_heads * (m.arch.n_layers - 1 - inject_layer))
    assert all(t["layer"] > inject_layer and t["last_query_mean_abs_delta"] > 0 for t in top)
    assert top == sorted(top, key=lambda t: -t["last_query_mean_abs_delta"])


def test_layer_grid_figure_has_every_head_and_token_labels(tiny_model_of):
    m = tiny_model_of("gemma3")
    rp = _prompt(m)
    maps = attention_maps(m, rp)
    H, T = maps.n_heads, maps.n_tokens
    fig = layer_grid_figure(maps, 1)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == H
    assert all(list(t.x) == maps.tokens and list(t.y) == maps.tokens for t in heat)
    assert {t.xaxis for t in heat} == {f"x{i if i > 1 else ''}" for i in range(1, H + 1)}  # one subplot per head
    assert sum(bool(t.showscale) for t in heat) == 1 and len({(t.zmin, t.zmax) for t in heat}) == 1  # shared scale
    z = heat[0].z
    assert z[0][1] is None and z[T - 1][0] is not None  # future keys are gaps
    assert abs(z[T - 1][0] - float(maps.weights[1][0, T - 1, 0])) <= 1e-4
    # cropped axes, and a difference gets a diverging scale centred at 0
    d = difference(attention_maps(m, rp, Injection(_vector(m), 0, 1.0)), maps)
    fig = layer_grid_figure(d, 2, queries=(T - 5, T), keys=slice(2, T))
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert list(heat[0].y) == maps.tokens[T - 5:] and list(heat[0].x) == maps.tokens[2:]
    assert heat[0].zmid == 0 and heat[0].zmin == -heat[0].zmax > -1
    with pytest.raises(AttentionMapsError, match="selects no token"):
        layer_grid_figure(d, 2, queries=(T, T + 3))


def test_slider_figure_steps_over_layers(tiny_model_of):
    m = tiny_model_of("qwen2")
    maps = attention_maps(m, _prompt(m))
    H, T, n = maps.n_heads, maps.n_tokens, len(maps.layers)
    fig = slider_figure(maps, max_tokens=6, decimals=3)
    assert len(fig.data) == n * H
    steps = fig.layout.sliders[0].steps
    assert len(steps) == n and [s.label for s in steps] == [str(L) for L in maps.layers]
    for li, s in enumerate(steps):
        vis = s.args[0]["visible"]
        assert [i for i, v in enumerate(vis) if v] == list(range(li * H, (li + 1) * H))
    assert [bool(t.visible) for t in fig.data] == [i < H for i in range(n * H)]
    t = fig.data[H + 1]  # layer 1, head 1
    assert list(t.y) == maps.tokens[T - 6:] and list(t.x) == maps.tokens
    flat = [v for row in t.z for v in row if v is not None]
    assert all(round(v, 3) == v for v in flat)
    want = maps.weights[1][1, T - 6:].double().round(decimals=3)
    assert max(abs(a - b) for a, b in zip(flat, want[torch.ones_like(want, dtype=bool).tril(T - 6)].tolist())) == 0


def test_run_writes_figures_and_summary(tiny_model_of, tmp_path, monkeypatch):
    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    m = tiny_model_of("llama")
    out = tmp_path / "attention"
    s = run(m, prompt="exp1", concept="dust", layer_inject=1, strength=2, out_dir=out, max_tokens=8, png=False)
    for name in ("clean", "injected", "diff"):
        html = (out / f"attention_{name}_slider.html").read_text()
        assert 'src="plotly.min.js"' in html
    assert (out / "plotly.min.js").exists()
    assert (out / f"attention_diff_layer{s['png_layer']}.html").exists()
    saved = json.loads((out / "attention_summary.json").read_text())
    assert saved["layers"] == [0, 1, 2] and saved["n_heads"] == m.arch.n_heads and saved["layer_inject"] == 1
    assert len(saved["tokens"]) == saved["n_tokens"] and saved["png_layer"] == 2
    assert [r["total_abs_delta"] == 0 for r in saved["per_layer"]] == [True, True, False]
    assert saved["dose"] > 0 and saved["window"]["start"] > 0


@pytest.mark.integration
def test_cli_on_the_real_model(tmp_path, capsys):
    out = tmp_path / "att"
    rc = main(["--prompt", "Tell me about the ocean.", "--layer", "20", "--strength", "8", "--max-tokens", "8",
               "--no-png", "--out", str(out)])
    assert rc == 0
    for f in ("attention_clean_slider.html", "attention_injected_slider.html", "attention_diff_slider.html",
              "attention_summary.json", "plotly.min.js"):
        assert (out / f).stat().st_size > 0, f
    s = json.loads((out / "attention_summary.json").read_text())
    assert (out / f"attention_diff_layer{s['png_layer']}.html").exists()
    assert s["n_heads"] == 9 and len(s["layers"]) == 30 and s["layer_inject"] == 20
    assert all(r["total_abs_delta"] == 0 for r in s["per_layer"] if r["layer"] <= 20)
    assert all(r["total_abs_delta"] > 0 for r in s["per_layer"] if r["layer"] > 20)
    assert str(out) in capsys.readouterr().out


def test_compare_two_models_at_the_answer_position(tiny_model_of, tmp_path, capsys):
    """An 'organism' that differs from its base only in layer 2's attention: the two models' answer rows agree
    exactly at layers 0-1 and differ at layer 2; each model's injected-vs-clean distance is its own run's."""
    m = tiny_model_of("llama")
    hf = copy.deepcopy(m.hf)
    with torch.no_grad():
        hf.model.layers[2].self_attn.q_proj.weight.mul_(4.0)
    org = wrap(hf, m.tokenizer, name="organism", attention=True)
    v = _vector(m, norm=6.0)
    kw = dict(prompt="exp1", concept="dust", layer_inject=0, strength=1, max_tokens=8, png=False, vector=v)
    run(org, out_dir=tmp_path / "org", **kw)
    run(m, out_dir=tmp_path / "base", **kw)
    rc = main(["--compare", f"{tmp_path / 'org'},{tmp_path / 'base'}", "--labels", "org,base", "--no-png",
               "--out", str(tmp_path / "cmp")])
    assert rc == 0 and "mean TV over heads" in capsys.readouterr().out
    c = json.loads((tmp_path / "cmp" / "attention_compare.json").read_text())
    by = c["mean_tv_over_heads_by_layer"]
    assert by["org vs base, clean"][:2] == [0.0, 0.0] and by["org vs base, clean"][2] > 0.01
    assert by["org vs base, injected"][:2] == [0.0, 0.0] and by["org vs base, injected"][2] > 0.01
    assert by["org: injected vs clean"][0] == 0.0 and by["org: injected vs clean"][1] > 0  # after the injection layer
    assert by["base: injected vs clean"][1] == pytest.approx(by["org: injected vs clean"][1], abs=1e-4)  # same below 2
    assert (tmp_path / "cmp" / "attention_compare.html").exists()


def test_compare_refuses_runs_that_do_not_match(tiny_model_of, tmp_path):
    m = tiny_model_of("llama")
    kw = dict(prompt="exp1", concept="dust", layer_inject=0, max_tokens=8, png=False, vector=_vector(m))
    run(m, out_dir=tmp_path / "a", strength=1, **kw)
    run(m, out_dir=tmp_path / "b", strength=2, **kw)
    from analyses.attention_plots import compare

    with pytest.raises(AttentionMapsError, match="injected differently"):
        compare([tmp_path / "a", tmp_path / "b"], out_dir=tmp_path / "c", png=False)
    with pytest.raises(AttentionMapsError, match="does not exist"):
        compare([tmp_path / "a", tmp_path / "nope"], out_dir=tmp_path / "c", png=False)
    with pytest.raises(AttentionMapsError, match="two run folders"):
        compare([tmp_path / "a"], out_dir=tmp_path / "c", png=False)
