"""Catalogue of bad inputs and the error each gets — used by the tests and to print the README table.

Run ``python tests/bad_inputs.py`` to print the Markdown table (every message is produced live).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
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
    review: tuple[int, ...] = ()  # the reliability review's case number(s) it reproduces


def _vectors(tmp: Path, dim: int = 576, name: str = "v") -> str:
    import torch

    from introspect_mech.concepts import ConceptVectors

    ConceptVectors(["dust", "origami"], [19], torch.randn(2, 1, dim), {}).save(tmp / name)
    return str(tmp / name)


def _warm_start_in_open_folder(tmp: Path) -> None:
    from introspect_mech import warm

    folder = tmp / "open"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    old = os.environ.get(warm.DIR_ENV)
    os.environ[warm.DIR_ENV] = str(folder)
    try:
        warm.start()
    finally:
        if old is None:
            os.environ.pop(warm.DIR_ENV, None)
        else:
            os.environ[warm.DIR_ENV] = old


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


def _run_dir_with(tmp: Path, manifest: object, records: list[dict]) -> str:
    d = tmp / "run"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(d)


def _exp1_record(**over) -> dict:
    r = {"trial_id": "t1", "experiment": "injected_thoughts", "condition": "injected", "concept": "dust", "layer": 14,
         "strength": 4.0, "prompt_key": "default", "sample": 0, "category": "paper", "extra": {}, "dose": 0.3,
         "response": "No.", "prompt": "p"}
    r.update(over)
    return {k: v for k, v in r.items() if v is not _DROP}


_DROP = object()
_M1 = {"experiment": "injected_thoughts", "model": {"n_layers": 30}, "config": {}}


def _bytes_run(tmp: Path, body: bytes) -> str:
    d = tmp / "run"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(json.dumps(_M1))
    (d / "results.jsonl").write_bytes(body)
    return str(d)


def _vec_file(tmp: Path, words=("dust",), layers=(19,), tensor=None, raw_json: str | None = None) -> str:
    import torch
    from safetensors.torch import save_file

    t = torch.randn(len(words) if isinstance(words, (list, tuple)) else 1, 1, 576) if tensor is None else tensor
    save_file({"vectors": t}, str(tmp / "v.safetensors"))
    (tmp / "v.json").write_text(raw_json if raw_json is not None else
                                json.dumps({"format_version": 1, "words": list(words), "layers": list(layers)}))
    return str(tmp / "v")


def _orphan_results(tmp: Path) -> str:
    d = tmp / "orphan"
    d.mkdir()
    (d / "results.jsonl").write_text(json.dumps(_exp1_record(run_key="x")) + "\n")
    return str(d)


def _other_run(tmp: Path) -> str:
    """A second Exp 1 run folder beside ``_run_dir_with``'s (for the --compare cases)."""
    d = tmp / "other"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(_M1))
    (d / "results.jsonl").write_text(json.dumps(_exp1_record()) + "\n")
    return str(d)


def _a_file(tmp: Path) -> str:
    (tmp / "afile").write_text("x")
    return str(tmp / "afile")


def _no_template(tmp: Path) -> None:
    import copy

    import introspect_mech as im

    tok = copy.deepcopy(im.load_model().tokenizer)
    tok.chat_template = None
    im.render(tok, [im.Turn("user", "hi")], fmt="chat")


def _judge_without_key(tmp: Path) -> None:
    from introspect_mech.grading.base import GradeRequest
    from introspect_mech.grading.factory import make_grader

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
    from introspect_mech.grading.factory import make_grader

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

def _damaged_adapter(tmp: Path, meta: object) -> str:
    """An adapter folder with valid (tiny) weights and this adapter.json (the checksum covers only the weights)."""
    import torch
    from safetensors.torch import save_file

    d = tmp / "org"
    d.mkdir()
    save_file({"w": torch.zeros(1)}, str(d / "adapter.safetensors"))
    (d / "adapter.json").write_text(json.dumps(meta))
    return str(d)


_ADAPTER_META = {"format": "introspect_mech.organism.adapter/1", "base_model": {"fingerprint": "x"},
                 "lora": {"rank": 16, "alpha": 32.0, "layers": [20], "target_modules": ["q_proj"]}}


def _jsonl(tmp: Path, name: str, *lines: str) -> str:
    """A labelled-data file with these lines (for the calibrate cases)."""
    (tmp / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(tmp / name)


def _word_without_letters(tmp: Path) -> None:
    from introspect_mech.grading.rules import word_pattern

    word_pattern("-")


E3 = ["calibrate", "--task", "exp3-intent", "--data"]
E1 = ["calibrate", "--split", "all", "--data"]
_E1_ROW = '{{"response": "I detect a thought about dust.", "concept": {concept}, "labels": {labels}}}'

S = ["steer", "--max-new-tokens", "2"]
R = ["run", "injected-thoughts", "--no-progress", "--max-new-tokens", "2"]

CASES: list[Case] = [
    Case("unknown model name", lambda t: S + ["--model", "no-such-model"], "unknown model"),
    Case("model path that does not exist", lambda t: S + ["--model", "./missing/model"], "unknown model"),
    Case("unknown dtype", lambda t: S + ["--dtype", "float8"], "unknown dtype"),
    Case("unknown device", lambda t: S + ["--device", "bogus"], "unknown device 'bogus'"),
    Case("empty device", lambda t: R + ["--device=", "--out", str(t / "r")], "unknown device ''"),
    Case("a CUDA device this machine does not have", lambda t: S + ["--device", "cuda:99"], "device 'cuda:99'"),
    Case("empty --adapter", lambda t: R + ["--adapter=", "--out", str(t / "r")], "--adapter is empty"),
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
    Case("concept with bytes that are not UTF-8 (a tokenizer TypeError before)",
         lambda t: R + ["--concepts", "du\udcffst", "--out", str(t / "r")], "not valid text"),
    Case("batch size 0", lambda t: R + ["--concepts", "dust", "--layers", "0.5", "--strengths", "2", "--controls",
                                        "control", "--control-trials", "1", "--batch-size", "0", "--out", str(t / "r")],
         "batch", review=(31,)),
    Case("system 'none' on a template that inserts its own system turn",
         lambda t: R + ["--concepts", "dust", "--system", "none", "--out", str(t / "r")], "system='empty'"),
    Case("more yes-bias questions per cell than the paper has", lambda t: R + ["--yes-bias-per-cell", "30", "--out",
                                                                              str(t / "r")], "--yes-bias-per-cell"),
    Case("NaN strength for the fixed random control", lambda t: R + ["--random-fixed-strength", "nan", "--out",
                                                                     str(t / "r")], "not finite"),
    Case("too many sentence pairs (Exp 4)", lambda t: ["run", "intentional-control", "--n-pairs", "80", "--out",
                                                       str(t / "r")], "--n-pairs must be between 1 and 50"),
    # registry CLI of the red-team review: argparse errors are one line too; flags named as typed
    Case("--trials that is not a whole number", lambda t: R + ["--trials", "1.5", "--out", str(t / "r")],
         "argument --trials: invalid int value"),
    Case("unknown experiment", lambda t: ["run", "no-such-experiment", "--out", str(t / "r")], "invalid choice"),
    Case("run without --out", lambda t: ["run", "injected-thoughts"], "required: --out"),
    Case("empty --random-fixed-strength", lambda t: R + ["--random-fixed-strength", "", "--out", str(t / "r")],
         "--random-fixed-strength ('none' to skip)"),
    Case("Exp 2 --n-pairs 0 (names the flag, not the field)", lambda t: ["run", "thoughts-vs-text", "--n-pairs", "0",
                                                                        "--out", str(t / "r")],
         "--n-pairs (sentences) must be between 1 and 50"),
    Case("--control-trials 10**20 (would never finish building the trial list)",
         lambda t: R + ["--control-trials", "99999999999999999999", "--out", str(t / "r")], "at most 100,000"),
    Case("--trials 10**20", lambda t: R + ["--trials", "99999999999999999999", "--out", str(t / "r")],
         "--trials must be at most"),
    Case("report on a folder that is not a run", lambda t: ["report", str(t)], "not a run folder"),
    Case("corrupt results file", lambda t: ["report", _run_dir(t, '{"trial_id": "a"}\nnot json at all\n')], "corrupt"),
    Case("results file with no trials yet", lambda t: ["report", _run_dir(t, "")], "no trials"),
    Case("unknown grader", lambda t: ["report", _run_dir(t, '{"trial_id": "a"}\n'), "--grader", "magic"],
         "unknown grader"),
    Case("report --compare with the reported run itself", lambda t: ["report", _run_dir_with(t, _M1, [_exp1_record()]),
                                                                   "--compare", str(t / "run") + "/"],
         "is the run being reported already"),
    Case("report --compare listing a run twice", lambda t: ["report", _run_dir_with(t, _M1, [_exp1_record()]),
                                                           "--compare", _other_run(t), str(t / "other")],
         "list each run once"),
    Case("report --compare naming no run", lambda t: ["report", _run_dir_with(t, _M1, [_exp1_record()]), "--compare"],
         "--compare names no run"),
    Case("report --compare with a folder that is not a run", lambda t: ["report", _run_dir_with(t, _M1, [
        _exp1_record()]), "--compare", str(t / "missing")], "--compare"),
    Case("tokenizer without a chat template, chat format requested", None, "fmt='raw'", _no_template),
    Case("LLM judge without an API key", None, "OPENAI_API_KEY", _judge_without_key),
    Case("injection vector of the wrong dimension", None, "d_model", _mismatched_vector),
    # --- from the reliability review (shared/notes/reliability-review.md), numbered as there ---
    Case("--max-new-tokens 0", lambda t: R[:-2] + ["--max-new-tokens", "0", "--out", str(t / "r")],
         "--max-new-tokens must be >= 1", review=(29,)),
    Case("batch size -1", lambda t: R + ["--batch-size", "-1", "--out", str(t / "r")], "batch", review=(32,)),
    Case("batch size that is not a number", lambda t: R + ["--batch-size", "lots", "--out", str(t / "r")],
         "batch", review=(31,)),
    Case("empty layer list", lambda t: R + ["--layers", "", "--out", str(t / "r")], "--layers is empty", review=(34,)),
    Case("empty strength list", lambda t: R + ["--strengths", ",", "--out", str(t / "r")], "--strengths is empty",
         review=(37,)),
    Case("strength 1e30", lambda t: R + ["--strengths", "1e30", "--out", str(t / "r")], "above", review=(38,)),
    Case("strength 1e300", lambda t: S + ["--strength", "1e300"], "above", review=(38,)),
    Case("--n-concepts 0", lambda t: R + ["--n-concepts", "0", "--out", str(t / "r")], "--n-concepts must be >= 1",
         review=(39,)),
    Case("--n-concepts -1", lambda t: R + ["--n-concepts", "-1", "--out", str(t / "r")], "--n-concepts must be >= 1",
         review=(40,)),
    Case("negative control count per cell", lambda t: R + ["--control-per-cell", "-1", "--out", str(t / "r")],
         "--control-per-cell must be >= 0", review=(41,)),
    Case("negative yes-bias count per cell", lambda t: R + ["--yes-bias-per-cell", "-3", "--out", str(t / "r")],
         "--yes-bias-per-cell must be >= 0", review=(41,)),
    Case("negative open-question count per cell", lambda t: R + ["--alt-per-cell", "-2", "--out", str(t / "r")],
         "--alt-per-cell must be >= 0", review=(41,)),
    Case("NaN temperature", lambda t: R + ["--temperature", "nan", "--out", str(t / "r")], "temperature", review=(42,)),
    Case("negative temperature", lambda t: R + ["--temperature", "-1", "--out", str(t / "r")], "temperature",
         review=(43,)),
    Case("temperature 1e-300 (overflows the logits)", lambda t: R + ["--temperature", "1e-300", "--out", str(t / "r")],
         "pass 0 for greedy"),
    Case("temperature 1e-300 (steer)", lambda t: S + ["--temperature", "1e-300"], "pass 0 for greedy"),
    Case("NaN temperature (steer)", lambda t: S + ["--temperature", "nan"], "temperature", review=(42,)),
    Case("8,000-character concept (steer)", lambda t: S + ["--concept", "dust " * 1600], "characters long",
         review=(49,)),
    Case("8,000-character concept (run)", lambda t: R + ["--concepts", "dust " * 1600, "--out", str(t / "r")],
         "characters long", review=(49,)),
    Case("--out is an existing file", lambda t: R + ["--out", _a_file(t)], "existing file", review=(50,)),
    Case("--out under a file", lambda t: R + ["--out", _a_file(t) + "/run"], "which is a file", review=(50,)),
    Case("Exp 2 given --max-new-tokens", lambda t: ["run", "thoughts-vs-text", "--max-new-tokens", "50", "--out",
                                                   str(t / "r")], "does not use --max-new-tokens", review=(53,)),
    Case("Exp 2 given --concepts and --trials", lambda t: ["run", "thoughts-vs-text", "--concepts", "dust", "--trials",
                                                          "7", "--out", str(t / "r")], "does not use --concepts, --trials",
         review=(53,)),
    Case("Exp 4 given --strengths", lambda t: ["run", "intentional-control", "--strengths", "2", "--out", str(t / "r")],
         "does not use --strengths", review=(53,)),
    Case("Exp 1 given --n-pairs", lambda t: R + ["--n-pairs", "3", "--out", str(t / "r")], "does not use --n-pairs",
         review=(53,)),
    Case("Exp 3 logit measure given --max-new-tokens", lambda t: ["run", "prefill-intent", "--measure", "logits",
                                                                 "--max-new-tokens", "5", "--out", str(t / "r")],
         "generates nothing", review=(53,)),
    Case("results without a manifest", lambda t: R + ["--layers", "0.5", "--strengths", "2", "--concepts", "dust",
                                                      "--controls", "control", "--control-trials", "1", "--out",
                                                      _orphan_results(t)], "manifest.json is missing", review=(12,)),
    Case("invalid UTF-8 line in the store", lambda t: ["report", _bytes_run(t, b'{"trial_id": "a"}\n\xff\xfe{}\n')],
         "not valid UTF-8", review=(16,)),
    Case("NUL line in the store", lambda t: ["report", _bytes_run(t, b"\x00" * 4096 + b"\n")], "NUL bytes",
         review=(17,)),
    Case("record without 'condition'", lambda t: ["report", _run_dir_with(t, _M1, [_exp1_record(condition=_DROP)])],
         "no 'condition' field", review=(19,)),
    Case("record with response null", lambda t: ["report", _run_dir_with(t, _M1, [_exp1_record(response=None)])],
         "field 'response'", review=(19,)),
    Case("record with layer \"14\"", lambda t: ["report", _run_dir_with(t, _M1, [_exp1_record(layer="14")])],
         "field 'layer'", review=(19,)),
    Case("manifest without 'experiment'", lambda t: ["report", _run_dir_with(t, {"model": {}}, [_exp1_record()])],
         "names no known experiment", review=(21,)),
    Case("manifest that is a JSON list", lambda t: ["report", _run_dir_with(t, [1, 2], [_exp1_record()])],
         "not a run manifest", review=(21,)),
    Case("manifest whose model is a string", lambda t: ["report", _run_dir_with(
        t, {"experiment": "injected_thoughts", "model": "smol"}, [_exp1_record()])], "'model' must be an object",
         review=(21,)),
    Case("manifest of another experiment than its records", lambda t: ["report", _run_dir_with(
        t, {"experiment": "prefill_intent", "model": {}}, [_exp1_record()])], "the manifest says 'prefill_intent'",
         review=(22,)),
    Case("vector file whose words are numbers", lambda t: S + ["--vectors", _vec_file(t, words=(1, 2))],
         "'words' must be a list", review=(23,)),
    Case("vector file of integers", lambda t: S + ["--vectors", _vec_file(t, tensor=__import__("torch").ones(
        1, 1, 576, dtype=__import__("torch").int64))], "floating-point", review=(23,)),
    Case("vector file whose layers are strings", lambda t: S + ["--vectors", _vec_file(t, layers=("19",))],
         "integer layer indices", review=(23,)),
    Case("vector file with values of 3e38", lambda t: S + ["--vectors", _vec_file(t, tensor=__import__("torch").full(
        (1, 1, 576), 3e38))], "finite norm", review=(23,)),
    Case("vector metadata that is a JSON list", lambda t: S + ["--vectors", _vec_file(t, raw_json="[1, 2]")],
         "not a concept-vector file", review=(23,)),
    Case("--max-new-tokens beyond the context (steer)", lambda t: S[:-2] + ["--max-new-tokens", "100000"],
         "exceeds the model's context", review=(30,)),
    Case("repair on a folder without results", lambda t: ["repair", str(t)], "no results.jsonl"),
    Case("vectors with batch size 0", lambda t: ["vectors", "--words", "dust", "--batch-size", "0", "--out",
                                                 str(t / "v")], "--batch-size must be >= 1"),
    # judge and model-cache cases of the reliability review
    Case("model folder whose model.safetensors is truncated", lambda t: S + ["--model", _truncated_model(t)],
         "safetensors weights are corrupt", review=(7,)),
    Case("judge URL that is not http(s)", lambda t: ["report", _run_dir_with(t, _M1, [_exp1_record()]), "--grader",
                                                     "openai:m", "--judge-url", "file:///etc/passwd"],
         "not an http(s) address"),
    Case("judge endpoint that redirects (the key is not sent on)", None, "redirects are not followed",
         _judge_redirects, review=(60,)),
    Case("judge endpoint that fails after some answers", None, "those 3 are cached", _judge_fails_midway,
         review=(61,)),
    Case("judge URL that serves a web page, not the API", None, "not a chat completion", _judge_not_an_api),
    Case("Exp 3 calibration file that is empty", lambda t: E3 + [_jsonl(t, "e.jsonl")], "no rows", review=(25,)),
    Case("Exp 3 labelled reply without `word`", lambda t: E3 + [_jsonl(
        t, "w.jsonl", '{"response": "Sorry.", "label": "apology"}')], "'word' is missing", review=(25,)),
    Case("Exp 3 label in capitals (INTENT)", lambda t: E3 + [_jsonl(
        t, "l.jsonl", '{"word": "dust", "response": "I meant it.", "label": "INTENT"}')], "label must be one of", review=(25,)),
    Case("Exp 3 labelled file with a line that is not JSON", lambda t: E3 + [_jsonl(t, "g.jsonl", "garbage")],
         "not valid JSON", review=(25,)),
    Case("Exp 3 reply that is a number", lambda t: E3 + [_jsonl(
        t, "n.jsonl", '{"word": "dust", "response": 5, "label": "intent"}')], "'response' is int", review=(25,)),
    Case("Exp 1 calibration file that is empty", lambda t: E1 + [_jsonl(t, "e1.jsonl")], "no rows"),
    Case('Exp 1 label given as the string "false"', lambda t: E1 + [_jsonl(
        t, "s.jsonl", _E1_ROW.format(concept='"dust"', labels='{"affirmative": "false"}'))], "not true/false/null", review=(26,)),
    Case("Exp 1 labels given as a list", lambda t: E1 + [_jsonl(
        t, "li.jsonl", _E1_ROW.format(concept='"dust"', labels="[true]"))], "'labels' is list", review=(27,)),
    Case("Exp 1 concept given as a number", lambda t: E1 + [_jsonl(
        t, "c.jsonl", _E1_ROW.format(concept="5", labels='{"affirmative": true}'))], "'concept' is int", review=(27,)),
    Case('Exp 1 concept with no letters ("/")', lambda t: E1 + [_jsonl(
        t, "sl.jsonl", _E1_ROW.format(concept='"/"', labels='{"affirmative": true}'))], "no letter or digit", review=(48,)),
    Case('concept word with no letters ("-") for the rule grader', None, "no letters", _word_without_letters, review=(48,)),
    Case("--adapter folder that does not exist", lambda t: S + ["--adapter", str(t / "no-adapter")],
         "organism train"),
    Case("--adapter that is a plain file", lambda t: S + ["--adapter", _a_file(t)], "does not exist"),
    Case("--adapter whose adapter.json is a JSON list", lambda t: S + ["--adapter", _damaged_adapter(t, [1, 2])],
         "not an organism adapter"),
    Case("--adapter whose adapter.json has 'base_model' as a string", lambda t: S + ["--adapter", _damaged_adapter(
        t, {**_ADAPTER_META, "base_model": "smollm2"})], "'base_model' must be an object"),
    Case("--adapter whose adapter.json 'lora' has an unknown key", lambda t: S + ["--adapter", _damaged_adapter(
        t, {**_ADAPTER_META, "lora": {**_ADAPTER_META["lora"], "dropout": 0.1}})], "'lora' must be an object"),
    Case("organism injection layers with no layer above to adapt",
         lambda t: ["organism", "train", "--out", str(t / "r"), "--layers", "25-29"], "leave no layer above"),
    Case("organism dose range reversed", lambda t: ["organism", "train", "--out", str(t / "r"), "--dose", "0.9,0.2"],
         "dose range"),
    Case("organism mix with an unknown row kind",
         lambda t: ["organism", "train", "--out", str(t / "r"), "--mix", "concept=1,bogus=1"], "mix must give"),
    Case("organism eval with an unknown decoding mode", lambda t: ["organism", "eval", "--modes", "beam"],
         "modes must be"),
    Case("organism warm start from an adapter that does not exist",
         lambda t: ["organism", "train", "--out", str(t / "r"), "--init-adapter", str(t / "no-adapter")], "does not exist"),
    Case("organism snapshot steps that are not whole numbers",
         lambda t: ["organism", "train", "--out", str(t / "r"), "--snapshots", "1.5"], "whole numbers"),
    # organism options of the red-team review (shared/notes: checked before the model loads)
    Case("organism train --out ''", lambda t: ["organism", "train", "--out", ""], "--out is empty"),
    Case("organism eval --out that is a file (refused before the evaluation runs)",
         lambda t: ["organism", "eval", "--out", _a_file(t)], "existing file"),
    Case("organism train negative layer range (read as 3-5 before)",
         lambda t: ["organism", "train", "--out", str(t / "r"), "--layers=-3-5"], "layers are indices >= 0"),
    Case("organism train dose range up to inf", lambda t: ["organism", "train", "--out", str(t / "r"), "--dose",
                                                           "0.1,inf"], "finite"),
    Case("organism train mix weight NaN", lambda t: ["organism", "train", "--out", str(t / "r"), "--mix",
                                                     "concept=nan"], "mix must give"),
    Case("organism train alpha NaN", lambda t: ["organism", "train", "--out", str(t / "r"), "--alpha", "nan"],
         "--alpha a finite number"),
    Case("organism train 0 steps (before the model loads)", lambda t: ["organism", "train", "--out", str(t / "r"),
                                                                       "--steps", "0"], "steps and batch_size"),
    Case("organism train negative --n-english", lambda t: ["organism", "train", "--out", str(t / "r"),
                                                          "--n-english", "-5"], "--n-english must be >= 0"),
    Case("organism train --init-adapter ''", lambda t: ["organism", "train", "--out", str(t / "r"), "--init-adapter",
                                                        ""], "does not exist"),
    Case("organism eval infinite dose", lambda t: ["organism", "eval", "--doses", "inf"], "--doses must be numbers in"),
    Case("organism eval dose 1e9 (overflows the layers above)", lambda t: ["organism", "eval", "--doses", "1e9"],
         "(0, 100]"),
    Case("organism eval negative seed", lambda t: ["organism", "eval", "--seed", "-1"], "--seed must be >= 0"),
    Case("organism train --precision fp16 (bf16 or fp32)", lambda t: ["organism", "train", "--out", str(t / "r"),
                                                                    "--precision", "fp16"], "invalid choice"),
    Case("warm start with a socket folder that others can open", None, "not a private folder",
         call=lambda t: _warm_start_in_open_folder(t)),
    Case("organism eval --layers abc (before the model loads)", lambda t: ["organism", "eval", "--layers", "abc"],
         "neither an integer index nor a depth fraction"),
    Case("organism ablate dose 1e9", lambda t: ["organism", "ablate", "--adapter", str(t / "a"), "--out",
                                                str(t / "r"), "--dose", "1e9"], "--dose must be in"),
    Case("organism train negative seed", lambda t: ["organism", "train", "--out", str(t / "r"), "--seed", "-1"],
         "--seed must be >= 0"),
    Case("organism eval a mode listed twice", lambda t: ["organism", "eval", "--modes", "greedy,greedy"],
         "--modes lists greedy twice"),
    Case("organism regrade of a folder without records",
         lambda t: ["organism", "eval", "--regrade", str(t / "no-eval")], "organism eval"),
    Case("organism ablate without an adapter", lambda t: ["organism", "ablate", "--out", str(t / "a")], "pass --adapter"),
    Case("organism ablate without --out", lambda t: ["organism", "ablate", "--adapter", str(t / "x")], "needs --out"),
    Case("organism ablate regrade of a folder without records",
         lambda t: ["organism", "ablate", "--regrade", str(t / "no-ablation")], "organism ablate --out"),
    Case("organism ablate with a zero dose",
         lambda t: ["organism", "ablate", "--adapter", str(t / "x"), "--out", str(t / "a"), "--dose", "0"], "dose must be"),
    Case("organism decodability with a negative ridge (before the model loads)",
         lambda t: ["organism", "decodability", "--ridge", "-1"], "--ridge must be a finite number > 0"),
    Case("organism decodability --layers that are not numbers",
         lambda t: ["organism", "decodability", "--layers", "a,b"], "comma-separated whole numbers"),
    Case("organism decodability --out that is a file",
         lambda t: ["organism", "decodability", "--out", _a_file(t)], "is an existing file"),
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
        msg = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", msg.replace(d, "TMP")).replace("|", "\\|")
        print(f"| {c.what} | `{msg[:300]}` |" if code == 2 else f"| {c.what} | UNEXPECTED exit {code}: {msg} |")
    sys.exit(0)
