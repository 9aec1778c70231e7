"""Anatomy of one continuous-decode step on the real model: wall time per step against the matrix products alone.

Why: the paper-sized sweep runs at under half of its matmul floor; this isolates one part of it — a
full batch of ``R`` rows of the Exp 1 prompt, one injection each, decoding exactly ``N`` tokens (no
drain, no mixed prompts) — and states how much of a step the weight products need at ``R`` rows
(``floor.gemm_throughput``). ``--profile FILE`` also writes torch's operator table (self time).

    INTROSPECT_MECH_THREADS=2 python benchmarks/bench_decode_step.py --rows 128 --tokens 40 --temperature 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import floor as floor_mod  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--profile", default=None, help="write torch profiler's operator table here")
    a = ap.parse_args(argv)
    threads = int(os.environ.get("INTROSPECT_MECH_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)

    import introspect_mech as im
    from introspect_mech.continuous import Request, generate_continuous
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
    from introspect_mech.inject import Injection, Window

    model = im.load_model()
    p = exp1_prompt(model.tokenizer)
    layer = model.arch.resolve_layer(0.5)
    g = torch.Generator().manual_seed(0)
    reqs = [Request(p.rendered, (Injection(torch.randn(model.arch.d_model, generator=g) * 0.2, layer, 4.0,
                                           Window(p.start, None)),), a.tokens, i) for i in range(a.rows)]
    prefixes: dict = {}
    kw = dict(prefixes=prefixes, temperature=a.temperature)
    list(generate_continuous(model, reqs[:2], slots=2, min_new_tokens=2, **kw))  # builds the prefix cache
    stats: dict = {}

    def run() -> None:
        list(generate_continuous(model, reqs, slots=a.rows, min_new_tokens=a.tokens, stats=stats, **kw))

    t0 = time.perf_counter()
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        Path(a.profile).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    else:
        run()
    wall = time.perf_counter() - t0
    useful = floor_mod.useful_flops(model, [len(p.rendered)] * a.rows, [a.tokens] * a.rows, shared_prefix=p.start)
    rate = floor_mod.gemm_throughput(model, a.rows)
    res = {"rows": a.rows, "tokens": a.tokens, "temperature": a.temperature, "threads": threads,
           "profiled": bool(a.profile), "wall_s": wall, "per_step_ms": wall / a.tokens * 1000, "stats": stats,
           "useful_gflop": useful / 1e9, "gemm_gflops_at_rows": rate / 1e9, "matmul_only_s": useful / rate,
           "fraction_of_gemm_at_rows": useful / rate / wall}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
