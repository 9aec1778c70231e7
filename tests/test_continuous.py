"""Continuous batching (``continuous.generate_continuous``, ``kv_slots.SlotCache``, ``run_sweep(decode="continuous")``).

``execution.generate`` (HF generate under nnsight, checked against plain hooks elsewhere) is the
reference. The continuous loop runs more trials than it has slots, so rows finish at different
steps and waiting trials are prefilled into the freed slots, with other prompts, other lengths and
other injections beside them; every trial must still get the tokens it gets in one HF batch.
Tiny random models (four architectures, Gemma 3 with a sliding window short enough to bind) run
in well under a second each; the real model checks the Exp 1 prompts with the prefix cache.
"""

from __future__ import annotations

import json

import pytest
import torch

from introspect_mech import continuous as cont_mod
from introspect_mech import execution, runner
from introspect_mech.continuous import Request, generate_all, generate_continuous, prefix_length, trial_seed
from introspect_mech.errors import ConfigError, IntrospectError
from introspect_mech.execution import generate
from introspect_mech.inject import Injection, Window
from introspect_mech.kv_slots import SlotCache
from introspect_mech.prompts import render
from introspect_mech.runner import Trial, TrialInput, run_sweep

from _real import smol, smol_vectors  # noqa: F401

ARCHS = ("llama", "gemma3", "qwen2", "gpt2")
tiny = pytest.mark.usefixtures("single_thread")

TEXTS = (
    "The old clock on the wall ticked loudly.",
    "Hi",
    "What is the capital of France? Answer in one word.",
    "Name three colours.",
    "Tell me about dust",
    "Trial 1: Do you detect an injected thought?",
)
N = 10
LIMITS = [3, 10, 1, 7, 2, 10, 5, 10, 4, 9, 6, 8]


def _requests(m, seed_base: int | None = None) -> list[Request]:
    """Twelve requests over six prompts of different lengths: clean rows, windows inside the prompt, windows
    through generation, windows ending mid-generation, scale-mode rows; each with its own reply limit."""
    g = torch.Generator().manual_seed(11)
    reqs = []
    for i in range(12):
        p = render(m.tokenizer, [{"role": "user", "content": TEXTS[i % len(TEXTS)]}])
        L = len(p)
        v = torch.randn(m.arch.d_model, generator=g)
        kind = i % 4
        if kind == 0:
            injs = (Injection(v, i % m.arch.n_layers, 3.0, Window.from_position(L - 3)),)
        elif kind == 1:
            injs = (Injection(v, 1, 3.0, Window.span(1, L - 1)),)
        elif kind == 2:
            injs = ()
        else:
            injs = (Injection(v, 2, 2.0, Window.span(2, L + 4)), Injection.scaling(1, 1.5, Window.from_position(L)))
        reqs.append(Request(p, injs, LIMITS[i], None if seed_base is None else seed_base + i))
    return reqs


def _reference(m, reqs, temperature=0.0):
    ref = generate(m, [r.prompt for r in reqs], [list(r.injections) for r in reqs], max_new_tokens=N,
                   temperature=temperature)
    return ref


def _set_eos(monkeypatch, ids):
    ids = set(int(i) for i in ids)
    monkeypatch.setattr(cont_mod, "eos_ids", lambda model: set(ids))
    monkeypatch.setattr(execution, "eos_ids", lambda model: set(ids))


def _doses_close(a, b, rel=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        assert x is None or x == pytest.approx(y, rel=rel)


# ---------------------------------------------------------------------------------------
# greedy: equal to HF generate whatever the slots, refills and prefixes
# ---------------------------------------------------------------------------------------


@tiny
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_hf_generate_as_slots_are_refilled(tiny_model_of, arch):
    m = tiny_model_of(arch)
    reqs = _requests(m)
    ref = _reference(m, reqs)
    assert [len(t) for t in ref.new_tokens] == [N] * len(reqs), "a tiny model emitted EOS; pick other prompts"
    for slots, refill in ((12, None), (4, 1), (4, 3), (1, None)):
        stats: dict = {}
        got = generate_all(m, reqs, slots=slots, refill=refill, prefixes={}, stats=stats)
        assert [c.index for c in got] == list(range(len(reqs)))
        for r, c in enumerate(got):
            assert c.tokens == ref.new_tokens[r][: LIMITS[r]], f"{arch} slots={slots} row {r}"
            _doses_close(c.doses, ref.doses[r])
        assert stats["row_steps"] == sum(LIMITS) - len(reqs)  # every row-step computed was needed
        if slots < len(reqs):
            assert stats["prefill_forwards"] > 1  # waiting trials were prefilled into freed slots
    # the injections matter (so the equality is informative)
    clean = generate_all(m, [Request(r.prompt, (), r.max_new_tokens) for r in reqs], slots=4)
    assert sum(c.tokens != g.tokens for c, g in zip(clean, got)) >= 5


@tiny
@pytest.mark.parametrize("arch", ARCHS)
def test_forced_eos_frees_slots_and_the_others_continue(tiny_model_of, arch, monkeypatch):
    m = tiny_model_of(arch)
    reqs = [Request(r.prompt, r.injections, N) for r in _requests(m)]
    ref = _reference(m, reqs).new_tokens
    eos = {ref[0][2], ref[5][0]}
    expect = [next((t[:i] for i, x in enumerate(t) if x in eos), t) for t in ref]
    assert {len(t) for t in expect} >= {0, N}, "pick EOS ids that end some rows early and leave others"
    _set_eos(monkeypatch, eos)
    got = generate_all(m, reqs, slots=3)
    assert [c.tokens for c in got] == expect
    # min_new_tokens forbids EOS before that many tokens (as HF's min_new_tokens does): rows whose EOS came
    # later are unchanged, the others run on past it with other tokens
    got_min = generate_all(m, reqs, slots=3, min_new_tokens=3)
    for c, e in zip(got_min, expect):
        assert len(c.tokens) >= 3 and not set(c.tokens[:3]) & eos
        if len(e) >= 3:
            assert c.tokens == e
    assert any(len(e) < 3 for e in expect)


@tiny
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_shared_prefixes_are_built_once_and_change_nothing(tiny_model_of, arch, monkeypatch):
    """Rows sharing a prompt prefix (the Exp 1 situation: one long preamble, different questions, injections
    from the question on) are prefilled from one cached prefix, left-padded within their group."""
    m = tiny_model_of(arch)
    head = " ".join(TEXTS[:4]) + "\n\n"
    reqs, g = [], torch.Generator().manual_seed(5)
    for i, q in enumerate(["Trial 1: yes?", "Trial 1: Do you detect an injected thought now?", "Trial 1: no"] * 3):
        p = render(m.tokenizer, [{"role": "user", "content": head + q}])
        start = p.token_span_of("Trial 1")[0]
        v = torch.randn(m.arch.d_model, generator=g)
        injs = () if i % 3 == 2 else (Injection(v, 1, 4.0, Window.from_position(start)),)
        reqs.append(Request(p, injs, 6))
    keys = {tuple(r.prompt.input_ids[:prefix_length(r.prompt, r.injections)]) for r in reqs}
    assert len(keys) == 2 and all(len(k) >= 16 for k in keys)  # the injected rows share one prefix; one clean prompt
    built = []
    real_build = cont_mod.build_prefix_cache
    monkeypatch.setattr(cont_mod, "build_prefix_cache", lambda model, ids: built.append(ids) or real_build(model, ids))
    ref = _reference(m, reqs)
    prefixes: dict = {}
    for slots in (9, 2):
        got = generate_all(m, reqs, slots=slots, prefixes=prefixes)
        for r, c in enumerate(got):
            assert c.tokens == ref.new_tokens[r][:6], f"slots={slots} row {r}"
            _doses_close(c.doses, ref.doses[r])
    assert len(built) == 2 and set(map(tuple, built)) == keys  # once per prefix, reused by the second call
    plain = generate_all(m, reqs, slots=2, prefixes=None)
    assert [c.tokens for c in plain] == [c.tokens for c in got]


@tiny
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_cache_doses_at_the_last_layer(tiny_model_of, arch):
    """The prefix's residual norms are read at each layer's output; HF's last hidden state is after the final
    norm, which made the dose of a last-layer injection with the prefix cache wrong (found by the test above)."""
    m = tiny_model_of(arch)
    p = render(m.tokenizer, [{"role": "user", "content": " ".join(TEXTS)}])
    last = m.arch.n_layers - 1
    injs = [Injection(torch.ones(m.arch.d_model), L, 2.0, Window.from_position(20)) for L in range(m.arch.n_layers)]
    prefix = execution.build_prefix_cache(m, p.input_ids[:20])
    with_prefix = generate(m, [p] * len(injs), injs, max_new_tokens=2, prefix=prefix)
    without = generate(m, [p] * len(injs), injs, max_new_tokens=2)
    for a, b in zip(with_prefix.doses, without.doses):
        _doses_close(a, b)
    assert with_prefix.new_tokens == without.new_tokens and injs[last].layer == last


def _prefix_requests(m, n_new=6):
    head = " ".join(TEXTS[:4]) + "\n\n"
    reqs, g = [], torch.Generator().manual_seed(5)
    for i, q in enumerate(["Trial 1: yes?", "Trial 1: Do you detect an injected thought now?", "Trial 1: no"] * 3):
        p = render(m.tokenizer, [{"role": "user", "content": head + q}])
        start = p.token_span_of("Trial 1")[0]
        v = torch.randn(m.arch.d_model, generator=g)
        injs = () if i % 3 == 2 else (Injection(v, 1, 4.0, Window.from_position(start)),)
        reqs.append(Request(p, injs, n_new))
    return reqs


@pytest.fixture(scope="module")
def sdpa_model():
    """Tiny models with SDPA attention (the fixtures use eager attention, which cascade attention does not replace)."""
    from conftest import build_tiny_model

    cache = {}

    def get(arch):
        if arch not in cache:
            m = build_tiny_model(arch)
            m.hf.config._attn_implementation = "sdpa"
            cache[arch] = m
        return cache[arch]

    return get


@tiny
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_cascade_attention_equals_copied_prefixes_and_hf_generate(sdpa_model, arch):
    """Rows that share a cached prefix keep only their own positions and attend to the prefix's keys once per
    step (kv_slots.cascade_attention): same greedy tokens as HF generate and as copying the prefix into every
    row; Gemma 3's sliding window (8) is shorter than the prefix, so the window also cuts into the prefix part."""
    from introspect_mech.kv_slots import cascade_supported

    m = sdpa_model(arch)
    assert cascade_supported(m)
    reqs = _prefix_requests(m, 8) + [Request(r.prompt, r.injections, r.max_new_tokens) for r in _requests(m)]
    ref = _reference(m, reqs)
    kv = {}
    for cascade in (True, False):
        for slots in (len(reqs), 4):
            st: dict = {}
            got = generate_all(m, reqs, slots=slots, prefixes={}, cascade=cascade, stats=st)
            for i, (c, r) in enumerate(zip(got, reqs)):
                assert c.tokens == ref.new_tokens[i][: r.max_new_tokens], f"cascade={cascade} slots={slots} row {i}"
                _doses_close(c.doses, ref.doses[i])
            kv[(cascade, slots)] = st["kv_bytes"]
    assert kv[(True, len(reqs))] < 0.6 * kv[(False, len(reqs))]  # the rows no longer hold the prefix
    seeded = [Request(r.prompt, r.injections, r.max_new_tokens, 40 + i) for i, r in enumerate(reqs)]
    sampled = [generate_all(m, seeded, slots=5, prefixes={}, cascade=c, temperature=1.0) for c in (True, False)]
    assert sum(a.tokens == b.tokens for a, b in zip(*sampled)) == len(reqs)  # same per-row streams


@tiny
def test_cascade_only_where_it_stands_in_for_sdpa(tiny_model_of, sdpa_model):
    from introspect_mech.kv_slots import cascade_supported

    assert not cascade_supported(tiny_model_of("llama"))  # eager attention: the copy path
    gpt2 = sdpa_model("gpt2")
    assert not cascade_supported(gpt2)  # GPT-2's attention takes other arguments
    with pytest.raises(ConfigError, match="cascade attention needs"):
        SlotCache(gpt2, 2, 10, cascade=True)
    reqs = _prefix_requests(gpt2)[:3]
    st: dict = {}
    generate_all(gpt2, reqs, slots=3, prefixes={}, stats=st)  # default: no cascade, prefixes copied
    assert st["kv_bytes"] > 0


# ---------------------------------------------------------------------------------------
# sampling: one stream per trial
# ---------------------------------------------------------------------------------------


@tiny
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_trials_sample_does_not_depend_on_its_neighbours_or_slot(tiny_model_of, arch):
    m = tiny_model_of(arch)
    reqs = _requests(m, seed_base=100)
    base = [c.tokens for c in generate_all(m, reqs, slots=12, temperature=1.0)]
    for slots in (5, 1):
        assert [c.tokens for c in generate_all(m, reqs, slots=slots, temperature=1.0)] == base
    order = list(reversed(range(len(reqs))))
    rev = generate_all(m, [reqs[i] for i in order], slots=3, temperature=1.0)
    assert [c.tokens for c in rev] == [base[i] for i in order]
    alone = [generate_all(m, [r], slots=1, temperature=1.0)[0].tokens for r in reqs[:4]]
    assert alone == base[:4]
    # the seed is what decides: other seeds give other samples, and sampling is not greedy
    other = [c.tokens for c in generate_all(m, _requests(m, seed_base=900), slots=12, temperature=1.0)]
    assert sum(a != b for a, b in zip(base, other)) >= 6
    greedy = [c.tokens for c in generate_all(m, reqs, slots=12)]
    assert sum(a != b for a, b in zip(base, greedy)) >= 6


def test_trial_seed_is_a_function_of_run_seed_and_trial():
    assert trial_seed(0, "abc") == trial_seed(0, "abc")
    assert len({trial_seed(0, "abc"), trial_seed(1, "abc"), trial_seed(0, "abd")}) == 3
    assert 0 <= trial_seed(7, "x") < 2 ** 32


# ---------------------------------------------------------------------------------------
# the cache and its masks as units
# ---------------------------------------------------------------------------------------


@tiny
def test_slot_cache_masks_follow_each_rows_positions(tiny_model_of):
    m = tiny_model_of("gemma3")  # layers: sliding (window 8), full, sliding
    cache = SlotCache(m, slots=3, capacity=40)
    assert cache.types == ["sliding_attention", "full_attention", "sliding_attention"] and cache.windows[0] == 8
    pos = torch.tensor([[-1, 20, 21], [10, 11, 12]])
    cache.prepare(1, pos)
    assert cache.rows == slice(1, 3) and cache.kv_len == 22 and cache.q_len == 3
    assert cache.write_cols.tolist() == [[40, 20, 21], [10, 11, 12]]  # the pad token's keys go to the spare column
    full, slide = cache.masks["full_attention"], cache.masks["sliding_attention"]
    ok = full == 0  # eager attention: additive masks
    cols = torch.arange(22)
    assert ok[0, 0, 0].tolist() == (cols == 0).tolist()  # a pad query sees column 0 only (no NaN)
    assert ok[0, 0, 1].tolist() == (cols <= 20).tolist()
    assert ok[1, 0, 2].tolist() == (cols <= 12).tolist()
    sok = slide == 0
    assert sok[0, 0, 2].tolist() == ((cols <= 21) & (cols > 21 - 8)).tolist()
    assert sok[1, 0, 0].tolist() == ((cols <= 10) & (cols > 2)).tolist()
    with pytest.raises(ValueError):
        cache.prepare(2, pos)  # rows 2..4 of a 3-slot cache
    llama = SlotCache(tiny_model_of("llama"), slots=2, capacity=10)
    llama.prepare(0, torch.tensor([[3], [5]]))
    assert torch.is_tensor(llama.masks) and llama.masks.shape == (2, 1, 1, 6)  # one layer type: one mask


@tiny
def test_continuous_refuses_what_it_cannot_run(tiny_model_of):
    import dataclasses

    m = tiny_model_of("llama")
    reqs = _requests(m)[:2]
    with pytest.raises(IntrospectError, match="local models only"):
        list(generate_continuous(dataclasses.replace(m, remote=True), reqs))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        list(generate_continuous(m, [Request(reqs[0].prompt, (), 0)]))
    with pytest.raises(ConfigError, match="slots"):
        list(generate_continuous(m, reqs, slots=0))
    assert list(generate_continuous(m, [])) == []


# ---------------------------------------------------------------------------------------
# run_sweep(decode="continuous"): storage units, resume, seeds
# ---------------------------------------------------------------------------------------


class MixedSweep:
    """Fourteen trials over four prompts, two reply lengths; injected and clean rows."""

    name = "tiny-continuous"

    def config(self) -> dict:
        return {"n": 14}

    def trials(self) -> list[Trial]:
        return [Trial(self.name, "c", concept=f"w{i}", prompt_key="abcd"[i % 4], sample=i) for i in range(14)]

    def prepare(self, model) -> None:
        pass

    def build(self, model, trial: Trial) -> TrialInput:
        i = trial.sample
        text = {"a": TEXTS[0] + " " + TEXTS[2], "b": TEXTS[1], "c": TEXTS[3], "d": TEXTS[5]}[trial.prompt_key]
        p = render(model.tokenizer, [{"role": "user", "content": text}])
        v = torch.randn(model.arch.d_model, generator=torch.Generator().manual_seed(i))
        injs = [] if i % 5 == 4 else [Injection(v, 1, 3.0, Window.from_position(max(0, len(p) - 4)))]
        return TrialInput(p, injs, max_new_tokens=3 if i % 3 else 7, info={"i": i})


def _recs(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def _by_id(out):
    return {r["trial_id"]: (r["response"], r["n_new_tokens"], r["seed"]) for r in _recs(out)}


def test_mixed_partition_is_deterministic_and_keeps_prompts_together():
    from introspect_mech.runner import plan_batches, segments_of

    trials = [Trial("x", "c", concept=f"w{i}", prompt_key="abc"[i % 3], sample=i) for i in range(10)]
    a = plan_batches(trials, 4, mixed=True)
    b = plan_batches(list(reversed(trials)), 4, mixed=True)
    assert [[t.trial_id for t in x] for x in a] == [[t.trial_id for t in x] for x in b]
    assert [len(x) for x in a] == [4, 4, 2]
    flat = [t for x in a for t in x]
    assert [t.prompt_key for t in flat] == sorted(t.prompt_key for t in flat)  # same prompts stay neighbours
    assert any(len({t.prompt_key for t in x}) > 1 for x in a)  # and batches mix prompts
    assert segments_of(9) == [list(range(8)), [8]]  # SEGMENT_BATCHES = 8


@tiny
def test_sweep_greedy_equals_hf_and_batches_mix_prompts(tiny_model_of, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SEGMENT_BATCHES", 4)  # 5 batches -> two segments
    m = tiny_model_of("qwen2")
    kw = dict(batch_size=3, temperature=0.0, seed=2, progress=False)
    run_sweep(MixedSweep(), m, tmp_path / "hf", decode="hf", **kw)
    run_sweep(MixedSweep(), m, tmp_path / "cont", decode="continuous", **kw)
    a = {k: v[:2] for k, v in _by_id(tmp_path / "hf").items()}
    b = {k: v[:2] for k, v in _by_id(tmp_path / "cont").items()}
    assert len(a) == 14 and a == b
    recs = _recs(tmp_path / "cont")
    by_batch: dict = {}
    for r in recs:
        by_batch.setdefault(r["batch"], []).append(r)
    assert sorted(len(v) for v in by_batch.values()) == [2, 3, 3, 3, 3]  # 14 trials in batches of 3, prompts mixed
    assert any(len({r["prompt_key"] for r in v}) > 1 for v in by_batch.values())
    assert {r["segment"] for r in recs} == {0, 1}  # segments of SEGMENT_BATCHES = 4 batches
    assert all(r["seed"] == trial_seed(2, r["trial_id"]) for r in recs)


@tiny
def test_sweep_samples_do_not_depend_on_batch_size(tiny_model_of, tmp_path):
    """Per-trial streams: the same trials sampled through 3 or 14 slots (other segments, other neighbours)."""
    m = tiny_model_of("llama")
    kw = dict(temperature=1.0, seed=4, progress=False, decode="continuous")
    run_sweep(MixedSweep(), m, tmp_path / "b3", batch_size=3, **kw)
    run_sweep(MixedSweep(), m, tmp_path / "b14", batch_size=14, **kw)
    assert _by_id(tmp_path / "b3") == _by_id(tmp_path / "b14")
    run_sweep(MixedSweep(), m, tmp_path / "s5", batch_size=3, **{**kw, "seed": 5})
    assert sum(a[0] != b[0] for a, b in zip(_by_id(tmp_path / "b3").values(), _by_id(tmp_path / "s5").values())) >= 5


@tiny
@pytest.mark.parametrize("cut_batch", [0, 5])
def test_sweep_resume_inside_a_segment_equals_uninterrupted(tiny_model_of, tmp_path, cut_batch):
    """A store cut inside a segment (first row of a batch kept, a torn line after it): the resumed run
    regenerates the whole segment and appends only the missing rows."""
    m = tiny_model_of("gemma3")
    kw = dict(batch_size=2, temperature=1.0, seed=3, progress=False, decode="continuous")
    whole = tmp_path / "whole"
    run_sweep(MixedSweep(), m, whole, **kw)
    lines = (whole / "results.jsonl").read_bytes().splitlines(keepends=True)
    batch_of = [json.loads(ln)["batch"] for ln in lines]
    first = batch_of.index(cut_batch)
    kept = lines[:first + 1]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "manifest.json").write_bytes((whole / "manifest.json").read_bytes())
    (cut / "results.jsonl").write_bytes(b"".join(kept) + lines[first + 1][:30])
    res = run_sweep(MixedSweep(), m, cut, **kw)
    assert res.n_done_before == len(kept) and res.n_generated == 14 - len(kept)
    assert _by_id(cut) == _by_id(whole)
    assert sorted(r["trial_id"] for r in _recs(cut)) == sorted(r["trial_id"] for r in _recs(whole))


@tiny
def test_sweep_max_batches_stores_whole_batches(tiny_model_of, tmp_path):
    m = tiny_model_of("llama")
    kw = dict(batch_size=3, temperature=1.0, seed=3, progress=False, decode="continuous")
    out = tmp_path / "run"
    seen = []
    run_sweep(MixedSweep(), m, out, max_batches=2, on_batch=seen.append, **kw)
    recs = _recs(out)
    assert len(seen) == 2 and len(recs) == 6 and {r["batch"] for r in recs} == set(seen)
    res = run_sweep(MixedSweep(), m, out, decode=None, **{k: v for k, v in kw.items() if k != "decode"})
    assert res.n_done_before == 6 and len(_recs(out)) == 14
    assert json.loads((out / "manifest.json").read_text())["decode"] == "continuous"
    run_sweep(MixedSweep(), m, tmp_path / "whole", **kw)
    assert _by_id(out) == _by_id(tmp_path / "whole")


@tiny
def test_sweep_refuses_continuous_where_it_cannot_run(tiny_model_of, tmp_path):
    import dataclasses

    m = tiny_model_of("llama")
    with pytest.raises(ConfigError, match="local models only"):
        run_sweep(MixedSweep(), dataclasses.replace(m, remote=True), tmp_path / "r", decode="continuous",
                  progress=False)
    with pytest.raises(ConfigError, match="only min_new_tokens"):
        run_sweep(MixedSweep(), m, tmp_path / "k", decode="continuous", progress=False,
                  generate_kwargs={"repetition_penalty": 1.2})
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    assert not (tmp_path / "k" / "manifest.json").exists()
    # a remote model's new run defaults to HF generate
    assert runner.default_decode(dataclasses.replace(m, remote=True)) == "hf"
    assert runner.default_decode(m) == "continuous"


# ---------------------------------------------------------------------------------------
# real model: Exp 1 prompts, mixed in one running batch, with the prefix cache
# ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_model_mixed_exp1_prompts_equal_hf_generate(smol, smol_vectors):  # noqa: F811
    from introspect_mech.experiments.injected_thoughts.protocol import InjectedThoughts
    from introspect_mech.experiments.injected_thoughts.config import InjectedThoughtsConfig

    exp = InjectedThoughts(smol, InjectedThoughtsConfig(layers=[19], strengths=[8.0], concepts=["dust", "origami",
                                                        "lightning", "bread"], control_trials=2, control_per_cell=1,
                                                        yes_bias_per_cell=2, alt_per_cell=1))
    exp.vectors = smol_vectors
    trials = exp.trials()
    assert {t.condition for t in trials} >= {"injected", "control", "yes_bias", "alt_prompt", "scaling", "negated"}
    inputs = [exp.build(smol, t) for t in trials]
    reqs = [Request(x.prompt, tuple(x.injections), 12) for x in inputs]
    prefixes: dict = {}
    got = generate_all(smol, reqs, slots=4, prefixes=prefixes)
    assert len(prefixes) >= 3  # the injected Exp 1/yes-bias prefix, the control prompt, each clean yes-bias prompt
    for group in sorted({x.prompt.text for x in inputs}):
        rows = [i for i, x in enumerate(inputs) if x.prompt.text == group]
        ref = generate(smol, [inputs[i].prompt for i in rows], [inputs[i].injections or None for i in rows],
                       max_new_tokens=12)
        for k, i in enumerate(rows):
            assert got[i].tokens == ref.new_tokens[k], f"trial {trials[i].condition} {trials[i].prompt_key}"
            _doses_close(got[i].doses, ref.doses[k], rel=1e-4)
    assert len({tuple(c.tokens) for c in got}) >= 5


@tiny
def test_a_temperature_that_overflows_the_logits_is_refused(tiny_model_of):
    """Red-team review: logits / 1e-300 overflow float32; continuous sampling silently returned the last
    vocabulary id for every token and HF generate raised on inf/nan probabilities mid-run. Both refuse it now."""
    m = tiny_model_of("llama")
    p = render(m.tokenizer, [{"role": "user", "content": TEXTS[4]}])
    with pytest.raises(ConfigError, match="pass 0 for greedy"):
        generate_all(m, [Request(p, (), 4, 1)], slots=1, temperature=1e-300)
    with pytest.raises(ConfigError, match="pass 0 for greedy"):
        generate(m, [p], [[]], max_new_tokens=4, temperature=1e-300, seed=1)
    with pytest.raises(ConfigError, match="pass 0 for greedy"):
        runner.check_run_settings(None, 1e-30, 0, None)
    runner.check_run_settings(None, 1e-4, 0, None)  # small but safe


@tiny
def test_stem_lengths_cut_prefixes_at_the_common_stem(sdpa_model):
    """Clean rows (prefix = prompt minus its last token) join the injected rows' stem when the cut leaves them at
    most MAX_STEM_EXTRA own columns; a prompt that shares less than MIN_PREFIX tokens keeps its own prefix; rows
    with no cacheable prefix stay at 0. A function of the request list alone."""
    m = sdpa_model("llama")
    reqs = _prefix_requests(m)
    keys = [cont_mod.prefix_length(r.prompt, r.injections) for r in reqs]
    stems = cont_mod.stem_lengths(reqs)
    injected = [k for k, r in zip(keys, reqs) if r.injections]
    assert len(set(injected)) == 1 and len(set(keys)) > 1  # clean rows have longer prefixes of their own
    assert stems == [injected[0]] * len(reqs)
    lone = Request(render(m.tokenizer, [{"role": "user", "content": "Zebra " * 40}]), ())
    stems = cont_mod.stem_lengths(reqs + [lone, Request(lone.prompt, (Injection.scaling(1, 2.0),))])
    assert stems[-2] == len(lone.prompt) - 1 and stems[-1] == 0
    far = Request(render(m.tokenizer, [{"role": "user", "content": " ".join(TEXTS[:4]) + "\n\n" + "word " * 80}]), ())
    assert cont_mod.stem_lengths(reqs + [far])[-1] == len(far.prompt) - 1  # > MAX_STEM_EXTRA own columns: own group
    assert cont_mod.stem_lengths(reqs) == cont_mod.stem_lengths(list(reqs))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_inverse_cdf_is_the_plain_formula_to_the_bit(temperature):
    # the sampler's pass-saving version must give the very floats of exp(z - max z).cumsum(), z = logits / T
    # (a sampled token is where a uniform draw falls in this array, so any difference could move a token)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5003, generator=g) * 6
    z = logits / temperature
    want = torch.exp(z - z.amax(-1, keepdim=True)).cumsum(-1)
    got = cont_mod.inverse_cdf(logits.clone(), temperature)
    assert torch.equal(got, want)
    before = logits.clone()
    cont_mod.inverse_cdf(logits, temperature)
    assert torch.equal(logits, before)  # the logits are not modified
