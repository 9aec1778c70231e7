"""A sweep killed with SIGKILL mid-way resumes with nothing lost or duplicated, and equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from introspect_mech.store import ResultStore

pytestmark = pytest.mark.integration

ARGS = ["run", "injected-thoughts", "--layers", "0.5,0.67", "--strengths", "4,8", "--concepts", "dust,origami,satellites",
        "--control-trials", "6", "--controls", "control,random_vector", "--control-per-cell", "1",
        "--max-new-tokens", "6", "--batch-size", "4", "--seed", "7", "--no-progress"]
N_TRIALS = 2 * 2 * 3 + 2 * 2 * 1 + 2 * 1 + 6  # injected + random_vector (per cell) + random_vector_fixed (per layer) + control


def cli(out: Path) -> list[str]:
    return [sys.executable, "-m", "introspect_mech", *ARGS, "--out", str(out)]


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def test_sigkill_then_resume(tmp_path):
    """Case 2: SIGKILL mid-sweep, then resume: nothing lost or duplicated, equal to an uninterrupted run."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    results = killed / "results.jsonl"
    while time.time() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 4:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed; the test did not exercise a crash"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read(killed)
    assert 4 <= len(partial) < N_TRIALS
    # simulate a crash in the middle of a write: a truncated last line must be repaired, not fatal
    with open(results, "a") as f:
        f.write('{"trial_id": "half-writ')
    done = subprocess.run(cli(killed), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    recs = read(killed)
    ids = [r["trial_id"] for r in recs]
    assert len(ids) == len(set(ids)) == N_TRIALS
    assert {r["trial_id"] for r in partial} <= set(ids)
    # re-running a finished sweep generates nothing and writes nothing
    again = subprocess.run(cli(killed), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 generated" in again.stdout
    assert len(read(killed)) == N_TRIALS
    # same seed, uninterrupted: identical responses trial by trial
    clean = tmp_path / "clean"
    full = subprocess.run(cli(clean), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    a = {r["trial_id"]: r["response"] for r in recs}
    b = {r["trial_id"]: r["response"] for r in read(clean)}
    assert a == b


def test_store_repairs_partial_line_and_rejects_corruption(tmp_path):
    from introspect_mech.errors import ArtifactError

    path = tmp_path / "r.jsonl"
    store = ResultStore.writer(path)
    assert store.append([{"trial_id": "a", "x": 1}, {"trial_id": "b", "x": 2}]) == 2
    assert store.append([{"trial_id": "a", "x": 9}]) == 0  # no duplicates
    with open(path, "a") as f:
        f.write('{"trial_id": "c", "x"')
    # a reader ignores the torn tail and leaves the file alone
    assert [r["trial_id"] for r in ResultStore(path).records()] == ["a", "b"]
    assert path.read_text().endswith('"x"')
    # the writer (under the run lock) cuts it
    store2 = ResultStore.writer(path)
    assert [r["trial_id"] for r in store2.records()] == ["a", "b"]
    assert path.read_text().endswith("\n")
    path.write_text('{"trial_id": "a"}\nnot json\n')
    with pytest.raises(ArtifactError, match="corrupt"):
        ResultStore(path).records()


def test_different_config_in_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "introspect_mech", "run", "injected-thoughts", "--layers", "0.5", "--strengths", "4",
            "--concepts", "dust", "--control-trials", "1", "--controls", "control", "--max-new-tokens", "2",
            "--no-progress", "--out", str(out)]
    assert subprocess.run(args, capture_output=True, timeout=300).returncode == 0
    bad = subprocess.run(args[:-2] + ["--seed", "5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "other settings: seed (stored 0, this command 5)" in bad.stderr
