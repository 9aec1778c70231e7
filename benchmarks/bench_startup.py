"""Start-up of a run command with a cached model and cached concept vectors, and where it goes.

Each measurement is a fresh Python process (what a user pays per command), best of ``--repeats``:

- ``python_s``, ``import_torch_s``, ``import_package_s``: the interpreter alone; ``import torch``;
  ``import introspect_mech.cli`` (no torch: the package imports its parts on first use);
- ``import_hf_stack_s``: ``import torch``, nnsight, transformers' model-loading code and the Llama model
  code — what any fresh process that loads an HF model through nnsight pays before reading a weight, so
  the floor under a fresh command's start-up (which only a warm server avoids); timed by the process's own
  clock from its start, as the run command's marks are;
- ``run``: the CLI command for a one-trial, one-token Exp 1 sweep (``run injected-thoughts``) with
  ``INTROSPECT_MECH_TIMING=1``, which makes it print, in seconds since its process started: when the
  CLI got control, when the options were checked (the experiment modules imported: torch and the
  package), when the model was loaded (transformers' model code imported, weights read, fingerprint),
  and when the sweep returned, with the sweep's own generation time; ``startup_s`` is everything before
  generation (including the run lock, manifest and the cached vectors), ``wall_s`` the whole command.

    python benchmarks/bench_startup.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN_ARGS = ["run", "injected-thoughts", "--concepts", "dust", "--layers", "0.5", "--strengths", "4", "--controls",
            "control", "--control-trials", "0", "--max-new-tokens", "1", "--temperature", "0", "--no-progress"]

HF_STACK = ("import torch, nnsight; from transformers import AutoModelForCausalLM, AutoTokenizer, modeling_utils; "
            "import transformers.models.llama.modeling_llama")


def _stack_import(py: str, env: dict) -> float:
    """Seconds from a fresh process's start until ``HF_STACK`` is imported, by the same clock as the run command's
    marks (the process's own start time), so interpreter exit is not counted."""
    code = HF_STACK + "; from introspect_mech.cli import _since_process_start as t; print(t())"
    out = subprocess.run([py, "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def _time(cmd: list[str], env: dict, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def _timed_runs(py: str, env: dict, repeats: int) -> list[dict]:
    """The run command ``repeats`` times, each with its own output folder: its timing marks and wall time."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            out = subprocess.run([py, "-m", "introspect_mech", *RUN_ARGS, "--out", f"{d}/r"],
                                 env=dict(env, INTROSPECT_MECH_TIMING="1"), check=True, capture_output=True, text=True)
            wall = time.perf_counter() - t0
        line = next(ln for ln in out.stderr.splitlines() if ln.startswith('{"timing"'))
        runs.append({**json.loads(line)["timing"], "wall_s": wall})
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    a = ap.parse_args(argv)
    env = dict(os.environ)
    py = sys.executable
    # warm the caches (model export, concept vectors) and the OS file cache
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([py, "-m", "introspect_mech", *RUN_ARGS, "--out", f"{d}/warm"], env=env, check=True,
                       capture_output=True)
    res: dict = {"load_average_before": os.getloadavg(), "repeats": a.repeats}
    res["python_s"] = _time([py, "-c", "pass"], env, a.repeats)
    res["import_torch_s"] = _time([py, "-c", "import torch"], env, a.repeats)
    res["import_package_s"] = _time([py, "-c", "import introspect_mech.cli"], env, a.repeats)
    res["import_hf_stack_s"] = min(_stack_import(py, env) for _ in range(a.repeats))
    runs = _timed_runs(py, env, a.repeats)
    res["run"] = min(runs, key=lambda r: r["startup_s"])
    res["run_command_startup_s"] = res["run"]["startup_s"]
    # the same command served by a warm server (`introspect-mech warm start`, warm.py): the caller's process
    # connects, the server forks a process that already has torch, transformers and nnsight imported
    with tempfile.TemporaryDirectory() as wd:
        wenv = dict(env, INTROSPECT_MECH_WARM_DIR=wd)
        wenv.pop("INTROSPECT_MECH_WARM", None)
        t0 = time.perf_counter()
        subprocess.run([py, "-m", "introspect_mech", "warm", "start"], env=wenv, check=True, capture_output=True)
        res["warm_server_start_s"] = time.perf_counter() - t0
        try:
            served = _timed_runs(py, wenv, a.repeats)
            log = (Path(wd) / "warm.log").read_text()
            if log.count(" pid ") != a.repeats or "refused" in log:
                raise SystemExit(f"the warm server did not serve every run:\n{log}")
        finally:
            subprocess.run([py, "-m", "introspect_mech", "warm", "stop"], env=wenv, capture_output=True)
    res["served_run"] = min(served, key=lambda r: r["startup_s"])
    res["served_run_command_startup_s"] = res["served_run"]["startup_s"]
    res["load_average_after"] = os.getloadavg()
    print(json.dumps(res, indent=None if a.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
