"""Generations that stop early: every generation path, with a batch whose rows all stop at once.

Why this file exists: with nnsight 0.8, code placed after ``for step in tracer.iter[:n]`` never
runs when HF ``generate`` stops before ``n`` steps (every row emitted EOS). ``execution.generate``
once saved its per-step store there, so any batch whose replies all ended early crashed with
``UnboundLocalError`` — the first ``steer`` with an ordinary question, and every resume of a sweep
batch that ended early. The suite never generated such a batch; these tests do, on every path:
HF generate and the compact loop, greedy and sampled, with and without recording, on the four
original tiny architectures (greedy only on the five added ones) and on the real model (CLI
``steer`` and ``run_sweep``).

Tiny random models rarely emit their EOS token, so EOS is forced by declaring as EOS the tokens
each row is known to produce at a given step (the reference run with the same seed).
"""

from __future__ import annotations

import json

import pytest
import torch

from introspect_mech import decode as decode_mod
from introspect_mech import execution
from introspect_mech.decode import generate_compact
from introspect_mech.execution import generate
from introspect_mech.inject import Injection, Window
from introspect_mech.prompts import render
from introspect_mech.record import RecordSpec

from conftest import EXTRA_ARCHS
from test_decode_compact import N, injections_for, prompts_for  # prompts known not to emit EOS in N steps

ARCHS = ("llama", "gemma3", "qwen2", "gpt2")


def _setup(m):
    prompts = prompts_for(m)
    return prompts, injections_for(m, prompts)


def _force_eos(monkeypatch, ids):
    ids = {int(i) for i in ids}
    monkeypatch.setattr(decode_mod, "eos_ids", lambda model: set(ids))
    monkeypatch.setattr(execution, "eos_ids", lambda model: set(ids))
    return sorted(ids)


def _run(path, m, prompts, injs, temperature, record, eos=None):
    kw = dict(max_new_tokens=N, temperature=temperature, seed=5)
    if path == "hf":
        if eos is not None:
            kw["eos_token_id"] = eos
        return generate(m, prompts, injs, record=record, **kw)
    return generate_compact(m, prompts, injs, **kw)


CASES = [(p, t, r) for p in ("hf", "compact") for t in (0.0, 1.0) for r in (False, True) if not (p == "compact" and r)]


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path,temperature,with_record", CASES,
                         ids=[f"{p}-T{t:g}-{'rec' if r else 'norec'}" for p, t, r in CASES])
@pytest.mark.parametrize("stop_at", [0, 1])
def test_all_rows_stop_at_the_same_early_step(tiny_model_of, arch, path, temperature, with_record, stop_at,
                                              monkeypatch):
    """Every row emits EOS at step ``stop_at`` (or before): no crash, replies cut there, doses and recording kept."""
    m = tiny_model_of(arch)
    prompts, injs = _setup(m)
    record = RecordSpec(layers=[1], residual=True) if with_record else None
    ref = _run(path, m, prompts, injs, temperature, record)
    assert all(len(t) == N for t in ref.new_tokens), "a tiny model emitted EOS in the reference run"
    eos_set = {t[stop_at] for t in ref.new_tokens}  # every row stops at step `stop_at` or earlier
    expect = [next((t[:i] for i, x in enumerate(t) if x in eos_set), t) for t in ref.new_tokens]
    eos = _force_eos(monkeypatch, eos_set)
    got = _run(path, m, prompts, injs, temperature, record, eos=eos)
    assert got.new_tokens == expect and max(len(t) for t in expect) == stop_at
    assert got.texts == [m.tokenizer.decode(t, skip_special_tokens=True) for t in expect]
    assert got.doses == ref.doses and got.doses[0][0] is not None and got.doses[2] == []
    if with_record:  # one recorded entry per forward pass that ran: the prefill, plus one per decode step
        steps = [s.residual[1] for s in got.recording]
        assert len(steps) == stop_at + 1
        assert steps[0].shape[:2] == (len(prompts), got.batch.width)
        for a, b in zip(steps, [s.residual[1] for s in ref.recording]):
            assert torch.equal(a, b)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", ["hf", "compact"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_stop_at_different_steps(tiny_model_of, arch, path, temperature, monkeypatch):
    """Row 0 stops at step 0, row 1 at step 2, the others later or at the limit."""
    m = tiny_model_of(arch)
    prompts, injs = _setup(m)
    ref = _run(path, m, prompts, injs, temperature, None).new_tokens
    eos_set = {ref[0][0], ref[1][2]}
    expect = [next((t[:i] for i, x in enumerate(t) if x in eos_set), t) for t in ref]
    if len(expect[0]) != 0 or len(expect[1]) > 2:
        pytest.skip("token collision between rows; the reference run gives no clean staggered stop")
    eos = _force_eos(monkeypatch, eos_set)
    got = _run(path, m, prompts, injs, temperature, None, eos=eos)
    if path == "compact" and temperature > 0:
        # the compact loop draws one sample per *remaining* row, so once a row leaves, the others' random
        # stream differs from the full-batch run: only the first step and the stopping rule can be compared
        assert got.new_tokens[0] == [] and got.new_tokens[1][:1] == expect[1][:1]
        assert all(not (set(t) & eos_set) and len(t) <= N for t in got.new_tokens)
        return
    assert got.new_tokens == expect
    assert got.doses == _run(path, m, prompts, injs, temperature, None, eos=eos).doses


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("arch", EXTRA_ARCHS)
@pytest.mark.parametrize("path,with_record", [("hf", True), ("compact", False)])
def test_added_architectures_stop_early(tiny_model_of, arch, path, with_record, monkeypatch):
    """The five added architectures (Mistral/Gemma 2 sliding-window caches, Phi-3's fused projections, OLMo-2's
    post-norms), greedy: every row stops at step 1, then rows stop at different steps. Sampling and stop_at=0
    exercise no architecture-specific code, so they run on the original four only (keeps the tier fast)."""
    test_all_rows_stop_at_the_same_early_step(tiny_model_of, arch, path, 0.0, with_record, 1, monkeypatch)
    monkeypatch.undo()
    test_rows_stop_at_different_steps(tiny_model_of, arch, path, 0.0, monkeypatch)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_all_rows_stop_early_through_ndif_serialization(tiny_model_of, arch, monkeypatch):
    """The same early stop through nnsight's remote="local" path (serialized as for NDIF): no crash, same
    tokens and recording as local execution. (A save placed before the loop, or a comment line inside the
    trace's with-block, broke this path while the local one passed.)"""
    import dataclasses

    m = tiny_model_of(arch)
    sim = dataclasses.replace(m, simulate_remote=True)
    prompts, injs = _setup(m)
    record = RecordSpec(layers=[1], residual=True)
    ref = _run("hf", m, prompts, injs, 0.0, record)
    eos = _force_eos(monkeypatch, {t[1] for t in ref.new_tokens})
    local = _run("hf", m, prompts, injs, 0.0, record, eos=eos)
    remote = _run("hf", sim, prompts, injs, 0.0, record, eos=eos)
    assert remote.new_tokens == local.new_tokens and max(len(t) for t in local.new_tokens) <= 1
    assert len(remote.recording) == len(local.recording)
    for a, b in zip([s.residual[1] for s in remote.recording], [s.residual[1] for s in local.recording]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# Real model: the reproductions of the reliability review (cases 44-46)
# ---------------------------------------------------------------------------------------

from _real import smol  # noqa: E402,F401


@pytest.mark.integration
def test_steer_short_answer_does_not_crash(tmp_path, capsys):
    """Review case 46: both rows stop long before 60 tokens."""
    from introspect_mech.cli import main

    out = tmp_path / "s.json"
    assert main(["steer", "--prompt", "What is the capital of France? One word.", "--concept", "dust",
                 "--strength", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "Paris" in res["clean"] and res["dose"] > 0
    assert "without injection" in capsys.readouterr().out


class ShortAnswers:
    """A minimal experiment for ``run_sweep``: short-answer questions, one injected row per question."""

    name = "short_answers"
    QUESTIONS = ("What is the capital of France? One word.", "What is 2+2? Answer with a number only.")

    def __init__(self, vec):
        self.vec = vec

    def config(self) -> dict:
        return {"questions": list(self.QUESTIONS)}

    def trials(self):
        from introspect_mech.runner import Trial

        return [Trial(self.name, c, prompt_key=str(i)) for i in range(len(self.QUESTIONS))
                for c in ("clean", "injected")]

    def prepare(self, model) -> None:
        pass

    def build(self, model, trial):
        from introspect_mech.runner import TrialInput

        p = render(model.tokenizer, [{"role": "user", "content": self.QUESTIONS[int(trial.prompt_key)]}])
        injs = [Injection(self.vec, model.arch.n_layers // 2, 1.0, Window.all())] if trial.condition == "injected" else []
        return TrialInput(p, injs, 40)


@pytest.mark.integration
@pytest.mark.parametrize("decode", ["hf", "compact"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sweep_batches_that_end_early_finish(smol, tmp_path, decode, temperature):
    """Review cases 44-45: a sweep whose batches all end before max_new_tokens completes, greedy and sampled,
    and a second run of the same command resumes with nothing to do."""
    from introspect_mech.runner import run_sweep

    vec = torch.randn(smol.arch.d_model, generator=torch.Generator().manual_seed(0))
    # Sampled replies depend on the CPU's kernels, so a sampled sweep tries seeds until one of its batches has
    # every row stop early (greedy needs one); the first seed almost always does.
    seeds = [1] if temperature == 0 else list(range(1, 9))
    seen = {}
    for seed in seeds:
        run = tmp_path / f"r{seed}"
        res = run_sweep(ShortAnswers(vec), smol, run, batch_size=2, temperature=temperature, seed=seed,
                        progress=False, decode=decode)
        assert res.n_generated == res.n_trials == 4
        recs = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
        assert len(recs) == 4
        by_batch: dict = {}
        for r in recs:
            by_batch.setdefault(r["batch"], []).append(r["n_new_tokens"])
        seen[seed] = by_batch
        if any(max(n) < 40 for n in by_batch.values()):
            break
    else:
        raise AssertionError(f"no batch ended early under any seed: {seen}")
    again = run_sweep(ShortAnswers(vec), smol, run, batch_size=2, temperature=temperature, seed=seed,
                      progress=False, decode=decode)
    assert again.n_generated == 0
