"""The README's paper-sized Exp 1 sweep end to end (one CLI command, start-up included), against its floor.

Runs, as a subprocess and timed from start to exit,

    python -m introspect_mech run injected-thoughts --layers 0.17,0.33,0.5,0.58,0.67,0.83 --strengths 1,2,4,8 \\
        --concepts paper --control-trials 100 --control-per-cell 5 --yes-bias-per-cell 10 --alt-per-cell 3 --out DIR

(1,992 trials, temperature 1, up to 100 new tokens), then reads the stored records and computes the
sweep's floor: its useful FLOPs (``floor.useful_flops``: every trial's prompt beyond its cached prefix,
each prefix once, every fed generated token, one set of logits per generated token) divided by the
machine's best matrix-multiply throughput at the model's shapes, measured in this process with the
thread count the sweep uses. Writes ``--json`` (default ``benchmarks/paper_sweep.json``).

    python benchmarks/bench_paper_sweep.py                       # the full sweep (~10 min on 2 idle cores)
    python benchmarks/bench_paper_sweep.py --layers 0.5 --strengths 4 --json /tmp/reduced.json   # 1/24 of it
    python benchmarks/bench_paper_sweep.py -- --decode hf        # extra options for the run command

The machine's load average before and after is recorded: on a shared machine the time means little.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import floor as floor_mod  # noqa: E402
from bench_exp1 import machine  # noqa: E402

README_ARGS = ["--concepts", "paper", "--control-trials", "100", "--control-per-cell", "5", "--yes-bias-per-cell", "10",
               "--alt-per-cell", "3"]


def naive_seconds_per_trial(model, a, recs: list[dict]) -> tuple[float, int]:
    """Mean time of one HF ``generate`` per trial, injecting with a plain forward hook, for a seeded random
    sample of the stored trials, each generating exactly its recorded number of tokens (sampled, T=1)."""
    import random

    from introspect_mech.cli import build_parser, experiment_config

    args = build_parser().parse_args(["run", "injected-thoughts", "--layers", a.layers, "--strengths", a.strengths,
                                      *README_ARGS, "--out", "unused", *a.extra])
    spec, cfg = experiment_config(args)  # exactly the run command's experiment, so trial ids match
    exp = spec.make_protocol(model, cfg)
    exp.prepare(model)
    by_id = {t.trial_id: t for t in exp.trials()}
    sample = random.Random(0).sample(recs, min(a.naive_sample, len(recs)))
    total = 0.0
    for r in sample:
        trial = by_id[r["trial_id"]]
        x = exp.build(model, trial)
        ids = torch.tensor([x.prompt.input_ids])
        handles, seen = [], {"n": 0}
        assert len(x.injections) <= 1, "Exp 1 trials carry at most one injection"
        for inj in x.injections:
            end = inj.window.end_or_inf

            def hook(mod, args, out, inj=inj, end=end):
                h = out[0] if isinstance(out, tuple) else out
                pos = torch.arange(seen["n"], seen["n"] + h.shape[1])
                seen["n"] += h.shape[1]
                sel = (pos >= inj.window.start) & (pos < end)
                h = h.clone()
                if inj.mode == "add":
                    h[:, sel] += inj.strength * inj.vector.to(h.dtype)
                else:
                    h[:, sel] *= inj.strength
                return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

            handles.append(model.arch.layer(model.hf, model.arch.resolve_layer(inj.layer)).register_forward_hook(hook))
        n = max(1, r["n_new_tokens"])
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  pad_token_id=model.tokenizer.pad_token_id)
        finally:
            for h in handles:
                h.remove()
        total += time.perf_counter() - t0
    return total / len(sample), len(sample)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="0.17,0.33,0.5,0.58,0.67,0.83")
    ap.add_argument("--strengths", default="1,2,4,8")
    ap.add_argument("--json", default=str(Path(__file__).with_name("paper_sweep.json")))
    ap.add_argument("--keep", default=None, help="run folder to keep (default: a temporary one, removed)")
    ap.add_argument("--naive-sample", type=int, default=16,
                    help="re-run this many of the sweep's trials (random, seeded) the naive way — one HF generate per "
                         "trial with a forward hook, each with its recorded reply length — and extrapolate the naive "
                         "loop's time for the whole sweep (0 skips it)")
    ap.add_argument("extra", nargs="*", help="extra options for the run command, after --")
    a = ap.parse_args(argv)
    threads = int(os.environ.get("INTROSPECT_MECH_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)

    import introspect_mech as im
    from introspect_mech.execution import MIN_PREFIX

    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="im-paper-sweep-")) / "run"
    cmd = [sys.executable, "-m", "introspect_mech", "run", "injected-thoughts", "--layers", a.layers, "--strengths",
           a.strengths, *README_ARGS, "--out", str(out), "--no-progress", *a.extra]
    # warm the caches the timed command reads (model export, fingerprint, the paper concepts' vectors at these
    # layers) with a one-token run of the same concepts and layers, so the timing is the README's with cached
    # model and vectors, whatever ran before (a changed vector-cache key would otherwise be paid inside it)
    with tempfile.TemporaryDirectory() as warm:
        subprocess.run([sys.executable, "-m", "introspect_mech", "run", "injected-thoughts", "--layers", a.layers,
                        "--strengths", a.strengths.split(",")[0], "--concepts", "paper", "--controls", "control",
                        "--control-trials", "0", "--max-new-tokens", "1", "--temperature", "0", "--no-progress",
                        "--out", f"{warm}/run", *a.extra], check=True, capture_output=True)
    res: dict = {"machine": machine(), "threads": threads, "command": " ".join(cmd[1:]),
                 "load_average_before": os.getloadavg()}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    res["wall_seconds"] = time.perf_counter() - t0
    res["load_average_after"] = os.getloadavg()
    res["returncode"] = proc.returncode
    res["stdout"] = proc.stdout[-2000:]
    if proc.returncode:
        res["stderr"] = proc.stderr[-4000:]
        Path(a.json).write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return 1
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    manifest = json.loads((out / "manifest.json").read_text())

    model = im.load_model()
    gemm = floor_mod.gemm_table(model, (64, 128, 256, 1024))
    peak = max(gemm.values())
    bandwidth = floor_mod.read_bandwidth()
    prompt_lengths, new_tokens, prefixes, own = [], [], set(), []
    for r in recs:
        L = r["n_prompt_tokens"]
        P = min([L - 1] + [i["window"]["start"] for i in r["injections"]])
        P = P if P >= MIN_PREFIX else 0
        own.append(L - P)  # prompt positions beyond the shareable prefix: fed once, and this row's alone
        if P:
            prefixes.add((r["prompt"], P))
        prompt_lengths.append(L)
        new_tokens.append(r["n_new_tokens"])
    prefix_tokens = sum(P for _, P in prefixes)
    fed = sum(own) + prefix_tokens + sum(max(0, n - 1) for n in new_tokens)
    useful = floor_mod.flops(model, fed, sum(new_tokens))
    res.update({
        "decode": manifest.get("decode"), "batch_size": manifest.get("batch_size"), "trials": len(recs),
        "new_tokens": sum(new_tokens), "prompt_tokens": sum(prompt_lengths),
        "fed_tokens": fed, "distinct_prefixes": len(prefixes),
        "useful_gflop": useful / 1e9, "gemm_gflops_by_rows": gemm, "gemm_peak_gflops": peak,
        "floor_seconds": useful / 1e9 / peak, "trials_per_s": len(recs) / res["wall_seconds"],
    })
    res["fraction_of_floor"] = res["floor_seconds"] / res["wall_seconds"]
    # the memory side (floor.py): per-row keys/values every decode step must read, and the logits rows
    kv, lg = floor_mod.own_kv_read_bytes(model, own, new_tokens), floor_mod.logits_bytes(model, new_tokens)
    res.update({"read_bandwidth_gb_s": bandwidth / 1e9, "own_kv_read_gb": kv / 1e9, "logits_gb": lg / 1e9,
                "memory_seconds": (kv + lg) / bandwidth})
    res["matmul_plus_memory_seconds"] = res["floor_seconds"] + res["memory_seconds"]
    res["fraction_of_matmul_plus_memory"] = res["matmul_plus_memory_seconds"] / res["wall_seconds"]
    # the same bound with the multiplies at the rate of the decode batch's row count (slots), not the best rate
    slots = int(manifest.get("batch_size") or 0)
    if slots in gemm:
        res["matmul_at_slots_plus_memory_seconds"] = useful / 1e9 / gemm[slots] + res["memory_seconds"]
    if a.naive_sample:
        per_trial, n = naive_seconds_per_trial(model, a, recs)
        res["naive_sample_trials"] = n
        res["naive_seconds_per_trial"] = per_trial
        res["naive_estimate_seconds"] = per_trial * len(recs)
        res["speedup_vs_naive_including_startup"] = res["naive_estimate_seconds"] / res["wall_seconds"]
    if not a.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    Path(a.json).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
