"""Benchmark: the toolkit's Exp 1 sweep vs a naive one-trial-per-generate loop and vs the plain-HF floor.

All three generate the same trials (the Exp 1 prompt, a different concept per trial,
injection from the "\\n\\n" before "Trial 1" through every generated token, greedy) with
exactly ``--new-tokens`` tokens each (``min_new_tokens`` = ``max_new_tokens``, so early
EOS cannot favour one method), in one process, one after the other:

- ``naive``: one ``generate`` per trial with a plain PyTorch forward hook that injects;
- ``floor``: plain HF batched ``generate`` of the same prompts with *no* intervention
  (the hardware floor for batched generation);
- ``toolkit``: ``run_sweep`` of an ``InjectedThoughts`` experiment (nnsight, per-row
  vectors, shared-prefix KV cache, results written to a JSONL store); also with
  ``decode="compact"`` (own decode loop; at fixed length this measures its per-step cost).

Then, with replies that end at EOS (``--natural-tokens``, the paper's 100): the sweep with
HF ``generate`` (finished rows keep being computed) vs the compact loop (finished rows
dropped), asserting identical greedy tokens, and the fraction of HF's row-steps that were
useful.

Also: concept-vector extraction (50 words × all layers), model load (cold GGUF parse
vs cached safetensors), peak RSS. Writes ``benchmarks/results.json``.

    python benchmarks/bench_exp1.py            # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    ap.add_argument("--natural-tokens", type=int, default=100,
                    help="also time replies that end at EOS (up to this many tokens): HF generate vs the compact "
                         "decode loop; 0 skips it")
    a = ap.parse_args(argv)

    import introspect_mech as im
    from introspect_mech import protocol
    from introspect_mech.concepts import extract_concept_vectors
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
    from introspect_mech.experiments.injected_thoughts.protocol import InjectedThoughts
    from introspect_mech.experiments.injected_thoughts.config import InjectedThoughtsConfig
    from introspect_mech.models import EMBEDDED, cache_dir
    from introspect_mech.runner import run_sweep

    res: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                             "threads": torch.get_num_threads(), "python": sys.version.split()[0]},
                 "config": vars(a)}

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

    # ---- concept vectors: 50 words x all layers ----------------------------------------
    t0 = time.perf_counter()
    extract_concept_vectors(model, cache=False)
    res["vectors_50_words_all_layers_s"] = time.perf_counter() - t0
    layer = model.arch.resolve_layer(a.layer)

    # distinct concepts, one per trial: the paper's 50 words, then the category lists
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

            handle = model.hf.model.layers[layer].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    model.hf.generate(ids, attention_mask=torch.ones_like(ids), **gen_kw)
            finally:
                handle.remove()
        return time.perf_counter() - t0

    # ---- floor: plain HF batched generate, no intervention --------------------------------
    def floor() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(words), a.batch_size):
            b = ids.repeat(min(a.batch_size, len(words) - i), 1)
            with torch.no_grad():
                model.hf.generate(b, attention_mask=torch.ones_like(b), **gen_kw)
        return time.perf_counter() - t0

    # ---- toolkit: the Exp 1 sweep runner ------------------------------------------------
    def sweep(prefix: bool, decode: str, max_new: int, fixed: bool) -> tuple[float, list[dict]]:
        out = tempfile.mkdtemp(prefix="im-bench-run-")
        cfg = InjectedThoughtsConfig(layers=[layer], strengths=[a.strength], concepts=list(words),
                                     trials=1, controls=(), max_new_tokens=max_new)
        exp = InjectedThoughts(model, cfg)
        exp.prepare(model)  # vectors are cached; not part of the timed sweep
        t0 = time.perf_counter()
        run_sweep(exp, model, out, batch_size=a.batch_size, temperature=0.0, progress=False, prefix_cache=prefix,
                  decode=decode, generate_kwargs={"min_new_tokens": max_new} if fixed else None)
        dt = time.perf_counter() - t0
        rows = [json.loads(x) for x in open(Path(out) / "results.jsonl")]
        shutil.rmtree(out, ignore_errors=True)
        assert len(rows) == len(words), len(rows)
        return dt, rows

    def toolkit(prefix: bool, decode: str = "hf") -> float:
        return sweep(prefix, decode, n, fixed=True)[0]

    def natural() -> dict:
        """Replies end at EOS (up to --natural-tokens): HF generate vs the compact loop, same greedy tokens."""
        m = a.natural_tokens
        t_hf, rows_hf = sweep(True, "hf", m, fixed=False)
        t_c, rows_c = sweep(True, "compact", m, fixed=False)
        same = {r["trial_id"]: r["response"] for r in rows_hf} == {r["trial_id"]: r["response"] for r in rows_c}
        lengths = [r["n_new_tokens"] for r in rows_hf]
        by_batch: dict = {}
        for r in rows_hf:
            by_batch.setdefault(r["batch"], []).append(r["n_new_tokens"])
        computed = sum(len(v) * max(v) for v in by_batch.values())
        return {"max_new_tokens": m, "seconds_hf_generate": t_hf, "seconds_compact": t_c,
                "compact_vs_hf": t_hf / t_c, "same_tokens": same, "mean_reply_tokens": sum(lengths) / len(lengths),
                "useful_fraction_of_hf_row_steps": sum(lengths) / computed}

    n_trials = len(words)
    t_tool = toolkit(True)
    t_tool_noprefix = toolkit(False)
    t_tool_compact = toolkit(True, "compact")
    t_floor = floor()
    t_naive = naive()
    res["trials"] = n_trials
    res["seconds"] = {"naive_one_generate_per_trial": t_naive, "plain_hf_batched_no_intervention": t_floor,
                      "toolkit_sweep": t_tool, "toolkit_sweep_without_prefix_cache": t_tool_noprefix,
                      "toolkit_sweep_compact_decode": t_tool_compact}
    res["trials_per_s"] = {k: n_trials / v for k, v in res["seconds"].items()}
    res["ratios"] = {"toolkit_vs_naive": t_naive / t_tool, "toolkit_vs_floor": t_floor / t_tool,
                     "toolkit_without_prefix_vs_floor": t_floor / t_tool_noprefix,
                     "compact_decode_vs_hf_generate_fixed_length": t_tool / t_tool_compact}
    if a.natural_tokens:
        res["natural_length"] = natural()
    res["peak_rss_mb"] = _rss_mb()
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
