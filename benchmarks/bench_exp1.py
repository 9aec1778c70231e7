"""Benchmark: every way of running Exp 1 trials, against the naive loop, the plain-HF floor and the physical limit.

All methods generate the same trials (the Exp 1 prompt, a different concept per trial, injection
from the "\\n\\n" before "Trial 1" through every generated token, greedy), in one process, one
after the other:

- ``naive``: one ``generate`` per trial with a plain PyTorch forward hook that injects;
- ``floor``: plain HF batched ``generate`` of the same prompts with *no* intervention and no
  prefix cache (what batching alone gives);
- ``toolkit_hf`` / ``toolkit_compact`` / ``toolkit_continuous``: ``run_sweep`` of an
  ``InjectedThoughts`` experiment with ``decode="hf"`` (HF generate per batch, shared-prefix KV
  cache), ``"compact"`` (own loop, finished rows dropped) and ``"continuous"`` (own loop, freed
  slots refilled, per-slot KV buffers; the default), results written to a JSONL store.

First with exactly ``--new-tokens`` tokens per trial (``min_new_tokens``, so early EOS favours no
method), then with replies that end at EOS (``--natural-tokens``, the paper's 100), where the
three decoders must give identical greedy tokens (asserted; a difference is reported, not hidden).

The physical limit (``floor.py``): the machine's matrix-multiply throughput at the model's own
weight shapes, measured in the same run with the same threads at several row counts. Each
method's *useful* FLOPs (each trial's prompt beyond the shared prefix, the prefix once, every fed
generated token, one set of logits per generated token) divided by its time is its achieved
FLOP/s, reported as a fraction of the best measured matmul throughput (``fraction_of_peak``) and of
the throughput at the batch's row count (``fraction_of_gemm_at_batch``).

Also: model load (cold GGUF parse vs cached), concept-vector extraction, peak RSS, the machine's
load average before and after (the numbers mean little on a shared machine), and with
``--startup`` the start-up of a run command (``bench_startup.py``). Writes ``--out`` (JSON).

    python benchmarks/bench_exp1.py                 # ~6 min on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import floor as floor_mod  # noqa: E402

METHODS = ("hf", "compact", "continuous")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                         if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists()
            else platform.processor()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layer", default="0.67")
    ap.add_argument("--strength", type=float, default=4.0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    ap.add_argument("--skip-cold-load", action="store_true")
    ap.add_argument("--skip-naive", action="store_true", help="leave out the (slow) one-generate-per-trial loop")
    ap.add_argument("--natural-tokens", type=int, default=100,
                    help="also time replies that end at EOS (up to this many tokens) with every decoder; 0 skips it")
    ap.add_argument("--startup", action="store_true", help="also time the start-up of a run command (subprocesses)")
    a = ap.parse_args(argv)

    import introspect_mech as im
    from introspect_mech import protocol
    from introspect_mech.concepts import extract_concept_vectors
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
    from introspect_mech.experiments.injected_thoughts.protocol import InjectedThoughts
    from introspect_mech.experiments.injected_thoughts.config import InjectedThoughtsConfig
    from introspect_mech.models import EMBEDDED, cache_dir
    from introspect_mech.runner import run_sweep

    res: dict = {"machine": machine(), "config": vars(a), "load_average_before": os.getloadavg()}

    # ---- model load: cold (GGUF parse + export) vs cached ----------------------------
    if not a.skip_cold_load and a.model is None:
        tmp_cache = tempfile.mkdtemp(prefix="im-bench-cache-")
        old = os.environ.get("INTROSPECT_MECH_CACHE")
        os.environ["INTROSPECT_MECH_CACHE"] = tmp_cache
        t0 = time.perf_counter()
        im.load_model()
        res["load_cold_gguf_s"] = time.perf_counter() - t0
        if old is None:
            os.environ.pop("INTROSPECT_MECH_CACHE")
        else:
            os.environ["INTROSPECT_MECH_CACHE"] = old
        shutil.rmtree(tmp_cache, ignore_errors=True)
    t0 = time.perf_counter()
    model = im.load_model(a.model)
    res["load_cached_s"] = time.perf_counter() - t0

    # ---- the physical limit: matmul throughput at the model's shapes ------------------------
    rows = sorted({1, 8, 32, 64, 128, 256, 1024, a.batch_size})
    gemm = floor_mod.gemm_table(model, rows)
    peak = max(gemm.values())
    res["gemm_gflops_by_rows"] = gemm
    res["gemm_peak_gflops"] = peak

    # ---- concept vectors: 50 words x all layers ----------------------------------------
    t0 = time.perf_counter()
    extract_concept_vectors(model, cache=False)
    res["vectors_50_words_all_layers_s"] = time.perf_counter() - t0
    layer = model.arch.resolve_layer(a.layer)

    pool = list(dict.fromkeys(w.lower() for w in protocol.concept_words() +
                              [w for ws in protocol.category_words().values() for w in ws]))
    if a.trials > len(pool):
        raise SystemExit(f"at most {len(pool)} distinct trials")
    words = pool[: a.trials]
    vecs = extract_concept_vectors(model, words, layers=[layer])
    p = exp1_prompt(model.tokenizer)
    ids = torch.tensor([p.rendered.input_ids])
    n = a.new_tokens
    gen_kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    L, P = len(p.rendered), p.start

    def useful(new_tokens: list[int]) -> float:
        return floor_mod.useful_flops(model, [L] * len(new_tokens), new_tokens, shared_prefix=P)

    # ---- naive: one generate per trial with a forward hook --------------------------------
    def naive() -> float:
        t0 = time.perf_counter()
        for w in words:
            vec = a.strength * vecs.get(w, layer)
            seen = {"n": 0}

            def hook(mod, args, out, vec=vec, seen=seen):
                h = out[0] if isinstance(out, tuple) else out
                pos = torch.arange(seen["n"], seen["n"] + h.shape[1])
                seen["n"] += h.shape[1]
                sel = pos >= p.start
                h = h.clone()
                h[:, sel] += vec
                return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

            handle = model.arch.layer(model.hf, layer).register_forward_hook(hook)
            try:
                with torch.no_grad():
                    model.hf.generate(ids, attention_mask=torch.ones_like(ids), **gen_kw)
            finally:
                handle.remove()
        return time.perf_counter() - t0

    # ---- floor: plain HF batched generate, no intervention --------------------------------
    def plain_hf() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(words), a.batch_size):
            b = ids.repeat(min(a.batch_size, len(words) - i), 1)
            with torch.no_grad():
                model.hf.generate(b, attention_mask=torch.ones_like(b), **gen_kw)
        return time.perf_counter() - t0

    # ---- toolkit: the Exp 1 sweep runner ------------------------------------------------
    def sweep(decode: str, max_new: int, fixed: bool, prefix: bool = True) -> tuple[float, list[dict]]:
        out = tempfile.mkdtemp(prefix="im-bench-run-")
        cfg = InjectedThoughtsConfig(layers=[layer], strengths=[a.strength], concepts=list(words),
                                     trials=1, controls=(), max_new_tokens=max_new)
        exp = InjectedThoughts(model, cfg)
        exp.prepare(model)  # vectors are cached; not part of the timed sweep
        t0 = time.perf_counter()
        run_sweep(exp, model, out, batch_size=a.batch_size, temperature=0.0, progress=False, prefix_cache=prefix,
                  decode=decode, generate_kwargs={"min_new_tokens": max_new} if fixed else None)
        dt = time.perf_counter() - t0
        rows_ = [json.loads(x) for x in open(Path(out) / "results.jsonl")]
        shutil.rmtree(out, ignore_errors=True)
        assert len(rows_) == len(words), len(rows_)
        return dt, rows_

    def entry(seconds: float, new_tokens: list[int]) -> dict:
        fl = useful(new_tokens)
        return {"seconds": seconds, "trials_per_s": len(new_tokens) / seconds, "useful_gflop": fl / 1e9,
                "achieved_gflops": fl / seconds / 1e9, "fraction_of_peak": fl / seconds / 1e9 / peak,
                "fraction_of_gemm_at_batch": fl / seconds / 1e9 / gemm[a.batch_size]}

    fixed_tokens = [n] * len(words)
    res["trials"] = len(words)
    res["floor_seconds_at_peak"] = useful(fixed_tokens) / 1e9 / peak
    methods: dict = {}
    for dec in METHODS:
        methods[f"toolkit_{dec}"] = entry(sweep(dec, n, fixed=True)[0], fixed_tokens)
    methods["toolkit_hf_without_prefix_cache"] = entry(sweep("hf", n, fixed=True, prefix=False)[0], fixed_tokens)
    methods["plain_hf_batched_no_intervention"] = entry(plain_hf(), fixed_tokens)
    if not a.skip_naive:
        methods["naive_one_generate_per_trial"] = entry(naive(), fixed_tokens)
    res["fixed_length"] = methods
    base = methods["toolkit_continuous"]["seconds"]
    res["ratios"] = {f"continuous_vs_{k}": v["seconds"] / base for k, v in methods.items() if k != "toolkit_continuous"}

    # ---- natural length: every decoder, same greedy tokens -----------------------------------
    if a.natural_tokens:
        m_ = a.natural_tokens
        nat: dict = {"max_new_tokens": m_}
        replies = {}
        for dec in METHODS:
            dt, rows_ = sweep(dec, m_, fixed=False)
            replies[dec] = {r["trial_id"]: r["response"] for r in rows_}
            nat[dec] = entry(dt, [r["n_new_tokens"] for r in rows_])
            if dec == "hf":
                lengths = [r["n_new_tokens"] for r in rows_]
                by_batch: dict = {}
                for r in rows_:
                    by_batch.setdefault(r["batch"], []).append(r["n_new_tokens"])
                nat["mean_reply_tokens"] = sum(lengths) / len(lengths)
                nat["useful_fraction_of_hf_row_steps"] = sum(lengths) / sum(len(v) * max(v) for v in by_batch.values())
        for dec in METHODS[1:]:
            nat[f"{dec}_trials_with_other_tokens_than_hf"] = sum(replies["hf"][k] != replies[dec][k] for k in replies["hf"])
            nat[f"{dec}_vs_hf"] = nat["hf"]["seconds"] / nat[dec]["seconds"]
        res["natural_length"] = nat

    if a.startup:
        out = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_startup.py")), "--json"],
                             capture_output=True, text=True, check=True)
        res["startup"] = json.loads(out.stdout)
        if "naive_one_generate_per_trial" in methods:
            with_startup = base + res["startup"]["run_command_startup_s"]
            res["ratios"]["naive_vs_continuous_including_startup"] = \
                methods["naive_one_generate_per_trial"]["seconds"] / with_startup
    res["peak_rss_mb"] = _rss_mb()
    res["load_average_after"] = os.getloadavg()
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(table(res))
    return 0


def table(res: dict) -> str:
    """The fixed-length methods as a markdown table (README-ready), slowest first."""
    rows = sorted(res["fixed_length"].items(), key=lambda kv: -kv[1]["seconds"])
    naive = res["fixed_length"].get("naive_one_generate_per_trial", {}).get("seconds")
    floor_s = res["fixed_length"]["plain_hf_batched_no_intervention"]["seconds"]
    out = [f"{res['trials']} trials, batch {res['config']['batch_size']}, {res['config']['new_tokens']} new tokens; "
           f"matmul peak {res['gemm_peak_gflops']:.0f} GFLOP/s ({res['machine']['threads']} threads), "
           f"load average {res['load_average_before'][0]:.1f} → {res['load_average_after'][0]:.1f}",
           "", "| method | seconds | trials/s | useful GFLOP/s | fraction of matmul peak | vs naive | vs plain-HF floor |",
           "|---|---|---|---|---|---|---|"]
    for name, e in rows:
        vs_naive = f"{naive / e['seconds']:.1f}×" if naive else "–"
        out.append(f"| {name} | {e['seconds']:.1f} | {e['trials_per_s']:.2f} | {e['achieved_gflops']:.1f} | "
                   f"{e['fraction_of_peak']:.2f} | {vs_naive} | {floor_s / e['seconds']:.2f}× |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
