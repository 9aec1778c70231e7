"""The reliability review's cases (shared/notes/reliability-review.md), re-run as tests.

Most cases live next to the code they guard (the docstring of each test names its case numbers, and the
bad-input catalogue `tests/bad_inputs.py` carries a `review=` field); this file holds the rest, and
`test_every_review_case_has_a_test` checks that each of the 61 cases is reproduced somewhere.
Tiny models only, except where a case is about the real model.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from introspect_mech.errors import ArtifactError, ConfigError, StrengthError
from introspect_mech.inject import Injection, Window
from introspect_mech.runner import run_sweep

from test_decode_compact import TinySweep, read_records

from _real import smol  # noqa: F401

TESTS = Path(__file__).parent
REVIEW_CASES = range(1, 62)
pytestmark = pytest.mark.usefixtures("single_thread")
KW = dict(batch_size=3, temperature=1.0, seed=5, progress=False)


def _cases_named_in(text: str) -> set[int]:
    """Case numbers named as 'Case 9', 'Cases 3-4', 'Cases 8, 10', 'case 46' or review=(31,) / review=(12, 13)."""
    found: set[int] = set()
    for m in re.finditer(r"[Cc]ases? (\d+(?:\s*(?:[-–,]|and)\s*\d+)*)", text):
        for part in re.split(r"\s*(?:,|and)\s*", m.group(1)):
            lo, _, hi = re.sub(r"\s", "", part).replace("–", "-").partition("-")
            found.update(range(int(lo), int(hi or lo) + 1))
    for m in re.finditer(r"review=\(([\d,\s]+)\)", text):
        found.update(int(x) for x in m.group(1).replace(" ", "").split(",") if x)
    return found


def _test_texts() -> str:
    """Docstrings of test functions and the bad-input catalogue: where tests declare the cases they reproduce."""
    out = [(TESTS / "bad_inputs.py").read_text()]
    for f in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                out.append(ast.get_docstring(node) or "")
    return "\n".join(out)


def test_every_review_case_has_a_test():
    named = _cases_named_in(_test_texts())
    missing = sorted(set(REVIEW_CASES) - named)
    assert not missing, f"review cases without a test: {missing}"


def test_case_parser():
    assert _cases_named_in("Cases 3-4 and Case 9; cases 8, 10; review=(12, 13)") == {3, 4, 8, 9, 10, 12, 13}


# ---------------------------------------------------------------------------------------
# determinism, options that must work
# ---------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_stores(tiny_model_of, tmp_path):
    """Case 1: the same sweep twice with the same seed writes the same bytes."""
    m = tiny_model_of("llama")
    run_sweep(TinySweep(), m, tmp_path / "a", **KW)
    run_sweep(TinySweep(), m, tmp_path / "b", **KW)
    assert (tmp_path / "a" / "results.jsonl").read_bytes() == (tmp_path / "b" / "results.jsonl").read_bytes()


def test_huge_batch_size_and_odd_folder_names_work(tiny_model_of, tmp_path):
    """Cases 33, 51: a batch size far above the trial count, and an --out with spaces, quotes and non-ASCII."""
    m = tiny_model_of("llama")
    out = tmp_path / "with space" / "and 'quote' ünï"
    res = run_sweep(TinySweep(), m, out, **{**KW, "batch_size": 99999999999999999999})
    assert res.n_generated == 8 and len(read_records(out)) == 8


def test_duplicate_layers_and_strengths_are_listed_once(tiny_model_of):
    """Cases 35-36: `--layers 0.5,0.5,1` and `--strengths 4,4.0` each name one value."""
    from introspect_mech.cli import build_parser, experiment_config

    args = build_parser().parse_args(["run", "injected-thoughts", "--layers", "0.5,0.5,1", "--strengths", "4,4.0",
                                      "--out", "x"])
    spec, cfg = experiment_config(args)
    assert cfg.strengths == [4.0]
    exp = spec.make_protocol(tiny_model_of("llama"), cfg)
    assert exp.layers == [1]
    ids = [t.trial_id for t in exp.trials()]
    assert len(ids) == len(set(ids))


def test_trials_zero_is_refused():
    """Case 28: --trials 0."""
    from introspect_mech.cli import main

    assert main(["run", "injected-thoughts", "--trials", "0", "--out", "/nonexistent/x"]) == 2


def test_strength_that_overflows_the_model_dtype_is_refused(tiny_model_of):
    """Case 38: a strength that is finite but makes strength × vector overflow the model's dtype."""
    import introspect_mech as im

    m = tiny_model_of("llama")
    v = torch.full((m.arch.d_model,), 1e36)
    with pytest.raises(StrengthError, match="overflows"):
        im.forward(m, ["hi"], [Injection(v, 1, 1000.0, Window.all())])
    with pytest.raises(StrengthError, match="above"):
        Injection(torch.ones(m.arch.d_model), 1, 1e30)


def test_vectors_with_dots_in_the_name_are_two_files(tmp_path):
    """Case 24: `--out run.v1` and `--out run.v2` write two artefacts, and each loads its own words."""
    from introspect_mech.concepts import ConceptVectors

    ConceptVectors(["dust"], [1], torch.randn(1, 1, 8)).save(tmp_path / "run.v1")
    ConceptVectors(["origami"], [1], torch.randn(1, 1, 8)).save(tmp_path / "run.v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.v1.json", "run.v1.safetensors", "run.v2.json",
                                                          "run.v2.safetensors"]
    assert ConceptVectors.load(tmp_path / "run.v1").words == ["dust"]
    assert ConceptVectors.load(tmp_path / "run.v2.safetensors").words == ["origami"]


def _unsafe_calls(path: Path) -> list[str]:
    """Calls that load pickles, run code from strings or shells, or turn on remote model code."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(
            f, ast.Attribute) else "?"
        kw = {k.arg: k.value for k in node.keywords}
        true = lambda k: isinstance(kw.get(k), ast.Constant) and kw[k].value is True  # noqa: E731
        weights_only = true("weights_only")
        if name in ("eval", "exec", "os.system", "pickle.load", "pickle.loads", "yaml.load") \
                or (name == "torch.load" and not weights_only) or true("shell") or true("allow_pickle") \
                or true("trust_remote_code"):
            hits.append(f"{path.name}:{node.lineno} {name}")
    for node in ast.walk(ast.parse(path.read_text())):  # a default of trust_remote_code=True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
            defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
            for a, d in zip(args, defaults):
                if a.arg == "trust_remote_code" and isinstance(d, ast.Constant) and d.value is True:
                    hits.append(f"{path.name}:{node.lineno} default trust_remote_code=True")
    return hits


def test_package_has_no_unsafe_calls(tmp_path):
    """Case 54: no pickle loading, eval/exec, shell=True, os.system, unsafe yaml, allow_pickle or remote code on."""
    root = TESTS.parent
    files = list((root / "introspect_mech").rglob("*.py")) + list((root / "analyses").rglob("*.py"))
    hits = [h for p in files for h in _unsafe_calls(p)]
    assert not hits, hits
    planted = tmp_path / "planted.py"  # the scan itself can find each kind
    planted.write_text("import os, torch, subprocess\neval('1')\ntorch.load('x')\nsubprocess.run('ls', shell=True)\n"
                       "f(trust_remote_code=True)\ndef g(trust_remote_code=True): pass\n")
    assert len(_unsafe_calls(planted)) == 5


# ---------------------------------------------------------------------------------------
# report on odd runs (synthetic stores; the rule grader; no PNG export)
# ---------------------------------------------------------------------------------------


def _write_run(d: Path, records: list[dict], experiment: str = "injected_thoughts", tail: bytes = b"") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"experiment": experiment, "model": {"name": "m", "n_layers": 30},
                                                 "config": {}}))
    (d / "results.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)
    return d


def _exp1(i: int, condition: str = "injected", response: str = "Yes, I detect a thought about dust.", **kw) -> dict:
    r = {"trial_id": f"t{i}", "experiment": "injected_thoughts", "condition": condition, "concept": "dust",
         "layer": 14 if condition != "control" else None, "strength": 4.0 if condition != "control" else None,
         "prompt_key": "default", "sample": i, "category": "paper", "extra": {}, "dose": 0.3,
         "response": response, "prompt": "p"}
    r.update(kw)
    return r


def test_report_ignores_a_nul_tail_and_handles_a_huge_response(tmp_path):
    """Cases 18, 20: NUL bytes at the end of the store are ignored (the reader changes nothing); a multi-MB
    response is reported without truncation."""
    from introspect_mech.report import write_report

    huge = "dust " * 400_000  # 2 MB (graded on its first 20,000 characters, shown whole)
    recs = [_exp1(0), _exp1(1, response=huge), _exp1(2, "control", "No."), _exp1(3, "control", "No, nothing.")]
    run = _write_run(tmp_path / "run", recs, tail=b"\x00" * 8)
    before = (run / "results.jsonl").read_bytes()
    out = write_report(run, png=False)
    assert out["summary"]["n_records"] == 4
    assert (run / "results.jsonl").read_bytes() == before
    assert huge.strip() in (run / "report.html").read_text()


def test_report_on_a_read_only_run_writes_elsewhere(tmp_path, monkeypatch):
    """Case 52: a run folder that cannot be written is read (never opened for writing); the report goes to
    --figures-dir, and without it the error says so."""
    import builtins

    import introspect_mech.report as report_mod
    from introspect_mech.report import write_report

    run = _write_run(tmp_path / "run", [_exp1(0), _exp1(1, "control", "No.")])
    real_access, real_open = report_mod.os.access, builtins.open
    monkeypatch.setattr(report_mod.os, "access", lambda p, mode: False if Path(p) == run else real_access(p, mode))
    writes: list[str] = []

    def spy_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and str(run) in str(file):
            writes.append(str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    with pytest.raises(ConfigError, match="read-only; pass --figures-dir"):
        write_report(run, png=False)
    out = write_report(run, png=False, figures_dir=tmp_path / "elsewhere")
    assert Path(out["html"]).parent == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere" / "summary.json").exists()
    assert not writes and sorted(p.name for p in run.iterdir()) == ["manifest.json", "results.jsonl"]


@pytest.mark.integration
def test_odd_concept_names_build_no_paths(smol, tmp_path):
    """Case 47: concept names with slashes, dots and emoji are data, never parts of a file path."""
    from introspect_mech.experiments.injected_thoughts.protocol import InjectedThoughts
    from introspect_mech.experiments.injected_thoughts.config import InjectedThoughtsConfig
    from introspect_mech.report import write_report

    cfg = InjectedThoughtsConfig(layers=[0.5], strengths=[2.0], concepts="🦄,../../etc/passwd,/,-,Ωmega",
                                 controls=("control",), control_trials=2, max_new_tokens=2)
    before = set(tmp_path.parent.iterdir())
    out = tmp_path / "run"
    run_sweep(InjectedThoughts(smol, cfg), smol, out, **KW)
    write_report(out, png=False)
    assert set(tmp_path.parent.iterdir()) == before
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert not any("passwd" in n or "🦄" in n or "Ωmega" in n for n in names)
    assert "ωmega" in (out / "report.html").read_text()  # concepts are stored lower-cased


def test_report_refuses_records_that_are_not_the_manifest_experiment(tmp_path):
    """Case 22: an Exp 1 store whose manifest was edited to say Exp 3 is refused, not reported as Exp 3."""
    from introspect_mech.report import write_report

    run = _write_run(tmp_path / "run", [_exp1(0)], experiment="prefill_intent")
    with pytest.raises(ArtifactError, match="manifest says 'prefill_intent'"):
        write_report(run, png=False)
