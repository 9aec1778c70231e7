"""Store and resume semantics: readers never modify a store, one writer at a time, a resumed run equals an
uninterrupted one (also when a batch was only partly stored), and a bad option leaves nothing behind.

Each test here reproduces a case of the reliability review (shared/notes/reliability-review.md); the case
number is in the test's docstring. Tiny models only: the whole file runs in seconds.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from introspect_mech import runner, store as store_mod
from introspect_mech.errors import ArtifactError, ConfigError
from introspect_mech.runner import run_sweep
from introspect_mech.store import ResultStore, RunLock, check_out_dir

from test_decode_compact import TinySweep, read_records

pytestmark = pytest.mark.usefixtures("single_thread")
KW = dict(batch_size=3, temperature=1.0, seed=5, progress=False)


# ---------------------------------------------------------------------------------------
# readers and writers
# ---------------------------------------------------------------------------------------


def test_reader_ignores_a_torn_tail_and_never_writes(tmp_path):
    """Case 9/52: opening a store to read it leaves the file byte for byte as it was."""
    path = tmp_path / "r.jsonl"
    w = ResultStore.writer(path)
    w.append([{"trial_id": "a"}, {"trial_id": "b"}])
    with open(path, "ab") as f:
        f.write(b'{"trial_id": "c", "resp')  # a batch still being written
    before = path.read_bytes()
    assert [r["trial_id"] for r in ResultStore(path).records()] == ["a", "b"]
    assert path.read_bytes() == before
    with pytest.raises(ArtifactError, match="read-only"):
        ResultStore(path).append([{"trial_id": "z"}])


def test_reader_works_on_a_read_only_file(tmp_path):
    """Case 52: a reader needs no write access."""
    path = tmp_path / "r.jsonl"
    ResultStore.writer(path).append([{"trial_id": "a"}])
    os.chmod(path, 0o444)
    try:
        assert len(ResultStore(path).records()) == 1
    finally:
        os.chmod(path, 0o644)


def _writer_proc(path: str, n_batches: int, per_batch: int, payload: int) -> None:
    w = ResultStore.writer(path)
    for b in range(n_batches):
        w.append([{"trial_id": f"{b}-{i}", "response": "x" * payload} for i in range(per_batch)])


def _reader_proc(path: str, stop_at: float, counts) -> None:
    while time.time() < stop_at:
        try:
            counts.append(len(ResultStore(path).records()))
        except Exception as exc:  # noqa: BLE001 — record it for the assertion
            counts.append(repr(exc))


def test_race_reader_during_writing_loses_nothing(tmp_path):
    """Case 9: readers open the store continuously while a writer appends large batches: nothing is lost, and
    every count a reader saw is a whole number of batches (a reader never sees half a batch as complete)."""
    path = tmp_path / "r.jsonl"
    ResultStore.writer(path)
    n_batches, per_batch = 60, 40
    ctx = mp.get_context("spawn")
    with ctx.Manager() as man:
        counts = man.list()
        readers = [ctx.Process(target=_reader_proc, args=(str(path), time.time() + 60, counts)) for _ in range(2)]
        for r in readers:
            r.start()
        time.sleep(1.0)
        w = ctx.Process(target=_writer_proc, args=(str(path), n_batches, per_batch, 3000))
        w.start()
        w.join(60)
        for r in readers:
            r.terminate()
            r.join()
        seen = list(counts)
    assert w.exitcode == 0
    assert len(ResultStore(path).records()) == n_batches * per_batch
    assert all(isinstance(c, int) for c in seen), [c for c in seen if not isinstance(c, int)][:3]
    assert len(seen) > 20 and len(set(seen)) > 3, "the readers did not overlap the writer"
    assert all(c <= n_batches * per_batch for c in seen)


def test_one_writer_at_a_time_and_the_lock_dies_with_its_holder(tmp_path):
    """Case 8: a second writer is refused with the holder's pid; a killed holder leaves no stale lock."""
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys,time; from introspect_mech.store import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ArtifactError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the kernel released it
        pass


def test_two_sweeps_into_one_folder(tiny_model_of, tmp_path):
    """Cases 8, 10: while one sweep holds the folder, another one (same or other settings) is refused."""
    m = tiny_model_of("llama")
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(ArtifactError, match="being written by pid"):
            run_sweep(TinySweep(), m, out, **KW)
    assert not (out / "results.jsonl").exists()
    run_sweep(TinySweep(), m, out, **KW)
    assert len(read_records(out)) == 8


def test_failed_write_is_cut_back_and_resume_equals_uninterrupted(tiny_model_of, tmp_path, monkeypatch):
    """Case 3: the disk fills in the middle of a batch's write. The store is cut back to the end of the previous
    batch, the error is one line saying how many trials are safe, and the resumed run equals an uninterrupted one."""
    m = tiny_model_of("llama")
    out = tmp_path / "run"
    real_write, calls = os.write, {"n": 0}

    def failing_write(fd, data):
        if len(data) > 200:  # a batch of records (not the lock file's pid)
            calls["n"] += 1
            if calls["n"] == 2:  # the second batch: half of it lands, then the disk is full
                real_write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store_mod.os, "write", failing_write)
    with pytest.raises(ArtifactError, match="disk is full.*3 trials are stored safely"):
        run_sweep(TinySweep(), m, out, **KW)
    monkeypatch.setattr(store_mod.os, "write", real_write)
    assert (out / "results.jsonl").read_bytes().endswith(b"\n") and len(read_records(out)) == 3
    run_sweep(TinySweep(), m, out, **KW)
    run_sweep(TinySweep(), m, tmp_path / "whole", **KW)
    assert read_records(out) == read_records(tmp_path / "whole")


@pytest.mark.parametrize("decode", ["hf", "compact"])
def test_partly_stored_batch_is_regenerated_whole(tiny_model_of, tmp_path, decode):
    """Cases 3-4: a store cut inside a batch (first row kept, a torn half line after it). The resumed run
    regenerates the whole batch with its seed and appends only the missing rows: equal to an uninterrupted run."""
    m = tiny_model_of("llama")
    kw = dict(KW, decode=decode)
    whole = tmp_path / "whole"
    run_sweep(TinySweep(), m, whole, **kw)
    lines = (whole / "results.jsonl").read_bytes().splitlines(keepends=True)
    by_batch: dict = {}
    for ln in lines:
        by_batch.setdefault(json.loads(ln)["batch"], []).append(ln)
    multi = [b for b, ls in by_batch.items() if len(ls) > 1]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "manifest.json").write_bytes((whole / "manifest.json").read_bytes())
    kept = [ln for b in sorted(by_batch) if b < multi[-1] for ln in by_batch[b]] + by_batch[multi[-1]][:1]
    torn = by_batch[multi[-1]][1][:25]
    (cut / "results.jsonl").write_bytes(b"".join(kept) + torn)
    res = run_sweep(TinySweep(), m, cut, **kw)
    assert res.n_done_before == len(kept) and res.n_generated == 8 - len(kept)
    assert read_records(cut) == read_records(whole)


# ---------------------------------------------------------------------------------------
# resume refuses what it cannot resume, naming the difference
# ---------------------------------------------------------------------------------------


def _started(m, out, **kw):
    run_sweep(TinySweep(), m, out, max_batches=1, **{**KW, **kw})
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("key,value", [("protocol_hash", "0000"), ("package_version", "0.0.1"),
                                       ("model_fingerprint", "other-model")])
def test_resume_refuses_other_protocol_version_or_model(tiny_model_of, tmp_path, key, value):
    """Case 13: a stored run from another protocol, package version or model is not resumed."""
    m = tiny_model_of("llama")
    out = tmp_path / "run"
    man = _started(m, out)
    man[key] = value
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=f"{key} \\(stored '{value}'"):
        run_sweep(TinySweep(), m, out, **KW)


@pytest.mark.parametrize("opt,value,shown,flag", [("seed", 6, "seed (stored 5, this command 6)", "--seed 5"),
                                                  ("temperature", 0.0, "temperature (stored 1.0, this command 0.0)",
                                                   "--temperature 1"),
                                                  ("batch_size", 4, "batch_size (stored 3, this command 4)",
                                                   "--batch-size 3"),
                                                  ("decode", "hf", "decode (stored 'continuous', this command 'hf')",
                                                   "--decode continuous")])
def test_resume_names_the_differing_option(tiny_model_of, tmp_path, opt, value, shown, flag):
    """Case 11: the refusal says which option differs, and the command-line option that resumes the run."""
    m = tiny_model_of("llama")
    out = tmp_path / "run"
    _started(m, out)
    with pytest.raises(ArtifactError) as exc:
        run_sweep(TinySweep(), m, out, **{**KW, opt: value})
    assert shown in str(exc.value) and f"same options ({flag})" in str(exc.value), str(exc.value)


def test_missing_manifest_with_stored_trials_is_refused(tiny_model_of, tmp_path):
    """Case 12: following a corrupt manifest's advice must not adopt old trials under new settings."""
    m = tiny_model_of("llama")
    out = tmp_path / "run"
    _started(m, out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable.*move the run folder aside"):
        run_sweep(TinySweep(), m, out, **KW)
    (out / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="3 trials but .*manifest.json is missing"):
        run_sweep(TinySweep(), m, out, **{**KW, "seed": 1, "temperature": 0.0})
    assert len(read_records(out)) == 3


def test_records_made_under_other_settings_are_refused(tiny_model_of, tmp_path):
    """Case 12: a manifest swapped in from another run does not adopt that run's trials (records carry run_key)."""
    m = tiny_model_of("llama")
    a, b = tmp_path / "a", tmp_path / "b"
    _started(m, a)
    _started(m, b, seed=9)
    (a / "manifest.json").write_bytes((b / "manifest.json").read_bytes())
    with pytest.raises(ArtifactError, match="3 of 3 trials .* other settings"):
        run_sweep(TinySweep(), m, a, **{**KW, "seed": 9})


def test_auto_batch_size_is_resolved_once(tiny_model_of, tmp_path, monkeypatch):
    """Case 14: a run started with batch size 'auto' resumes with the size it stored, whatever memory is free."""
    m = tiny_model_of("llama")
    out = tmp_path / "run"
    monkeypatch.setattr(runner, "available_bytes", lambda model: 1 << 40)
    run_sweep(TinySweep(), m, out, max_batches=1, **{**KW, "batch_size": "auto"})
    stored = json.loads((out / "manifest.json").read_text())["batch_size"]
    monkeypatch.setattr(runner, "available_bytes", lambda model: 10_000)
    assert runner.auto_batch_size(m, 30, 8) != stored
    res = run_sweep(TinySweep(), m, out, **{**KW, "batch_size": "auto"})
    assert res.n_generated + res.n_done_before == 8
    assert json.loads((out / "manifest.json").read_text())["batch_size"] == stored


# ---------------------------------------------------------------------------------------
# validate before touching disk
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    ({"batch_size": 0}, "batch size"), ({"batch_size": -1}, "batch size"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": -1.0}, "temperature"), ({"seed": -3}, "seed"), ({"decode": "greedy"}, "decode")])
def test_bad_run_options_leave_nothing_behind(tiny_model_of, tmp_path, kw, match):
    """Cases 31, 32, 42, 43: the option is refused before the folder is touched; the corrected run then works."""
    m = tiny_model_of("llama")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        run_sweep(TinySweep(), m, out, **{**KW, **kw})
    assert not out.exists()
    run_sweep(TinySweep(), m, out, **KW)
    assert len(read_records(out)) == 8


class _Dupes(TinySweep):
    def trials(self):
        return super().trials() * 2


class _Nothing(TinySweep):
    def trials(self):
        return []


@pytest.mark.parametrize("exp,match", [(_Dupes, "duplicate trials"), (_Nothing, "no trials")])
def test_bad_trial_lists_leave_nothing_behind(tiny_model_of, tmp_path, exp, match):
    """Cases 36-37: duplicates or an empty trial list are one-line errors, before anything is written."""
    m = tiny_model_of("llama")
    with pytest.raises(ConfigError, match=match):
        run_sweep(exp(), m, tmp_path / "run", **KW)
    assert not (tmp_path / "run").exists()


class _TooLong(TinySweep):
    def build(self, model, trial):
        x = super().build(model, trial)
        return type(x)(x.prompt, x.injections, 100_000, x.info)


def test_replies_longer_than_the_context_are_refused(tiny_model_of, tmp_path):
    """Case 30: prompt + max_new_tokens beyond the model's context is refused before generating."""
    m = tiny_model_of("llama")
    with pytest.raises(ConfigError, match="exceeds the model's context of 256"):
        run_sweep(_TooLong(), m, tmp_path / "run", **KW)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_out_folder_checks_create_nothing(tmp_path):
    """Case 50: an existing file, a path under a file, a read-only folder: one-line errors, nothing created."""
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="existing file"):
        check_out_dir(f)
    with pytest.raises(ConfigError, match="which is a file"):
        check_out_dir(f / "sub" / "run")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write to read-only folders")
        with pytest.raises(ConfigError, match="not writable"):
            check_out_dir(ro / "run")
    finally:
        os.chmod(ro, 0o755)
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------
# corrupt stores: one-line errors and a recovery path
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,why", [(b"not json\n", "not valid JSON"), (b"\xff\xfe{}\n", "not valid UTF-8"),
                                     (b"\x00" * 4096 + b"\n", "it holds NUL bytes"), (b"[1, 2]\n", "not a trial record: no trial_id")])
def test_corrupt_lines_give_one_line_errors_and_repair_keeps_the_rest(tmp_path, bad, why):
    """Cases 15-17: a damaged line mid-store is named with its line number; `repair` moves it aside and keeps
    every good record (the moved line is kept in results.jsonl.corrupt)."""
    from introspect_mech.cli import main

    run = tmp_path / "run"
    run.mkdir()
    path = run / "results.jsonl"
    path.write_bytes(b'{"trial_id": "a"}\n' + bad + b'{"trial_id": "b"}\n' + b"\x00" * 8)
    with pytest.raises(ArtifactError, match=f"results.jsonl:2 is corrupt \\({why}"):
        ResultStore(path).records()
    assert main(["repair", str(run)]) == 0
    assert [r["trial_id"] for r in ResultStore(path).records()] == ["a", "b"]
    assert (run / "results.jsonl.corrupt").read_bytes() == bad


def test_resume_refuses_another_dtype_of_the_same_weights(tmp_path, monkeypatch):
    """A checkpoint stored in bfloat16 (most on the Hub) has the same parameter sums loaded in float32 or in
    bfloat16, so a fingerprint of the weights alone let a float32 run resume in bfloat16 and mix the two. The
    model's fingerprint names a dtype other than float32 (float32 fingerprints are unchanged); the weights'
    own fingerprint, which adapters are checked against, is the same in both."""
    import torch

    from introspect_mech.models import fingerprint_module, load_model

    from conftest import build_tiny_hf, make_tiny_tokenizer

    monkeypatch.setenv("INTROSPECT_MECH_CACHE", str(tmp_path / "cache"))
    tok = make_tiny_tokenizer()
    hf = build_tiny_hf("llama", tok)  # its own model: saving one edits its config (the session's tiny model stays as is)
    folder = tmp_path / "bf16-native"
    hf.save_pretrained(folder, state_dict={k: v.to(torch.bfloat16).float() for k, v in hf.state_dict().items()})
    tok.save_pretrained(folder)
    f32, b16 = load_model(str(folder)), load_model(str(folder), dtype="bfloat16")
    assert f32.fingerprint == fingerprint_module(f32.hf, f32.hf.config, "x") == f32.weights_fingerprint
    assert b16.weights_fingerprint == f32.weights_fingerprint  # the same weights, exactly
    assert b16.fingerprint != f32.fingerprint
    out = tmp_path / "run"
    assert _started(f32, out)["model"]["dtype"] == "float32"  # the manifest says which
    with pytest.raises(ArtifactError, match="model_fingerprint.*with --dtype float32"):
        run_sweep(TinySweep(), b16, out, **KW)
    res = run_sweep(TinySweep(), f32, out, **KW)  # the float32 model resumes it
    assert res.n_done_before > 0
    # concept vectors: one cache entry per dtype, each saying which
    from introspect_mech.concepts import extract_concept_vectors

    kw = dict(baseline=["apple", "river"], layers=[1])
    v32, v16 = (extract_concept_vectors(m, ["dust"], **kw) for m in (f32, b16))
    assert (v32.meta["model_dtype"], v16.meta["model_dtype"]) == ("float32", "bfloat16")
    assert len(list((tmp_path / "cache" / "vectors").iterdir())) == 2 * 2  # two entries (tensors + metadata each)
    again = extract_concept_vectors(f32, ["dust"], **kw)
    assert again.meta.get("loaded_from_cache") and again.meta["model_dtype"] == "float32"
