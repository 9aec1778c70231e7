"""The compact decode loop (``decode.generate_compact``) against HF ``generate`` under nnsight.

``execution.generate`` is checked against plain PyTorch hooks elsewhere
(test_injection_reference.py, test_record_tiny.py); here it is the reference. The
compact loop runs its own KV-cached steps and drops each row from the batch (and from
its KV cache) when the row emits EOS or reaches its own ``max_new_tokens``, so the
tests make rows leave the batch at different steps and check that the rows that stay
keep their tokens, positions, injections and ablations: every kept row must equal the
first k tokens of the full-length greedy run of that row.

Tiny random models (all four architectures) rarely emit EOS, so EOS is forced by
pointing the toolkit's EOS lookup at a token the model is known to emit greedily.
The last sections cover ``InterventionPlan.select_rows`` / ``Batch.select_rows`` as
units, the real model with the Exp 1 prefix KV cache, and ``run_sweep(decode=...)``.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from introspect_mech import decode as decode_mod
from introspect_mech import execution, runner
from introspect_mech.batch import make_batch
from introspect_mech.decode import generate_compact
from introspect_mech.errors import ArtifactError, ConfigError, IntrospectError
from introspect_mech.execution import generate
from introspect_mech.inject import Injection, Window
from introspect_mech.interventions import (DirectionAblation, HeadAblation, InterventionPlan, MLPAblation,
                                           ResidualPatch)
from introspect_mech.prompts import render
from introspect_mech.runner import Trial, TrialInput, run_sweep
from introspect_mech.step import eos_ids

from _real import smol, smol_vectors  # noqa: F401
from conftest import TINY_ARCHS

# the four original tiny architectures, plus the two added ones whose KV caches have sliding-window layers (the
# compact loop narrows every layer's cache as rows leave); qwen3, phi3 and olmo2 have llama's cache layers and
# go through the compact loop in test_early_stop.test_added_architectures_stop_early
ARCHS = TINY_ARCHS + ("mistral", "gemma2")
tiny = pytest.mark.usefixtures("single_thread")

TEXTS = (
    "The old clock on the wall ticked loudly.",
    "Hi",
    "What is the capital of France? Answer in one word.",
    "Name three colours.",
    "Tell me about dust",
)
N = 10  # full generation length of the tiny-tier reference runs
LIMITS = [3, 7, 1, 10, 2]  # per-row max_new_tokens: row 2 leaves after step 0, row 4 after step 1, ...


def prompts_for(m):
    ps = [render(m.tokenizer, [{"role": "user", "content": t}]) for t in TEXTS]
    assert len({len(p) for p in ps}) == len(ps), "rows must differ in length so that left padding is exercised"
    return ps


def injections_for(m, prompts):
    """One row per kind of window, plus a clean row and a scale-mode row (layers differ between rows)."""
    L = [len(p) for p in prompts]
    g = torch.Generator().manual_seed(7)
    v = lambda: torch.randn(m.arch.d_model, generator=g)  # noqa: E731
    return [
        Injection(v(), 0, 3.0, Window.from_position(L[0] - 3)),  # starts inside the prompt, runs through generation
        Injection(v(), 1, 3.0, Window.span(1, L[1] - 1)),  # ends inside the prompt
        None,
        # ends at the 5th generated token, after rows 2 and 4 have left the batch (its row index has shifted)
        [Injection(v(), 2, 2.0, Window.span(2, L[3] + 5)), Injection.scaling(1, 1.5, Window.from_position(2))],
        Injection.scaling(1, 2.0, Window.from_position(L[4])),  # scale, on generated tokens only
    ]


def _ablations(m):
    u = torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(3))
    return [
        HeadAblation(1, (0, 2), rows=(3,)),  # row 3 outlives rows 2 and 4: its index shifts when they leave
        HeadAblation(0, (1,), rows=None),
        MLPAblation(1, "zero", rows=(0, 4)),
        DirectionAblation(1, u, rows=(1, 3)),
    ]


def cut_at_eos(tokens, eos):
    return next((tokens[:i] for i, t in enumerate(tokens) if t in eos), list(tokens))


def _set_eos(monkeypatch, ids):
    """Make both decoders (and the cut of ``execution.generate``) treat ``ids`` as the EOS tokens."""
    ids = set(int(i) for i in ids)
    monkeypatch.setattr(decode_mod, "eos_ids", lambda model: set(ids))
    monkeypatch.setattr(execution, "eos_ids", lambda model: set(ids))


def _doses_equal(a, b, rel=1e-6):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert len(ra) == len(rb)
        for x, y in zip(ra, rb):
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=rel)


# ---------------------------------------------------------------------------------------
# Tiny tier: greedy equality with execution.generate, rows leaving the batch
# ---------------------------------------------------------------------------------------


@tiny
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_hf_generate_on_left_padded_batch(tiny_model_of, arch):
    m = tiny_model_of(arch)
    prompts = prompts_for(m)
    injs = injections_for(m, prompts)
    ref = generate(m, prompts, injs, max_new_tokens=N)
    got = generate_compact(m, prompts, injs, max_new_tokens=N)
    assert [len(t) for t in ref.new_tokens] == [N] * len(prompts), "a tiny model emitted EOS; pick other prompts"
    assert got.new_tokens == ref.new_tokens
    assert got.texts == ref.texts
    assert torch.equal(got.sequences, ref.sequences)
    assert got.batch.size == len(prompts) and got.recording == []
    _doses_equal(got.doses, ref.doses)
    assert got.doses[2] == [] and got.doses[4] == [pytest.approx(1.0)] and len(got.doses[3]) == 2
    # the injections that reach generated tokens change them (so the equality above is informative)
    clean = generate_compact(m, prompts, None, max_new_tokens=N)
    for r in (0, 3, 4):
        assert clean.new_tokens[r] != got.new_tokens[r], f"row {r}"


@tiny
@pytest.mark.parametrize("arch", ARCHS)
def test_per_row_limits_keep_the_remaining_rows_right(tiny_model_of, arch):
    """Rows leave after 1, 2, 3 and 7 steps; each row is the prefix of its full-length greedy run."""
    m = tiny_model_of(arch)
    prompts = prompts_for(m)
    injs = injections_for(m, prompts)
    full = generate(m, prompts, injs, max_new_tokens=N)
    got = generate_compact(m, prompts, injs, max_new_tokens=LIMITS)
    assert [len(t) for t in got.new_tokens] == LIMITS
    for r, k in enumerate(LIMITS):
        assert got.new_tokens[r] == full.new_tokens[r][:k], f"row {r}"
        assert got.texts[r] == m.tokenizer.decode(full.new_tokens[r][:k], skip_special_tokens=True)
    _doses_equal(got.doses, full.doses)
    W = got.batch.width
    assert got.sequences.shape == (len(prompts), W + max(LIMITS))
    assert torch.equal(got.sequences[:, :W], got.batch.input_ids)
    for r, k in enumerate(LIMITS):
        assert got.sequences[r, W:W + k].tolist() == got.new_tokens[r]
        assert (got.sequences[r, W + k:] == m.tokenizer.pad_token_id).all()
    # rows listed in another order (the row that lives longest first) give the same rows
    order = [3, 0, 4, 1, 2]
    perm = generate_compact(m, [prompts[i] for i in order], [injs[i] for i in order],
                            max_new_tokens=[LIMITS[i] for i in order])
    assert perm.new_tokens == [got.new_tokens[i] for i in order]


@tiny
@pytest.mark.parametrize("arch", ARCHS)
def test_ablations_survive_rows_leaving(tiny_model_of, arch):
    """Head, MLP and direction ablations with explicit rows stay on the right rows as the batch shrinks."""
    m = tiny_model_of(arch)
    prompts = prompts_for(m)
    injs = injections_for(m, prompts)
    abl = _ablations(m)
    full = generate(m, prompts, injs, max_new_tokens=N, ablations=abl)
    got = generate_compact(m, prompts, injs, max_new_tokens=LIMITS, ablations=abl)
    same = generate_compact(m, prompts, injs, max_new_tokens=N, ablations=abl)
    assert same.new_tokens == full.new_tokens
    for r, k in enumerate(LIMITS):
        assert got.new_tokens[r] == full.new_tokens[r][:k], f"row {r}"
    unablated = generate(m, prompts, injs, max_new_tokens=N)
    assert unablated.new_tokens[3] != full.new_tokens[3]  # the ablations do change the long-lived row


def _pick_eos(ref: list[list[int]]):
    """EOS ids that end row 2 at step 0 and some other row mid-way, while a third row runs to the end."""
    y = ref[2][0]
    for r in (0, 1, 3, 4):
        for s in range(1, N - 1):
            eos = {y, ref[r][s]}
            lens = [len(cut_at_eos(t, eos)) for t in ref]
            if lens[2] == 0 and any(0 < n < N - 1 for n in lens) and any(n == N for n in lens):
                return eos
    return None


@tiny
@pytest.mark.parametrize("arch", ARCHS)
def test_forced_eos_drops_rows_and_the_others_continue(tiny_model_of, arch, monkeypatch):
    m = tiny_model_of(arch)
    prompts = prompts_for(m)
    injs = injections_for(m, prompts)
    ref = generate(m, prompts, injs, max_new_tokens=N).new_tokens
    eos = _pick_eos(ref)
    assert eos is not None, "no usable EOS candidate in the reference run"
    expect = [cut_at_eos(t, eos) for t in ref]
    _set_eos(monkeypatch, eos)
    got = generate_compact(m, prompts, injs, max_new_tokens=N)
    assert got.new_tokens == expect
    # HF generate told about the same EOS ids stops (and pads) those rows too
    hf = generate(m, prompts, injs, max_new_tokens=N, eos_token_id=sorted(eos))
    assert hf.new_tokens == expect
    W = got.batch.width
    assert got.sequences.shape[1] == W + max(len(t) for t in expect)
    for r, t in enumerate(expect):  # the EOS token itself is not kept; the rest of the row is padding
        assert got.sequences[r, W:W + len(t)].tolist() == t
        assert (got.sequences[r, W + len(t):] == m.tokenizer.pad_token_id).all()
    # EOS and per-row limits together
    both = generate_compact(m, prompts, injs, max_new_tokens=LIMITS)
    assert both.new_tokens == [t[:k] for t, k in zip(expect, LIMITS)]


@tiny
@pytest.mark.parametrize("arch", ARCHS)
def test_min_new_tokens_blocks_early_eos(tiny_model_of, arch, monkeypatch):
    m = tiny_model_of(arch)
    prompts = prompts_for(m)
    injs = injections_for(m, prompts)
    ref = generate(m, prompts, injs, max_new_tokens=N).new_tokens
    eos = {t[0] for t in ref}  # every row would stop at step 0
    _set_eos(monkeypatch, eos)
    assert generate_compact(m, prompts, injs, max_new_tokens=N).new_tokens == [[]] * len(prompts)
    got = generate_compact(m, prompts, injs, max_new_tokens=N, min_new_tokens=3)
    assert all(len(t) >= 3 for t in got.new_tokens)
    assert all(not (set(t[:3]) & eos) for t in got.new_tokens)
    hf = generate(m, prompts, injs, max_new_tokens=N, min_new_tokens=3, eos_token_id=sorted(eos))
    assert got.new_tokens == hf.new_tokens
    # a per-row limit below min_new_tokens still wins
    lim = generate_compact(m, prompts, injs, max_new_tokens=[2, N, N, N, 1], min_new_tokens=3)
    assert [len(t) for t in lim.new_tokens][0] == 2 and len(lim.new_tokens[4]) == 1
    assert lim.new_tokens[1:4] == got.new_tokens[1:4]


@tiny
def test_bad_limits_and_remote_are_refused(tiny_model_of):
    m = tiny_model_of("llama")
    prompts = prompts_for(m)[:2]
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_compact(m, prompts, max_new_tokens=[3])
    with pytest.raises(ConfigError, match=">= 1"):
        generate_compact(m, prompts, max_new_tokens=[3, 0])
    with pytest.raises(IntrospectError, match="local"):
        generate_compact(dataclasses.replace(m, remote=True), prompts, max_new_tokens=2)


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


@tiny
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sampling_is_reproducible_from_the_seed(tiny_model_of, arch):
    m = tiny_model_of(arch)
    prompts = prompts_for(m)
    injs = injections_for(m, prompts)
    kw = dict(max_new_tokens=LIMITS, temperature=1.0)
    torch.manual_seed(0)
    a = generate_compact(m, prompts, injs, seed=11, **kw)
    torch.manual_seed(1)  # the global RNG state does not matter when a seed is given
    b = generate_compact(m, prompts, injs, seed=11, **kw)
    c = generate_compact(m, prompts, injs, seed=12, **kw)
    assert a.new_tokens == b.new_tokens
    assert a.new_tokens != c.new_tokens
    assert [len(t) for t in a.new_tokens] == [len(t) for t in c.new_tokens] == LIMITS
    greedy = generate_compact(m, prompts, injs, max_new_tokens=LIMITS)
    assert a.new_tokens != greedy.new_tokens
    # a vanishing temperature samples the greedy tokens: the sampler reads each row's own logits
    cold = generate_compact(m, prompts, injs, max_new_tokens=LIMITS, temperature=1e-6, seed=5)
    assert cold.new_tokens == greedy.new_tokens


@tiny
def test_first_sampled_token_follows_the_softmax(tiny_model_of):
    """Plain sampling at temperature T: the first token's frequency matches softmax(logits / T)."""
    m = tiny_model_of("llama")
    p = prompts_for(m)[0]
    T, n = 0.7, 400
    logits = execution.forward(m, [p]).logits[0, -1].double()
    probs = torch.softmax(logits / T, -1)
    top = int(probs.argmax())
    pt = float(probs[top])
    got = generate_compact(m, [p] * n, max_new_tokens=1, temperature=T, seed=3)
    firsts = [t[0] if t else -1 for t in got.new_tokens]  # a sampled EOS leaves the row empty
    key = -1 if top in eos_ids(m) else top
    freq = firsts.count(key) / n
    assert abs(freq - pt) < 5 * (pt * (1 - pt) / n) ** 0.5 + 1e-9, (freq, pt)
    assert len(set(firsts)) > 1


# ---------------------------------------------------------------------------------------
# select_rows as units
# ---------------------------------------------------------------------------------------


def _unit_plan(arch):
    d, B = arch.d_model, 4
    g = torch.Generator().manual_seed(0)
    v = lambda: torch.randn(d, generator=g)  # noqa: E731
    injs = [
        Injection(v(), 0, 2.0, Window.span(5, 20)),
        Injection.scaling(1, 3.0, Window.from_position(4)),
        [Injection(v(), 1, 1.0, Window.span(3, 30)), Injection(v(), 1, 2.0, Window.from_position(10)),
         Injection(v(), 2, 0.5, Window.all())],  # two add injections at one layer: two slots
        Injection(v(), 0, 4.0, Window.from_position(0)),
    ]
    abl = [
        DirectionAblation(1, v(), rows=(0, 2)),
        DirectionAblation(2, v(), rows=(1, 3)),  # none of its rows is kept
        DirectionAblation(0, v(), value=0.7, start=2, rows=None),
        HeadAblation(1, (0,), rows=(1,)),  # dropped
        HeadAblation(0, (1, 2), rows=(2, 3)),
        HeadAblation(0, (3,), mode="mean", mean=torch.randn(arch.n_heads, arch.head_dim, generator=g)),
        MLPAblation(1, "zero", rows=(0,)),
        MLPAblation(2, "mean", value=v(), rows=(3,)),  # dropped
    ]
    patches = [ResidualPatch(1, 2, 3, v())]
    return InterventionPlan(arch, B, injs, abl, patches), g


@tiny
def test_plan_select_rows_applies_the_same_edits(tiny_model_of):
    arch = tiny_model_of("llama").arch
    full, g = _unit_plan(arch)
    keep = [2, 0]
    sub = full.select_rows(keep)
    assert sub.batch_size == 2 and sub.rows == [full.rows[2], full.rows[0]]
    S = 12
    h = torch.randn(4, S, arch.d_model, generator=g)
    positions = torch.randint(-3, 40, (4, S), generator=g)
    for L in range(arch.n_layers):
        a = full.apply_residual(L, h, positions, prefill=False)[keep]
        b = sub.apply_residual(L, h[keep], positions[keep], prefill=False)
        assert torch.allclose(a, b, atol=1e-6), f"layer {L}"
    # and the edits are not all trivial: each layer changes some kept row
    for L in range(arch.n_layers):
        assert not torch.allclose(sub.apply_residual(L, h[keep], positions[keep], prefill=False), h[keep])
    x = torch.randn(4, S, arch.n_heads * arch.head_dim, generator=g)
    y = torch.randn(4, S, arch.d_model, generator=g)
    for L in sub.ablation_layers:
        assert torch.equal(full.apply_heads(L, x, prefill=False)[keep], sub.apply_heads(L, x[keep], prefill=False))
    for L in sub.mlp_layers:
        assert torch.equal(full.apply_mlp(L, y, prefill=False)[keep], sub.apply_mlp(L, y[keep], prefill=False))
    # doses: slot entries are remapped to the new row numbers
    norms = {L: torch.rand(4, generator=g) + 0.5 for L in range(arch.n_layers)}
    want = full.doses(norms)
    assert sub.doses({L: n[keep] for L, n in norms.items()}) == [want[2], want[0]]
    # narrowing twice (as the decode loop does) composes
    one = sub.select_rows([1])
    a = full.apply_residual(0, h, positions, prefill=False)[[0]]
    assert torch.allclose(one.apply_residual(0, h[[0]], positions[[0]], prefill=False), a, atol=1e-6)
    assert one.rows == [full.rows[0]]


@tiny
def test_plan_select_rows_remaps_and_drops_ablations(tiny_model_of):
    arch = tiny_model_of("llama").arch
    full, _ = _unit_plan(arch)
    sub = full.select_rows([2, 0])
    assert sorted(sub.directions) == [0, 1]  # layer 2's only direction ablation had rows 1 and 3
    assert sub.directions[1][0].rows == (1, 0)  # old row 0 -> 1, old row 2 -> 0
    assert sub.directions[0][0].rows is None
    assert sub.ablation_layers == [0]  # layer 1's head ablation had only row 1
    assert [a.rows for a in sub.ablations[0]] == [(0,), None]
    assert sub.mlp_layers == [1] and sub.mlp_ablations[1][0].rows == (1,)
    assert not sub.patches and full.patches  # prefill-only, not carried into decode steps
    assert sorted(sub.edit_layers) == [0, 1, 2]  # injections keep layer 2 (row 2's third injection)
    # the original plan is untouched
    assert full.batch_size == 4 and full.directions[2][0].rows == (1, 3) and full.ablation_layers == [0, 1]
    assert [s.rows for s in full.slots[1]] == [[1], [2], [2]]  # scale slot, then two add slots for row 2
    assert [s.rows for s in sub.slots[1]] == [[], [0], [0]]
    assert [s.entries for s in sub.slots[1]] == [[], [(0, 0)], [(0, 1)]]
    # a sub-batch without any row of a slot keeps the slot, inactive
    only1 = full.select_rows([1])
    assert only1.slots[0][0].active.tolist() == [False] and only1.slots[0][0].rows == []
    assert only1.doses({L: torch.ones(1) for L in range(arch.n_layers)}) == [[pytest.approx(2.0)]]
    assert only1.directions[2][0].rows == (0,) and 1 not in only1.directions
    assert only1.ablation_layers == [0, 1] and only1.ablations[1][0].rows == (0,)
    assert [a.rows for a in only1.ablations[0]] == [None]  # rows (2, 3) dropped, rows=None kept
    assert only1.mlp_layers == []
    for bad in ([0, 0], [4], [-1]):
        with pytest.raises(ValueError):
            full.select_rows(bad)


@tiny
def test_batch_select_rows(tiny_model_of):
    m = tiny_model_of("qwen2")
    b = make_batch(m.tokenizer, prompts_for(m)[:4])
    s = b.select_rows([2, 0])
    assert s.width == b.width and s.size == 2
    for name in ("input_ids", "attention_mask", "pad", "lengths"):
        assert torch.equal(getattr(s, name), getattr(b, name)[[2, 0]])
    assert s.prompts == (b.prompts[2], b.prompts[0])
    for n_tok, total in ((b.width, b.width), (1, b.width + 3)):
        assert torch.equal(s.positions(n_tok, total), b.positions(n_tok, total)[[2, 0]])


# ---------------------------------------------------------------------------------------
# Real model: Exp 1 prompt, prefix KV cache, concept injections
# ---------------------------------------------------------------------------------------

REAL_LAYER = 19


@pytest.mark.integration
def test_real_model_prefix_cache_compact_equals_generate(smol, smol_vectors):  # noqa: F811
    from introspect_mech.execution import build_prefix_cache
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt

    # SmolLM2's own default system turn: there the clean greedy reply ends (EOS) after 8 tokens, which this test
    # needs (a row leaving the batch early); with the default empty system turn it runs 34 tokens
    exp1 = exp1_prompt(smol.tokenizer, system="template")
    vecs = [smol_vectors.get(w, REAL_LAYER) for w in ("dust", "origami", "lightning")]
    injs = [Injection(v, REAL_LAYER, 8.0, exp1.window) for v in vecs] + [None]
    prompts = [exp1.rendered] * 4
    prefix = build_prefix_cache(smol, exp1.rendered.input_ids[:exp1.start])
    n = 12
    # rows leave at different steps first: the cached prefix must not be narrowed for later calls
    limits = [n, 4, n, 1]
    short = generate_compact(smol, prompts, injs, max_new_tokens=limits, prefix=prefix)
    got = generate_compact(smol, prompts, injs, max_new_tokens=n, prefix=prefix)
    ref = generate(smol, prompts, injs, max_new_tokens=n, prefix=prefix)
    assert got.new_tokens == ref.new_tokens
    assert got.texts == ref.texts
    _doses_equal(got.doses, ref.doses, rel=1e-5)
    assert all(d[0] > 0 for d in got.doses[:3]) and got.doses[3] == []
    # the clean row ends with the model's own EOS (<|im_end|>) while the injected rows run on
    assert len(ref.new_tokens[3]) < n and [len(t) for t in ref.new_tokens[:3]] == [n] * 3
    for r, k in enumerate(limits):
        assert short.new_tokens[r] == ref.new_tokens[r][:k], f"row {r}"
    # the concepts steer differently (the rows are not all the same reply)
    assert len({tuple(t) for t in ref.new_tokens}) >= 3
    # without the prefix cache too
    plain = generate_compact(smol, prompts, injs, max_new_tokens=n)
    assert plain.new_tokens == ref.new_tokens


# ---------------------------------------------------------------------------------------
# run_sweep(decode=...)
# ---------------------------------------------------------------------------------------


class TinySweep:
    """Eight trials on two prompt groups: one shared prompt (prefix-cache path) and left-padded mixed prompts;
    two generation lengths in every batch (as Exp 2 mixes 5 and 15 tokens)."""

    name = "tiny-decode"

    def config(self) -> dict:
        return {"n": 8}

    def trials(self) -> list[Trial]:
        return [Trial(self.name, "c", concept=f"w{i}", prompt_key="ab"[i % 2], sample=i) for i in range(8)]

    def prepare(self, model) -> None:
        pass

    def build(self, model, trial: Trial) -> TrialInput:
        i = trial.sample
        text = TEXTS[2] if trial.prompt_key == "a" else TEXTS[i % len(TEXTS)]
        p = render(model.tokenizer, [{"role": "user", "content": text}])
        v = torch.randn(model.arch.d_model, generator=torch.Generator().manual_seed(i))
        injs = [] if i % 4 == 3 else [Injection(v, 1, 3.0, Window.from_position(len(p) - 2))]
        return TrialInput(p, injs, max_new_tokens=3 if i % 3 else 8, info={"i": i})


def read_records(out):
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    return {r["trial_id"]: (r["response"], r["n_new_tokens"], r["max_new_tokens"], r["dose"]) for r in recs}


def _count_calls(monkeypatch, seen=None):
    calls = {"compact": 0, "hf": 0}
    real_compact, real_hf = decode_mod.generate_compact, runner.generate

    def compact(*a, **k):
        calls["compact"] += 1
        if seen is not None:
            seen.append((k["max_new_tokens"], k["prefix"]))
        return real_compact(*a, **k)

    def hf(*a, **k):
        calls["hf"] += 1
        return real_hf(*a, **k)

    monkeypatch.setattr(decode_mod, "generate_compact", compact)
    monkeypatch.setattr(runner, "generate", hf)
    return calls


@tiny
def test_run_sweep_compact_equals_hf_and_records_the_method(tiny_model_of, tmp_path, monkeypatch):
    m = tiny_model_of("llama")
    seen = []
    calls = _count_calls(monkeypatch, seen)
    kw = dict(batch_size=3, temperature=0.0, seed=5, progress=False)
    run_sweep(TinySweep(), m, tmp_path / "hf", decode="hf", **kw)
    assert calls == {"compact": 0, "hf": 4}  # batches of 3, 1, 3, 1 (two prompt groups)
    run_sweep(TinySweep(), m, tmp_path / "compact", decode="compact", **kw)
    assert calls == {"compact": 4, "hf": 4}
    # the compact decoder gets each row's own limit, and the shared prefix's KV cache where there is one
    assert sorted(len(lim) for lim, _ in seen) == [1, 1, 3, 3] and {x for lim, _ in seen for x in lim} == {3, 8}
    # group "a" (one prompt) and the single-row batch of group "b" share a prefix; the mixed batch does not
    assert sorted((len(lim), p is not None) for lim, p in seen) == [(1, True), (1, True), (3, False), (3, True)]
    run_sweep(TinySweep(), m, tmp_path / "default", **kw)  # a new run without decode= uses continuous batching
    assert calls == {"compact": 4, "hf": 4}
    for name, method in (("hf", "hf"), ("compact", "compact"), ("default", "continuous")):
        assert json.loads((tmp_path / name / "manifest.json").read_text())["decode"] == method
    a, b = read_records(tmp_path / "hf"), read_records(tmp_path / "compact")
    assert len(a) == 8 and a == b  # greedy: same replies, lengths and doses
    c = read_records(tmp_path / "default")  # same replies; doses equal up to float rounding (other matrix shapes)
    assert {k: v[:3] for k, v in c.items()} == {k: v[:3] for k, v in a.items()}
    for k, v in c.items():
        assert (v[3] is None) == (a[k][3] is None) and (v[3] is None or v[3] == pytest.approx(a[k][3], rel=1e-5))
    assert {v[2] for v in a.values()} == {3, 8} and all(v[1] == v[2] for v in a.values())


@tiny
def test_run_sweep_resume_keeps_the_decode_method(tiny_model_of, tmp_path, monkeypatch):
    m = tiny_model_of("llama")
    calls = _count_calls(monkeypatch)
    kw = dict(batch_size=3, temperature=1.0, seed=5, progress=False)
    out = tmp_path / "run"
    run_sweep(TinySweep(), m, out, decode="compact", max_batches=1, **kw)
    assert len(read_records(out)) == 3 and calls == {"compact": 1, "hf": 0}
    with pytest.raises(ArtifactError, match=r"decode \(stored 'compact', this command 'hf'\)"):
        run_sweep(TinySweep(), m, out, decode="hf", **kw)
    assert len(read_records(out)) == 3 and calls == {"compact": 1, "hf": 0}  # nothing ran
    res = run_sweep(TinySweep(), m, out, decode=None, **kw)  # resumes with the stored method
    assert res.n_done_before == 3 and res.n_generated == 5
    assert calls == {"compact": 4, "hf": 0}
    assert json.loads((out / "manifest.json").read_text())["decode"] == "compact"
    # sampled, seeded per batch: the resumed run equals an uninterrupted one
    run_sweep(TinySweep(), m, tmp_path / "whole", decode="compact", **kw)
    assert read_records(out) == read_records(tmp_path / "whole")


@tiny
def test_run_sweep_old_manifest_without_decode_resumes_with_hf(tiny_model_of, tmp_path, monkeypatch):
    m = tiny_model_of("llama")
    calls = _count_calls(monkeypatch)
    kw = dict(batch_size=3, temperature=0.0, seed=5, progress=False)
    out = tmp_path / "old"
    run_sweep(TinySweep(), m, out, decode="hf", max_batches=1, **kw)
    mpath = out / "manifest.json"
    man = json.loads(mpath.read_text())
    del man["decode"]  # as written before the compact decoder existed
    mpath.write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=r"decode \(stored 'hf', this command 'compact'\)"):
        run_sweep(TinySweep(), m, out, decode="compact", **kw)
    run_sweep(TinySweep(), m, out, decode=None, **kw)
    assert calls == {"compact": 0, "hf": 4}
    assert len(read_records(out)) == 8


@tiny
def test_run_sweep_rejects_compact_for_remote_and_unknown_methods(tiny_model_of, tmp_path):
    m = tiny_model_of("llama")
    remote = dataclasses.replace(m, remote=True)
    with pytest.raises(ConfigError, match="local models only"):
        run_sweep(TinySweep(), remote, tmp_path / "r", decode="compact", progress=False)
    assert not (tmp_path / "r" / "manifest.json").exists()
    with pytest.raises(ConfigError, match="decode must be one of"):
        run_sweep(TinySweep(), m, tmp_path / "x", decode="greedy", progress=False)
