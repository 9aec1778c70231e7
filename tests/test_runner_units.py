"""Runner pieces that need no real model: batch planning, auto batch size, shared-prefix detection."""

from __future__ import annotations

import pytest
import torch

from introspect_mech import runner
from introspect_mech.inject import Injection, Window
from introspect_mech.prompts import RenderedPrompt
from introspect_mech.runner import Trial, TrialInput, auto_batch_size, plan_batches, shared_prefix_length


def _t(key, i):
    return Trial("x", "c", concept=f"w{i}", prompt_key=key, sample=i)


def test_plan_batches_is_deterministic_and_never_mixes_prompts():
    trials = [_t("a", i) for i in range(5)] + [_t("b", i) for i in range(3)]
    b1 = plan_batches(trials, 4)
    b2 = plan_batches(list(reversed(trials)), 4)
    assert [[t.trial_id for t in b] for b in b1] == [[t.trial_id for t in b] for b in b2]
    assert all(len({t.prompt_key for t in b}) == 1 for b in b1)
    assert sorted(len(b) for b in b1) == [1, 3, 4]


def test_auto_batch_size_follows_memory(monkeypatch, tiny_model_of):
    m = tiny_model_of("llama")
    monkeypatch.setattr(runner, "available_bytes", lambda model: 10_000)
    assert auto_batch_size(m, 100, 50) == 1
    monkeypatch.setattr(runner, "available_bytes", lambda model: 1 << 40)
    assert auto_batch_size(m, 100, 50) == runner.CPU_BATCH_CAP == 64


def test_shared_prefix_length():
    rp = RenderedPrompt("x" * 40, tuple(range(40)), tuple((i, i + 1) for i in range(40)), "raw")
    other = RenderedPrompt("y" * 40, tuple(range(1, 41)), tuple((i, i + 1) for i in range(40)), "raw")
    v = torch.ones(4)
    inj = lambda s: [Injection(v, 0, 1.0, Window.from_position(s))]  # noqa: E731
    assert shared_prefix_length([TrialInput(rp, inj(30)), TrialInput(rp, [])]) == 30
    assert shared_prefix_length([TrialInput(rp, inj(30)), TrialInput(rp, inj(20))]) == 20
    assert shared_prefix_length([TrialInput(rp, inj(5))]) == 0  # too short to be worth it
    assert shared_prefix_length([TrialInput(rp, []), TrialInput(other, [])]) == 0  # different prompts
    assert shared_prefix_length([TrialInput(rp, [])]) == 39  # the last token must run
