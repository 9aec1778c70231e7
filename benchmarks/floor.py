"""The physical limit a generation method is measured against: matrix-multiply throughput at the model's shapes.

A decoder forward pass is, in FLOPs, almost all matrix multiplies by the model's weights:
``2 × (weights of the blocks)`` per token, plus ``2 × (output embedding)`` per token whose logits
are needed (one per generated token: a prefill needs only its last position's logits).
Attention scores, norms, sampling and Python are extra work on top. So the fastest any method
can generate a set of tokens on a machine is those FLOPs divided by the rate at which this
machine multiplies by these very weight matrices — measured here, in the same process and
thread setting as the methods it is compared with, at several row counts (a batch-``B`` decode
step multiplies ``B`` rows; a prefill multiplies ``rows × tokens``).

Used by ``bench_exp1.py`` (every method's achieved FLOP/s as a fraction of it) and
``bench_paper_sweep.py`` (the paper-sized sweep's floor).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import torch


def matmul_weights(model: Any) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The 2-D weights a forward multiplies by: every block's linear layers, and the output embedding."""
    from transformers.pytorch_utils import Conv1D

    hf = model.hf
    head = hf.get_output_embeddings()
    head_w = None if head is None else head.weight
    body = []
    for mod in hf.modules():
        if mod is head:
            continue
        if isinstance(mod, torch.nn.Linear):
            body.append(mod.weight)
        elif isinstance(mod, Conv1D):  # GPT-2 stores [in, out]
            body.append(mod.weight.t())
    return body, head_w


def flops(model: Any, tokens: int, logits: int) -> float:
    """FLOPs of running ``tokens`` tokens through the blocks and ``logits`` of them through the output embedding."""
    body, head = matmul_weights(model)
    n_body = sum(w.numel() for w in body)
    n_head = 0 if head is None else head.numel()
    return 2.0 * (n_body * tokens + n_head * logits)


def gemm_throughput(model: Any, rows: int, repeats: int = 3, min_seconds: float = 0.3) -> float:
    """FLOP/s of multiplying ``rows`` activation rows by every weight of the model in turn (a forward's
    matmuls without the rest), best of ``repeats`` timed rounds of at least ``min_seconds``."""
    body, head = matmul_weights(model)
    weights = body + ([head] if head is not None else [])
    dtype, dev = weights[0].dtype, weights[0].device
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=dtype, device=dev) for w in weights}
    work = 2.0 * rows * sum(w.numel() for w in weights)

    def one() -> None:
        for w in weights:
            torch.nn.functional.linear(xs[w.shape[1]], w)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        one()
        best = float("inf")
        for _ in range(repeats):
            n, t0 = 0, time.perf_counter()
            while True:
                one()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= min_seconds:
                    break
            best = min(best, dt / n)
    return work / best


def gemm_table(model: Any, rows: Iterable[int] = (1, 8, 32, 64, 128, 256, 1024)) -> dict[int, float]:
    """``gemm_throughput`` at each row count (GFLOP/s)."""
    return {int(r): gemm_throughput(model, int(r)) / 1e9 for r in rows}


def useful_flops(model: Any, prompt_lengths: Sequence[int], new_tokens: Sequence[int], shared_prefix: int = 0,
                 n_prefixes: int = 1) -> float:
    """FLOPs a sweep must do at least: each trial's prompt beyond a shared prefix, each shared prefix once,
    every generated token but the last (which is sampled, never fed back), and one set of logits per generated
    token."""
    fed = sum(L - shared_prefix for L in prompt_lengths) + shared_prefix * n_prefixes
    fed += sum(max(0, n - 1) for n in new_tokens)
    return flops(model, fed, sum(new_tokens))


# ---- the memory side: what a sweep must read besides the weights ---------------------------------------------
#
# The matmul floor above treats a sweep as pure matrix multiplies. Decoding also reads, for every generated
# token, the keys and values of every position the token attends to, and writes and reads one row of logits.
# Keys/values of a prefix that rows share can be read once per step for all of them (cascade attention), but a
# row's own positions — its prompt beyond that prefix and its reply so far — are its alone: they are read once
# per layer and step, a memory-bound operation whatever the batch size. On a small CPU these bytes are not
# negligible beside the multiplies, so ``bench_paper_sweep`` states them (``memory_seconds``), and a sweep's time is compared
# with both: the matmul floor (the definition), and matmul + memory for an implementation that runs
# them one after the other (a layer's attention waits for its projections) — a lower bound for such a forward.


def read_bandwidth(megabytes: int = 512, repeats: int = 3) -> float:
    """Bytes/s of reading a float32 buffer far larger than the caches (a sum), best of ``repeats``; same process
    and thread setting as the methods measured."""
    x = torch.ones(megabytes * 1024 * 1024 // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def kv_bytes_per_position(model: Any) -> int:
    """Bytes of one position's keys and values across all layers, in the model's dtype."""
    a = model.arch
    return 2 * a.n_layers * a.n_kv_heads * a.head_dim * torch.empty((), dtype=model.dtype).element_size()


def own_kv_read_bytes(model: Any, own_prompt: Sequence[int], new_tokens: Sequence[int]) -> float:
    """Keys/values a sweep's decode steps must read that no other row shares: trial ``i`` has ``own_prompt[i]``
    prompt positions beyond its shareable prefix; the ``j``-th generated token fed back (``j = 1 .. n-1``)
    attends to those and to the ``j`` reply tokens before it (itself included)."""
    cols = 0
    for own, n in zip(own_prompt, new_tokens):
        k = max(0, n - 1)
        cols += k * own + k * (k + 1) // 2
    return float(cols) * kv_bytes_per_position(model)


def logits_bytes(model: Any, new_tokens: Sequence[int]) -> float:
    """One row of logits written and read once per generated token (the sampler's minimum)."""
    vocab = model.hf.get_output_embeddings().weight.shape[0]
    return 2.0 * 4 * vocab * sum(new_tokens)
