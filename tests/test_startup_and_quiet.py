"""Start-up and output hygiene: lazy package imports, the cached model fingerprint, quiet by default.

Tiny models and subprocesses only; the real model's start-up is measured in benchmarks/bench_startup.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from introspect_mech import models, verbosity
from introspect_mech.models import cached_fingerprint, fingerprint_module, load_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def _py(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)


def test_package_and_cli_import_without_torch():
    """Commands that need no model must not pay for torch/transformers/nnsight (seconds of start-up)."""
    out = _py("import sys, introspect_mech, introspect_mech.cli; "
              "print(sorted(m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules))")
    assert out.stdout.strip() == "[]"
    out = _py("import introspect_mech as im; print(im.Injection.__module__, im.load_model.__module__, "
              "im.models.__name__, 'forward' in dir(im))")
    assert out.stdout.split() == ["introspect_mech.inject", "introspect_mech.models", "introspect_mech.models", "True"]
    with pytest.raises(subprocess.CalledProcessError):
        _py("import introspect_mech as im; im.no_such_name")


def test_cached_fingerprint_equals_the_sum_and_follows_the_files(tiny_model_of, tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    m = tiny_model_of("llama")
    folder = tmp_path / "ckpt"
    m.hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    loaded = load_model(str(folder))
    want = fingerprint_module(loaded.hf, loaded.hf.config, str(folder))
    assert loaded.fingerprint == want == fingerprint_module(m.hf, m.hf.config, "x")
    cached = list((tmp_path / "cache" / "fingerprints").glob("*.txt"))
    assert len(cached) == 1 and cached[0].read_text() == want
    calls = []
    monkeypatch.setattr(models, "fingerprint_module", lambda *a: calls.append(a) or "0" * 16)
    assert load_model(str(folder)).fingerprint == want and not calls  # served from the cache
    # other weights in the same folder: the file changed, so it is summed again
    first = next(m.hf.parameters())
    kept = first.detach().clone()
    with torch.no_grad():
        first.add_(1.0)
    try:
        m.hf.save_pretrained(folder)
    finally:
        with torch.no_grad():
            first.copy_(kept)  # exactly (x + 1 - 1 rounds): the session-wide model is shared by later tests
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert load_model(str(folder)).fingerprint == "0" * 16 and len(calls) == 1
    # another dtype is another key
    load_model(str(folder), dtype="bfloat16")
    assert len(calls) == 2
    # a garbled cache entry is recomputed, not trusted
    for f in (tmp_path / "cache" / "fingerprints").glob("*.txt"):
        f.write_text("not a fingerprint")
    assert cached_fingerprint(folder, loaded.hf, "x") == "0" * 16 and len(calls) == 3


def test_transformers_cache_rename_notes_are_hidden_unless_verbose(capfd, caplog):
    from transformers.utils import logging as hf_logging

    verbosity.install()
    log = hf_logging.get_logger("transformers.utils.generic")
    note = "`past_key_values`/`cache_params` are deprecated. Use `cache` instead."
    future = "`past_key_values` is deprecated and will be removed in version 5.40.0 for `LlamaForCausalLM.forward`."
    try:
        verbosity.set_verbose(False)
        log.warning(note)
        log.warning("something about the user's input")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("default")
            verbosity.warning_filters()
            warnings.warn(future, FutureWarning)
            warnings.warn("another FutureWarning", FutureWarning)
        assert [str(x.message) for x in w] == ["another FutureWarning"]
        verbosity.set_verbose(True)
        log.warning(note)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("default")
            verbosity.warning_filters()
            warnings.warn(future, FutureWarning)
        assert len(w) == 1
    finally:
        verbosity.set_verbose(False)
    assert [r.getMessage() for r in caplog.records] == ["something about the user's input", note]
    err = capfd.readouterr().err
    assert err.count("cache_params") == 1 and "user's input" in err


def test_no_gguf_bar_hides_the_conversion_bar_unless_verbose(capfd):
    import transformers.modeling_gguf_pytorch_utils as g

    def draw():
        for _ in g.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass

    with verbosity.no_gguf_bar():
        draw()
    assert "Converting" not in capfd.readouterr().err
    verbosity.set_verbose(True)
    try:
        with verbosity.no_gguf_bar():
            draw()
    finally:
        verbosity.set_verbose(False)
    assert "Converting" in capfd.readouterr().err


@pytest.mark.integration
def test_a_sweep_prints_one_progress_bar_and_no_library_chatter(tmp_path):
    """The CLI on the real model: stderr holds the sweep's bar (with an ETA) and nothing from transformers."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), INTROSPECT_MECH_THREADS="1")
    args = [sys.executable, "-m", "introspect_mech", "run", "injected-thoughts", "--concepts", "dust,origami",
            "--layers", "0.5", "--strengths", "4", "--controls", "control", "--control-trials", "1",
            "--max-new-tokens", "3", "--out", str(tmp_path / "r")]
    res = subprocess.run(args, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    err = res.stderr.replace("\r", "\n")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("injected_thoughts:") for ln in lines), err
    assert "<" in lines[-1] and "3/3" in lines[-1]  # tqdm's elapsed<remaining
    verbose = subprocess.run(args[:-1] + [str(tmp_path / "v"), "--verbose"], capture_output=True, text=True, env=env)
    assert verbose.returncode == 0
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert man["decode"] == "continuous" and man["batch_size"] == 128


@pytest.mark.parametrize("value", ["abc", "0", "-1", "2.5"])
def test_a_bad_thread_count_is_a_one_line_error(value, monkeypatch, capsys, tmp_path):
    """Red-team review: INTROSPECT_MECH_THREADS=abc / 0 raised ValueError / RuntimeError tracebacks from main()."""
    from introspect_mech.cli import main

    monkeypatch.setenv("INTROSPECT_MECH_THREADS", value)
    assert main(["repair", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: INTROSPECT_MECH_THREADS must be a whole number >= 1") and "\n" not in err, err


def test_timing_flag_zero_means_off(monkeypatch):
    """INTROSPECT_MECH_TIMING=0 is off, as INTROSPECT_MECH_VERBOSE=0 is (it printed the breakdown before)."""
    from introspect_mech import cli

    for value, on in (("1", True), ("yes", True), ("0", False), ("", False), (" 0 ", False)):
        monkeypatch.setenv("INTROSPECT_MECH_TIMING", value)
        assert cli.env_flag("INTROSPECT_MECH_TIMING") is on, value


def test_cli_keeps_freed_memory_for_the_next_step(monkeypatch):
    """The command line sets glibc's malloc to reuse freed large blocks (allocator.py); off with
    INTROSPECT_MECH_KEEP_FREED=0, and a no-op (False, no error) where the C library has no mallopt."""
    import ctypes

    from introspect_mech import allocator, cli

    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        assert allocator.keep_freed_memory() is True
    monkeypatch.setenv("INTROSPECT_MECH_KEEP_FREED", "0")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("INTROSPECT_MECH_KEEP_FREED")

    def no_libc(*a, **k):
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory() is False
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["report", "/nonexistent/run"]) == 2  # any command: set before it runs
    assert calls == [1]


def test_analyze_help_lists_the_analyses(capsys):
    """``analyze --help`` (its parser hands --help on to the analysis named after it) lists the analyses."""
    from introspect_mech import cli

    for flag in ("--help", "-h"):
        assert cli.main(["analyze", flag]) == 0
        out = capsys.readouterr().out
        assert all(name in out for name in cli.ANALYSES) and "analyze ANALYSIS --help" in out
