"""Start-up of a run command with a cached model and cached concept vectors, and where it goes.

Each measurement is a fresh Python process (what a user pays per command), best of ``--repeats``:

- ``python_s``: the interpreter alone;
- ``import_torch_s``, ``import_package_s``: ``import torch``; ``import introspect_mech.cli`` (torch,
  transformers, nnsight and the package);
- ``phases``: inside one process, the cumulative time after the imports, after ``load_model`` (cached
  safetensors export), after building the Exp 1 experiment and loading its vectors from the cache,
  and after the one-trial, one-token sweep;
- ``run_command_s``: the whole CLI command for that one-trial, one-token sweep (``run injected-thoughts``),
  i.e. the start-up plus a sweep that does almost nothing; ``run_command_startup_s`` removes the
  sweep's own generation time measured in ``phases``.

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

PHASES = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
import introspect_mech.cli
from introspect_mech import load_model
from introspect_mech.experiments.injected_thoughts import InjectedThoughts, InjectedThoughtsConfig
from introspect_mech.runner import run_sweep
t1 = time.perf_counter()
m = load_model()
t2 = time.perf_counter()
exp = InjectedThoughts(m, InjectedThoughtsConfig(layers=[0.5], strengths=[4.0], concepts=["dust"], controls=("control",),
                                                 control_trials=0, max_new_tokens=1))
exp.prepare(m)
t3 = time.perf_counter()
run_sweep(exp, m, tempfile.mkdtemp(), temperature=0.0, progress=False)
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load_model": t2 - t1, "experiment_and_cached_vectors": t3 - t2,
                  "one_trial_sweep": t4 - t3}))
"""


def _time(cmd: list[str], env: dict, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


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
    phases = []
    for _ in range(a.repeats):
        out = subprocess.run([py, "-c", PHASES], env=env, check=True, capture_output=True, text=True)
        phases.append(json.loads(out.stdout.strip().splitlines()[-1]))
    res["phases"] = min(phases, key=lambda p: sum(p.values()))
    best = float("inf")
    for i in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            subprocess.run([py, "-m", "introspect_mech", *RUN_ARGS, "--out", f"{d}/r"], env=env, check=True,
                           capture_output=True)
            best = min(best, time.perf_counter() - t0)
    res["run_command_s"] = best
    res["run_command_startup_s"] = best - res["phases"]["one_trial_sweep"]
    res["load_average_after"] = os.getloadavg()
    print(json.dumps(res, indent=None if a.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
