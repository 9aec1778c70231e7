"""A ~1B-parameter model through the large-model path: bfloat16, ``device_map="auto"`` (or ``--device cuda``),
continuous decoding vs plain HF batched generation, and the memory-aware automatic batch size.

No Hub access here, so the model is a Llama-architecture config of TinyLlama-1.1B's shape (2048 wide,
22 layers, 32 query / 4 KV heads, SwiGLU 5632) with random weights and SmolLM2's tokenizer (vocab
49,152), saved once and loaded through ``load_model(folder, dtype=..., device_map=...)`` as a user's
checkpoint would be. Random weights generate gibberish, which does not matter for speed or memory.

Reported: load time; matmul throughput at the model's shapes (``floor.py``) in its dtype; tokens/s of
plain HF ``generate`` (no intervention) and of the toolkit's continuous loop (injection on every row)
on the same prompts at ``--batch`` rows, each as a fraction of the matmul throughput; whether their
greedy tokens agree; ``auto_batch_size`` and its per-row memory estimate next to the memory the
continuous loop's per-slot buffers and a prefill actually took (resident-set growth on CPU,
``max_memory_allocated`` on GPU). On a GPU, run with ``--device cuda --batch 64`` (or more).

    python benchmarks/bench_big.py                      # CPU, bfloat16, device_map="auto", batch 4 (~3 min)
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
import floor as floor_mod  # noqa: E402
from bench_exp1 import machine  # noqa: E402

SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _rss() -> int:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) * 1024
    return 0


def build(folder: Path, dtype: torch.dtype) -> int:
    """Write the random ~1.1B model and SmolLM2's tokenizer to ``folder``; return its parameter count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from introspect_mech.models import export_embedded

    tok_dir = export_embedded("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **SHAPE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    del model
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None, help="cuda, or leave out for device_map='auto' on this machine")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--folder", default=None, help="where to write the model (default: a temporary folder)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_big.json")))
    a = ap.parse_args(argv)

    import introspect_mech as im
    from introspect_mech.continuous import Request, generate_all
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
    from introspect_mech.inject import Injection
    from introspect_mech import runner
    from introspect_mech.runner import auto_batch_size

    res: dict = {"machine": machine(), "config": vars(a), "load_average_before": os.getloadavg()}
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[a.dtype]
    folder = Path(a.folder) if a.folder else Path(tempfile.mkdtemp(prefix="im-big-")) / "model"
    t0 = time.perf_counter()
    if not (folder / "model.safetensors").exists() and not (folder / "model.safetensors.index.json").exists():
        res["parameters"] = build(folder, dtype)
    res["build_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    kw = {"device": a.device} if a.device else {"device_map": "auto"}
    model = im.load_model(str(folder), dtype=a.dtype, **kw)
    res["load_s"] = time.perf_counter() - t0
    res["loaded"] = {"device": str(model.device), "dtype": str(model.dtype), "how": kw,
                     "parameters": sum(p.numel() for p in model.hf.parameters())}
    dev = model.device

    gemm = floor_mod.gemm_table(model, sorted({1, a.batch, 64, 256, 1024}))
    res["gemm_gflops_by_rows"] = gemm

    p = exp1_prompt(model.tokenizer)
    L = model.arch.resolve_layer(0.5)
    g = torch.Generator().manual_seed(0)
    vecs = [torch.randn(model.arch.d_model, generator=g) * 2 for _ in range(a.batch)]
    n = a.new_tokens

    # plain HF batched generate, no intervention (the floor), exactly n tokens
    ids = torch.tensor([p.rendered.input_ids] * a.batch, device=dev)
    with torch.no_grad():
        model.hf.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=2, do_sample=False,
                          pad_token_id=model.tokenizer.pad_token_id)
        t0 = time.perf_counter()
        hf_out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
        t_hf = time.perf_counter() - t0

    # memory: per-slot buffers + a prefill, measured around the continuous loop
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = _rss()
    reqs = [Request(p.rendered, (Injection(v, L, 4.0, p.window),), n) for v in vecs]
    t0 = time.perf_counter()
    stats: dict = {}
    got = generate_all(model, reqs, slots=a.batch, prefixes={}, min_new_tokens=n, stats=stats)
    t_cont = time.perf_counter() - t0
    if dev.type == "cuda":
        used = torch.cuda.max_memory_allocated(dev) - before
    else:
        used = _rss() - before
    clean = generate_all(model, [Request(p.rendered, (), n) for _ in range(a.batch)], slots=a.batch, prefixes={},
                         min_new_tokens=n)
    ref = hf_out[:, ids.shape[1]:].tolist()
    avail = runner.available_bytes(model)
    auto = auto_batch_size(model, len(p.rendered), 100, decode="continuous")
    estimate = runner.per_row_bytes(model, len(p.rendered), n)  # for this run's reply length
    fl = floor_mod.useful_flops(model, [len(p.rendered)] * a.batch, [n] * a.batch, shared_prefix=p.start)
    peak = max(gemm.values())

    def agree(x: list[int], y: list[int]) -> int:
        return next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))

    res.update({
        "trials": a.batch, "new_tokens": n, "useful_gflop": fl / 1e9, "gemm_peak_gflops": peak,
        "plain_hf_generate_s": t_hf, "plain_hf_tokens_per_s": a.batch * n / t_hf,
        "plain_hf_fraction_of_peak": fl / t_hf / 1e9 / peak,
        "continuous_s": t_cont, "continuous_tokens_per_s": a.batch * n / t_cont,
        "continuous_fraction_of_peak": fl / t_cont / 1e9 / peak,
        # greedy tokens of un-injected rows: continuous loop vs plain HF generate (in bfloat16 the two can part
        # after a few tokens of a random-weight model, whose top logits are close: rounding, not a bug)
        "clean_rows_equal_plain_hf": sum(c.tokens == r for c, r in zip(clean, ref)),
        "clean_rows_tokens_equal_before_first_difference": [agree(c.tokens, r) for c, r in zip(clean, ref)],
        "injected_rows_differ_from_clean": sum(c.tokens != r.tokens for c, r in zip(got, clean)),
        "auto_batch_size_for_100_new_tokens": auto, "available_bytes": avail,
        "per_row_estimate_bytes": estimate, "per_row_estimate_bytes_for_100_new_tokens":
            runner.per_row_bytes(model, len(p.rendered), 100),
        "kv_buffer_bytes_per_slot": stats["kv_bytes"] / a.batch,
        "measured_growth_bytes_for_batch": used,
        "estimate_covers_kv_buffers": estimate >= stats["kv_bytes"] / a.batch,
    })
    res["load_average_after"] = os.getloadavg()
    if not a.folder:
        shutil.rmtree(folder.parent, ignore_errors=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
