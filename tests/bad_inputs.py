"""Catalogue of bad inputs and the error each gets — used by the tests and to print the README table.

Run ``python tests/bad_inputs.py`` to print the Markdown table (every message is produced live).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Case:
    what: str
    argv: Callable[[Path], list[str]] | None  # CLI arguments (tmp dir → argv)
    needle: str  # must occur in the one-line error
    call: Callable[[Path], None] | None = None  # a Python API call instead of the CLI


def _vectors(tmp: Path, dim: int = 576, name: str = "v") -> str:
    import torch

    from introspect_mech.concepts import ConceptVectors

    ConceptVectors(["dust", "origami"], [19], torch.randn(2, 1, dim), {}).save(tmp / name)
    return str(tmp / name)


def _corrupt_vectors(tmp: Path) -> str:
    (tmp / "bad.safetensors").write_bytes(b"\x00garbage")
    (tmp / "bad.json").write_text('{"words": ["dust"], "layers": [19]}')
    return str(tmp / "bad")


def _run_dir(tmp: Path, body: str) -> str:
    d = tmp / "run"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"experiment": "injected_thoughts", "model": {"n_layers": 30}}))
    (d / "results.jsonl").write_text(body)
    return str(d)


def _no_template(tmp: Path) -> None:
    import copy

    import introspect_mech as im

    tok = copy.deepcopy(im.load_model().tokenizer)
    tok.chat_template = None
    im.render(tok, [im.Turn("user", "hi")], fmt="chat")


def _judge_without_key(tmp: Path) -> None:
    from introspect_mech.grading.base import GradeRequest
    from introspect_mech.report import make_grader

    os.environ.pop("OPENAI_API_KEY", None)
    make_grader("openai:gpt-4o-mini").grade(GradeRequest("p", "r", "dust"))


def _mismatched_vector(tmp: Path) -> None:
    import torch

    import introspect_mech as im

    m = im.load_model()
    im.forward(m, ["hi"], [im.Injection(torch.ones(64), 19, 2.0)])


S = ["steer", "--max-new-tokens", "2"]
R = ["run", "injected-thoughts", "--no-progress", "--max-new-tokens", "2"]

CASES: list[Case] = [
    Case("unknown model name", lambda t: S + ["--model", "no-such-model"], "unknown model"),
    Case("model path that does not exist", lambda t: S + ["--model", "./missing/model"], "unknown model"),
    Case("unknown dtype", lambda t: S + ["--dtype", "float8"], "unknown dtype"),
    Case("layer index out of range", lambda t: S + ["--layer", "42"], "out of range"),
    Case("depth fraction > 1", lambda t: S + ["--layer", "1.5"], "outside [0, 1]"),
    Case("layer that is not a number", lambda t: S + ["--layer", "middle"], "neither an integer"),
    Case("NaN strength", lambda t: S + ["--strength", "nan"], "not finite"),
    Case("infinite strength", lambda t: S + ["--strength", "inf"], "not finite"),
    Case("negative strength", lambda t: S + ["--strength=-2"], "negative"),
    Case("empty concept word", lambda t: S + ["--concept", " "], "empty"),
    Case("concept not in the vector file", lambda t: S + ["--concept", "unicorns", "--vectors", _vectors(t)], "no vector"),
    Case("missing vector file", lambda t: S + ["--vectors", str(t / "nope")], "does not exist"),
    Case("corrupt vector file", lambda t: S + ["--vectors", _corrupt_vectors(t)], "corrupt"),
    Case("vector file of another width (d_model)", lambda t: S + ["--vectors", _vectors(t, 64)], "d_model"),
    Case("empty word in a word list", lambda t: ["vectors", "--words", "dust,,origami", "--out", str(t / "v")], "empty"),
    Case("layer list with an out-of-range layer", lambda t: ["vectors", "--words", "dust", "--layers", "0.5,40",
                                                             "--out", str(t / "v")], "out of range"),
    Case("unknown control condition", lambda t: R + ["--controls", "bogus", "--out", str(t / "r")], "unknown control"),
    Case("no concepts selected", lambda t: R + ["--concepts", ",", "--out", str(t / "r")], "no concepts"),
    Case("batch size 0", lambda t: R + ["--concepts", "dust", "--layers", "0.5", "--strengths", "2", "--controls",
                                        "control", "--control-trials", "1", "--batch-size", "0", "--out", str(t / "r")],
         "batch_size"),
    Case("system 'none' on a template that inserts its own system turn",
         lambda t: R + ["--concepts", "dust", "--system", "none", "--out", str(t / "r")], "system='empty'"),
    Case("more yes-bias questions per cell than the paper has", lambda t: R + ["--yes-bias-per-cell", "30", "--out",
                                                                              str(t / "r")], "yes_bias_per_cell"),
    Case("NaN strength for the fixed random control", lambda t: R + ["--random-fixed-strength", "nan", "--out",
                                                                     str(t / "r")], "not finite"),
    Case("too many sentence pairs (Exp 4)", lambda t: ["run", "intentional-control", "--n-pairs", "80", "--out",
                                                       str(t / "r")], "n_pairs"),
    Case("report on a folder that is not a run", lambda t: ["report", str(t)], "not a run folder"),
    Case("corrupt results file", lambda t: ["report", _run_dir(t, '{"trial_id": "a"}\nnot json at all\n')], "corrupt"),
    Case("results file with no trials yet", lambda t: ["report", _run_dir(t, "")], "no trials"),
    Case("unknown grader", lambda t: ["report", _run_dir(t, '{"trial_id": "a"}\n'), "--grader", "magic"],
         "unknown grader"),
    Case("tokenizer without a chat template, chat format requested", None, "fmt='raw'", _no_template),
    Case("LLM judge without an API key", None, "OPENAI_API_KEY", _judge_without_key),
    Case("injection vector of the wrong dimension", None, "d_model", _mismatched_vector),
]


def run_case(case: Case, tmp: Path) -> tuple[int, str]:
    """Returns (exit code, the error line)."""
    from introspect_mech.cli import main
    from introspect_mech.errors import IntrospectError

    if case.call is not None:
        try:
            case.call(tmp)
        except IntrospectError as exc:
            return 2, f"error: {exc}"
        return 0, ""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(case.argv(tmp))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error")]
    return code, lines[-1] if lines else err.getvalue().strip()


if __name__ == "__main__":
    import tempfile

    print("| bad input | error message (exit status 2) |")
    print("|---|---|")
    for c in CASES:
        with tempfile.TemporaryDirectory() as d:
            code, msg = run_case(c, Path(d))
        msg = msg.replace("|", "\\|")
        print(f"| {c.what} | `{msg[:300]}` |" if code == 2 else f"| {c.what} | UNEXPECTED exit {code}: {msg} |")
    sys.exit(0)
