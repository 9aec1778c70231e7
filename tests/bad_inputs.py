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


@contextlib.contextmanager
def _env(**values: str):
    """Set environment variables for one case, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _judge_endpoint(reply: Callable[[int], tuple[int, dict, bytes]]):
    """A local OpenAI-compatible endpoint: request i gets reply(i) = (status, headers, body)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                i = count[0]
                count[0] += 1
            status, headers, body = reply(i)
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with _env(OPENAI_API_KEY="sk-catalogue", no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost"):
            yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


_YES = (200, {"Content-Type": "application/json"}, b'{"choices": [{"message": {"content": "YES"}}]}')


def _grade_via(tmp: Path, reply: Callable[[int], tuple[int, dict, bytes]], n: int = 2) -> None:
    """Grade n Exp 1 replies with `--grader openai:fake-judge` against a local endpoint answering `reply`."""
    from introspect_mech.grading.base import GradeRequest
    from introspect_mech.report import make_grader

    with _judge_endpoint(reply) as url:
        judge = make_grader("openai:fake-judge", base_url=url, cache_path=tmp / "judge_cache.jsonl")
        judge.grade_many([GradeRequest("Do you detect an injected thought?", f"I detect dust {i}.", "dust")
                          for i in range(n)])


def _judge_redirects(tmp: Path) -> None:
    _grade_via(tmp, lambda i: (302, {"Location": "http://127.0.0.1:9/v1/chat/completions"}, b""))


def _judge_fails_midway(tmp: Path) -> None:
    # 3 good answers, then HTTP 500 (Retry-After: 0 keeps the retries instant)
    _grade_via(tmp, lambda i: _YES if i < 3 else (500, {"Retry-After": "0"}, b"{}"), n=2)


def _judge_not_an_api(tmp: Path) -> None:
    _grade_via(tmp, lambda i: (200, {"Content-Type": "text/html"}, b"<html>Sign in</html>"))


def _truncated_model(tmp: Path) -> str:
    """A copy of the embedded model's folder whose model.safetensors stops after 1 MB."""
    import shutil

    from introspect_mech.models import export_embedded

    src, dst = export_embedded("smollm2-135m-instruct"), tmp / "model"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    with (src / "model.safetensors").open("rb") as f:
        (dst / "model.safetensors").write_bytes(f.read(1_000_000))
    return str(dst)


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
    # Judge and model-cache cases of the reliability review (cases 7, 60, 61)
    Case("model folder whose model.safetensors is truncated", lambda t: S + ["--model", _truncated_model(t)],
         "safetensors weights are corrupt"),
    Case("judge URL that is not http(s)", lambda t: ["report", _run_dir(t, '{"trial_id": "a"}\n'), "--grader",
                                                     "openai:m", "--judge-url", "file:///etc/passwd"],
         "not an http(s) address"),
    Case("judge endpoint that redirects (the key is not sent on)", None, "redirects are not followed",
         _judge_redirects),
    Case("judge endpoint that fails after some answers", None, "those 3 are cached", _judge_fails_midway),
    Case("judge URL that serves a web page, not the API", None, "not a chat completion", _judge_not_an_api),
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
