"""Every trace an experiment or analysis runs, through nnsight's remote="local" path (serialized as for NDIF,
this package shipped by value), on tiny models: same results as local execution.

``execution.forward`` and ``execution.generate`` are the only traces that can run remotely (the compact
and continuous decode loops and the prefix cache are local-only, refused for remote models). What
differs between traces is what runs *inside* them: which recordings and which interventions
``step.touch_layers`` takes on, the packed 4-D mask of reply scoring, the decode loop of ``generate``.
``KINDS`` holds one entry per call site of ``forward``/``generate`` in the package and the analyses,
calling it with the same record spec and intervention types as that site; ``test_every_call_site_is
_covered`` scans the sources so that a new call site cannot skip this test. (A comment line inside a
traced ``with`` block, or a save before ``tracer.iter``, broke this path while local runs passed.)
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from introspect_mech.execution import forward, generate
from introspect_mech.inject import Injection, Window
from introspect_mech.interventions import DirectionAblation, HeadAblation, MLPAblation, ResidualPatch
from introspect_mech.prompts import render
from introspect_mech.record import RecordSpec
from introspect_mech.reply_scoring import build_reply_layout, score_replies

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
TEXTS = ("The old clock on the wall ticked loudly.", "Tell me about dust", "Name three colours.")


def _prompts(m):
    return [render(m.tokenizer, [{"role": "user", "content": t}]) for t in TEXTS]


def _vec(m, seed):
    return torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(seed))


def _injs(m, ps):
    return [Injection(_vec(m, 1), 1, 3.0, Window.from_position(len(ps[0]) - 4)), None,
            Injection.scaling(2, 1.5, Window.all())]


def _heads(m, ps, layer):
    return forward(m, ps, None, record=RecordSpec(layers=[layer], residual=False, head_outputs=True,
                                                  logits=False)).head_outputs[layer]


# one entry per call site: (model, prompts) -> a Recording, Generation or tensor
KINDS = {
    "introspect_mech/concepts.py:_last_token_residuals":
        lambda m, ps: forward(m, ps, record=RecordSpec(layers=[0, 2], residual=True, logits=False)),
    "introspect_mech/experiments/intentional_control/protocol.py:execute":
        lambda m, ps: forward(m, ps, record=RecordSpec(layers=None, residual=False, logits=False,
                                                       cosine_with=torch.stack([_vec(m, 2), _vec(m, 3)]))),
    "introspect_mech/reply_scoring.py:score_replies":
        lambda m, ps: score_replies(m, build_reply_layout(m, ps, [" Yes.", " No, sorry."], packed=True),
                                    _injs(m, ps), 2, ablations_for=lambda i, j: [HeadAblation(1, (0,), rows=(0,))]
                                    if i == 0 else [], with_doses=True),
    "introspect_mech/runner.py:_generate_rows":
        lambda m, ps: generate(m, ps, _injs(m, ps), max_new_tokens=4, temperature=1.0, seed=3),
    "introspect_mech/organism/evaluate.py:generate_rows":
        lambda m, ps: generate(m, ps, [_injs(m, ps)[0], None, _injs(m, ps)[0]], max_new_tokens=4, temperature=1.0,
                               seed=5),
    "introspect_mech/organism/train.py:dose_references":
        lambda m, ps: forward(m, ps, [[Injection(torch.zeros(m.arch.d_model), L, 1.0, Window.all()) for L in (1, 2)]
                                      for _ in ps]),
    "introspect_mech/cli.py:cmd_steer":
        lambda m, ps: generate(m, [ps[0], ps[0]], [None, _injs(m, ps)[0]], max_new_tokens=4, temperature=0.0, seed=0),
    "analyses/anomaly_detection.py:collect":
        lambda m, ps: forward(m, ps, _injs(m, ps), record=RecordSpec(layers=[1, 2], last_token_only=True,
                                                                      logits=False)),
    "analyses/attention_plots.py:attention_maps":
        lambda m, ps: forward(m, ps[:1], [_injs(m, ps)[0]], record=RecordSpec(layers=None, attention=True,
                                                                             residual=False, logits=False)),
    "analyses/circuits.py:_recording":
        lambda m, ps: forward(m, ps, _injs(m, ps), record=RecordSpec(layers=None, residual=True, head_outputs=True,
                                                                     components=True, logits=False)),
    "analyses/circuits.py:per_row":
        lambda m, ps: forward(m, ps, _injs(m, ps), ablations=[
            HeadAblation(1, (0, 2), "zero"), HeadAblation(2, (1,), "mean", torch.ones(m.arch.n_heads, m.arch.head_dim)),
            HeadAblation(0, (3,), "patch", _heads(m, ps, 0)), MLPAblation(1, "zero", rows=(0,)),
            MLPAblation(2, "mean", _vec(m, 4)), DirectionAblation(1, _vec(m, 5)),
            DirectionAblation(2, _vec(m, 6), value=0.5, start=2, rows=(1, 2))]),
    "analyses/concordance/features.py:head_attention_features":
        lambda m, ps: forward(m, ps, [None, [_injs(m, ps)[0]], None], record=RecordSpec(
            layers=None, attention=True, residual=False, logits=False)),
    "analyses/concordance/metric.py:patch_source":
        lambda m, ps: forward(m, ps, None, record=RecordSpec(layers=None, residual=False, head_outputs=True,
                                                             logits=False)),
    "analyses/thought_control.py:contributions":
        lambda m, ps: forward(m, ps, record=RecordSpec(layers=None, residual=True, components=True, logits=False)),
}
# forward with residual patches and MLP patch values: not at a call site today, but part of forward's contract
EXTRA = {
    "forward:residual_patch_and_mlp_patch":
        lambda m, ps: forward(m, ps, None, patches=[ResidualPatch(1, 0, 3, _vec(m, 7))],
                              ablations=[MLPAblation(2, "patch", forward(m, ps, record=RecordSpec(
                                  layers=[2], residual=False, components=True, logits=False)).mlp_out[2])]),
}


def _same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.equal(a, b) or torch.allclose(a, b, atol=0, rtol=0, equal_nan=True), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if f.name not in ("batch",):
                _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert a == b, where


@pytest.mark.parametrize("kind", sorted(KINDS) + sorted(EXTRA))
def test_trace_kind_survives_ndif_serialization(tiny_model_of, kind):
    m = tiny_model_of("llama")
    sim = dataclasses.replace(m, simulate_remote=True)
    assert sim.trace_kwargs == {"remote": "local"}
    fn = {**KINDS, **EXTRA}[kind]
    ps = _prompts(m)
    torch.manual_seed(0)
    local = fn(m, ps)
    torch.manual_seed(0)
    remote = fn(sim, ps)
    _same(local, remote, kind)
    # the trace did something: recordings or tokens are not empty
    assert any(v is not None and (not hasattr(v, "__len__") or len(v)) for v in
               (dataclasses.asdict(local).values() if dataclasses.is_dataclass(local) else [local]))


@pytest.mark.parametrize("kind", ["analyses/circuits.py:_recording", "introspect_mech/runner.py:_generate_rows"])
def test_trace_kinds_on_gpt2_and_gemma3(tiny_model_of, kind):
    for arch in ("gpt2", "gemma3"):
        m = tiny_model_of(arch)
        sim = dataclasses.replace(m, simulate_remote=True)
        ps = _prompts(m)
        torch.manual_seed(0)
        local = KINDS[kind](m, ps)
        torch.manual_seed(0)
        _same(local, KINDS[kind](sim, ps), f"{arch} {kind}")


def _call_sites() -> set[str]:
    """``path:function`` (innermost enclosing function) of every call to ``forward(...)`` / ``generate(...)``
    outside execution.py and the local-only decode loops."""
    found: set[str] = set()
    files = list((ROOT / "introspect_mech").rglob("*.py")) + list((ROOT / "analyses").rglob("*.py"))
    skip = {"introspect_mech/execution.py", "introspect_mech/decode.py", "introspect_mech/continuous.py"}

    class Visitor(ast.NodeVisitor):
        def __init__(self, rel: str) -> None:
            self.rel, self.stack = rel, ["<module>"]

        def visit_FunctionDef(self, node: ast.AST) -> None:
            self.stack.append(node.name)
            self.generic_visit(node)
            self.stack.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Call(self, node: ast.Call) -> None:
            if isinstance(node.func, ast.Name) and node.func.id in ("forward", "generate"):
                found.add(f"{self.rel}:{self.stack[-1]}")
            self.generic_visit(node)

    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel not in skip:
            Visitor(rel).visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_every_call_site_is_covered():
    sites = _call_sites()
    assert len(sites) >= 12
    missing, stale = sites - set(KINDS), set(KINDS) - sites
    assert not missing, f"trace call sites without a remote=local test: {sorted(missing)} — add them to KINDS"
    assert not stale, f"KINDS lists call sites that no longer exist: {sorted(stale)}"
