"""Anatomy of one continuous-decode step on the real model, against what a decode step could cost at all.

Why: the paper-sized sweep runs at under half of its matmul floor; this isolates its decode step — a full
batch of ``R`` rows of the Exp 1 prompt, one injection each (no drain, no mixed prompts) — and sets it
beside three references measured in the same process:

- the weight products alone, at ``R`` rows and at the machine's peak (``floor.gemm_throughput``), the
  floor's own definition;
- a minimal decode step (``minimal_step.MinimalDecoder``): the same model's arithmetic as the fewest plain
  torch operators, with no interventions, no shared-prefix attention, no sampler and no hooks, eager and
  (``--compile``) through ``torch.compile``. It computes the model's logits (tested), so it is the step an
  implementation without the engine's features could have on this machine;
- the sampler alone (``continuous.inverse_cdf`` and the search), at ``R`` rows.

The engine's step time is the slope between a run of ``--tokens`` and one of ``--short`` tokens (the prefill
and admission cancel), the median over ``--repeats`` pairs run back to back. The products and the minimal steps
are timed in ``--rounds`` rounds, each round's fraction from that round's own numbers: this machine's speed
drifts by 10-30 % between minutes, which single timings taken minutes apart would turn into false ratios. The CLI's allocator setting (``allocator.keep_freed_memory``) is applied as a command
would. ``--profile FILE`` writes torch's operator table (self time) of the ``--tokens`` run instead.

    INTROSPECT_MECH_THREADS=2 python benchmarks/bench_decode_step.py --rows 128 --tokens 50 --temperature 1 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
import floor as floor_mod  # noqa: E402
import minimal_step  # noqa: E402


def _median_ms(fn: Callable[[], object], n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--short", type=int, default=10, help="the shorter run whose time is subtracted")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3, help="short/long pairs of engine runs (median slope)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of products and minimal steps (median, range)")
    ap.add_argument("--compile", action="store_true", help="also time the minimal step through torch.compile")
    ap.add_argument("--dtype", default=None, help="the model's dtype (default float32; bfloat16: another instrument)")
    ap.add_argument("--profile", default=None, help="write torch profiler's operator table here")
    a = ap.parse_args(argv)
    if not 1 <= a.short < a.tokens:
        ap.error("need 1 <= --short < --tokens")
    threads = int(os.environ.get("INTROSPECT_MECH_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)

    import introspect_mech as im
    from introspect_mech.allocator import keep_freed_memory
    from introspect_mech.continuous import Request, generate_continuous, inverse_cdf
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
    from introspect_mech.inject import Injection, Window
    from introspect_mech.models import dtype_name

    kept = keep_freed_memory()
    model = im.load_model(dtype=a.dtype)
    p = exp1_prompt(model.tokenizer)
    layer = model.arch.resolve_layer(0.5)
    g = torch.Generator().manual_seed(0)
    vecs = [torch.randn(model.arch.d_model, generator=g) * 0.2 for _ in range(a.rows)]

    def requests(n: int) -> list[Request]:
        return [Request(p.rendered, (Injection(v, layer, 4.0, Window(p.start, None)),), n, i) for i, v in enumerate(vecs)]

    prefixes: dict = {}
    kw = dict(prefixes=prefixes, temperature=a.temperature)
    list(generate_continuous(model, requests(2)[:2], slots=2, min_new_tokens=2, **kw))  # builds the prefix cache
    stats: dict = {}

    def run(n: int) -> float:
        t0 = time.perf_counter()
        list(generate_continuous(model, requests(n), slots=a.rows, min_new_tokens=n, stats=stats, **kw))
        return time.perf_counter() - t0

    res: dict = {"rows": a.rows, "tokens": a.tokens, "short": a.short, "temperature": a.temperature,
                 "threads": threads, "allocator_kept": kept, "dtype": dtype_name(model.dtype)}
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            res["profiled_wall_s"] = run(a.tokens)
        Path(a.profile).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    # the engine's step: alternating short/long runs; each pair gives a slope (this machine drifts by 10-30 %
    # between runs, so a pair is measured close together and the median pair is reported with the range)
    walls: dict[int, list[float]] = {a.short: [], a.tokens: []}
    for _ in range(a.repeats):
        for n in (a.short, a.tokens):
            walls[n].append(run(n))
    slopes = [(lo - sh) / (a.tokens - a.short) * 1000 for sh, lo in zip(walls[a.short], walls[a.tokens])]
    res["engine"] = {"wall_s": {str(n): w for n, w in walls.items()}, "decode_step_ms_by_pair": slopes,
                     "decode_step_ms": statistics.median(slopes), "stats": stats}

    # the minimal step: the rows' own columns on average over the decode steps measured (the prompt beyond the
    # cached prefix, and the reply so far); the engine also attends to the shared prefix, the minimal step does not
    own = len(p.rendered) - p.start
    columns = own + (a.short + a.tokens) // 2
    dec = minimal_step.MinimalDecoder(model.hf, a.rows, columns)
    ids = torch.randint(0, model.tokenizer.vocab_size, (a.rows,), generator=g)
    pos = len(p.rendered)
    res["minimal"] = {"columns": columns, "check_max_abs_logit_diff": minimal_step.check_against_hf(model.hf)}
    steps: dict[str, Callable[[], object]] = {"minimal_eager": lambda: dec.step(ids, pos)}
    if a.compile:
        try:
            t0 = time.perf_counter()
            dec.compiled(ids, pos)
            res["minimal"]["compile_s"] = time.perf_counter() - t0
            steps["minimal_compiled"] = lambda: dec.compiled(ids, pos)
        except Exception as exc:  # noqa: BLE001 - no C++ compiler, an unsupported build: reported, not fatal
            res["minimal"]["compiled_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"

    logits = torch.randn(a.rows, model.hf.get_output_embeddings().weight.shape[0], generator=g)  # the sampler is float32
    u = torch.rand(a.rows, 1, generator=g)

    def sample() -> None:
        cdf = inverse_cdf(logits, 1.0)
        torch.searchsorted(cdf, u * cdf[:, -1:], right=True)

    res["sampler_ms"] = _median_ms(sample, 20)

    # rounds: the products' rates (at R rows and at the peak's 1,024) and each minimal step, measured side by side,
    # so each round's fractions share the machine's state; medians and ranges over rounds
    flops = floor_mod.flops(model, a.rows, a.rows)  # one step: every row's token through the blocks and the head
    rounds = []
    for _ in range(a.rounds):
        r = {"gemm_gflops_at_rows": floor_mod.gemm_throughput(model, a.rows, repeats=1) / 1e9,
             "gemm_gflops_peak": floor_mod.gemm_throughput(model, 1024, repeats=1) / 1e9}
        r.update({f"{k}_ms": _median_ms(fn, 3) for k, fn in steps.items()})
        r["sampler_ms"] = _median_ms(sample, 5)
        rounds.append(r)
    del dec
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    res["rounds"] = rounds
    res.update(step_gflop=flops / 1e9, gemm_gflops_at_rows=med["gemm_gflops_at_rows"],
               gemm_gflops_peak=med["gemm_gflops_peak"])
    res["minimal"].update({k.replace("minimal_", "") + "_step_ms": med[f"{k}_ms"] for k in steps})
    res["products_ms_at_rows"] = flops / (med["gemm_gflops_at_rows"] * 1e9) * 1000
    res["products_ms_at_peak"] = flops / (med["gemm_gflops_peak"] * 1e9) * 1000

    def fractions(rate_key: str) -> dict:
        out = {}
        for k in steps:  # per round: that round's products against that round's step (and with the sampler, which
            # a sampled sweep's step cannot skip; the engine's step includes it)
            for name, extra in ((k, 0), (f"{k}_with_sampler", 1)):
                per = [flops / (r[rate_key] * 1e9) * 1000 / (r[f"{k}_ms"] + extra * r["sampler_ms"]) for r in rounds]
                out[name] = {"median": statistics.median(per), "min": min(per), "max": max(per)}
        per = [flops / (r[rate_key] * 1e9) * 1000 / sl for r in rounds for sl in slopes]  # engine: every pairing
        out["engine"] = {"median": statistics.median(per), "min": min(per), "max": max(per)}
        return out

    res["fraction_of_peak_floor"] = fractions("gemm_gflops_peak")
    res["fraction_of_products_at_rows"] = fractions("gemm_gflops_at_rows")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
