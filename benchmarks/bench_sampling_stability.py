"""How often float rounding changes a trial's reply when only the batch around it changes.

With continuous decoding each trial samples from its own stream (seeded from the run's seed and its
trial id), so which trials run beside it cannot change its random numbers. What can change is
float rounding: other neighbours mean other matrix shapes (rows, key lengths, prefix groups), so
the logits differ in the last bits, and a sampled token flips when its uniform draw falls within
that distance of a boundary of the cumulative distribution (after which the reply diverges).

This runs the same Exp 1 sweep (temperature 1, the run's seed fixed) with two slot counts — other
segments, other neighbours, other shapes — and counts trials whose replies differ, with the token
at which they part. Then the same greedily, and greedily against HF ``generate`` (``decode="hf"``,
batches of one prompt): every difference there is float rounding too. Writes ``--out`` (JSON).

    python benchmarks/bench_sampling_stability.py            # 118 trials (1 layer x 1 strength + controls)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_exp1 import machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="0.5")
    ap.add_argument("--strengths", default="4")
    ap.add_argument("--slots", default="128,16", help="the two slot counts compared")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_sampling_stability.json")))
    a = ap.parse_args(argv)

    import introspect_mech as im
    from introspect_mech.experiments.injected_thoughts.protocol import InjectedThoughts
    from introspect_mech.experiments.injected_thoughts.config import InjectedThoughtsConfig
    from introspect_mech.runner import run_sweep

    model = im.load_model()
    cfg = dict(layers=[float(x) for x in a.layers.split(",")], strengths=[float(x) for x in a.strengths.split(",")],
               concepts="paper", control_trials=20, control_per_cell=5, yes_bias_per_cell=10, alt_per_cell=3,
               max_new_tokens=a.max_new_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="im-stability-"))
    slots = [int(x) for x in a.slots.split(",")]

    def run(name: str, **kw) -> tuple[dict, float]:
        exp = InjectedThoughts(model, InjectedThoughtsConfig(**cfg))
        t0 = time.perf_counter()
        run_sweep(exp, model, tmp / name, progress=False, seed=0, **kw)
        dt = time.perf_counter() - t0
        tok = model.tokenizer
        recs = [json.loads(x) for x in (tmp / name / "results.jsonl").read_text().splitlines() if x.strip()]
        return {r["trial_id"]: tok(r["response"], add_special_tokens=False)["input_ids"] for r in recs}, dt

    def compare(x: dict, y: dict) -> dict:
        diff = {k: next((i for i, (u, v) in enumerate(zip(x[k], y[k])) if u != v), min(len(x[k]), len(y[k])))
                for k in x if x[k] != y[k]}
        tokens = sum(len(v) for v in x.values())
        return {"trials": len(x), "trials_with_other_replies": len(diff),
                "fraction_of_trials": len(diff) / len(x), "tokens_in_run": tokens,
                "first_differing_token_index": sorted(diff.values())}

    res: dict = {"machine": machine(), "config": {**cfg, "slots": slots}, "load_average_before": os.getloadavg()}
    s1, t1 = run("s1", decode="continuous", batch_size=slots[0], temperature=1.0)
    s2, t2 = run("s2", decode="continuous", batch_size=slots[1], temperature=1.0)
    res["sampled_continuous_slots"] = {**compare(s1, s2), "seconds": [t1, t2]}
    g1, t3 = run("g1", decode="continuous", batch_size=slots[0], temperature=0.0)
    g2, t4 = run("g2", decode="continuous", batch_size=slots[1], temperature=0.0)
    res["greedy_continuous_slots"] = {**compare(g1, g2), "seconds": [t3, t4]}
    h, t5 = run("h", decode="hf", batch_size=32, temperature=0.0)
    res["greedy_continuous_vs_hf_generate"] = {**compare(g1, h), "seconds": [t3, t5]}
    res["load_average_after"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("INTROSPECT_MECH_THREADS", "0")) or torch.get_num_threads())
    sys.exit(main())
