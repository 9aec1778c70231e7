"""A Llama-family decode step written as the fewest plain torch operators: the speed a decode step could have.

Why: the engine's decode step runs HF's modules under nnsight, with per-row windows, cascade attention
over a shared prefix and a per-trial sampler, and reaches about half of the machine's matrix-multiply
peak. Whether the other half is the engine's to win back, or the CPU's, is a question about the best a
step can do at all. This module answers it with the same model's weights and the same arithmetic — RMSNorm,
q/k/v/o, rotary, attention over the rows' own cached keys and values, SiLU-gated MLP, residuals, the
output embedding — and nothing else: no interventions, no shared-prefix attention, no sampling, no hooks,
no per-module Python. ``MinimalDecoder.compiled`` is the same step through ``torch.compile`` (fused
element-wise kernels), where the machine has a C++ compiler.

It is a *timing* reference, but it computes the model: ``check_against_hf`` compares its logits with HF's
for the same cache (tests/test_bench_floor.py runs it on a tiny Llama). Llama-family blocks only
(pre-norm, rotary, GQA): SmolLM2, the default model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


@dataclass
class _Layer:
    ln1: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    ln2: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


class MinimalDecoder:
    """One decode step for ``rows`` rows, each attending to ``columns`` cached positions of its own plus the new one.

    The key/value buffers are allocated once (``[rows, kv_heads, columns + 1, head_dim]`` per layer); a step
    writes the new token's keys and values into the last column in place, as a slot cache does."""

    def __init__(self, hf: Any, rows: int, columns: int) -> None:
        cfg = hf.config
        if cfg.model_type not in ("llama",) or getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"MinimalDecoder covers Llama-family blocks (got model_type={cfg.model_type!r})")
        self.hf, self.rows, self.columns = hf, int(rows), int(columns)
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.d, self.eps = cfg.hidden_size, float(cfg.rms_norm_eps)
        base = hf.model
        self.layers = [_Layer(b.input_layernorm.weight, b.self_attn.q_proj.weight, b.self_attn.k_proj.weight,
                              b.self_attn.v_proj.weight, b.self_attn.o_proj.weight, b.post_attention_layernorm.weight,
                              b.mlp.gate_proj.weight, b.mlp.up_proj.weight, b.mlp.down_proj.weight)
                       for b in base.layers]
        if any(getattr(b.self_attn.q_proj, "bias", None) is not None for b in base.layers):
            raise ValueError("MinimalDecoder has no projection biases")
        self.norm, self.embed, self.head = base.norm.weight, base.embed_tokens.weight, hf.get_output_embeddings().weight
        self.rotary = base.rotary_emb
        shape = (self.rows, self.kv_heads, self.columns + 1, self.head_dim)
        dtype = self.embed.dtype
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in self.layers]
        self._compiled: Callable | None = None

    def load(self, past: Any) -> None:
        """Copy an HF cache's keys and values (``columns`` positions per row) into the buffers."""
        for i, layer in enumerate(past.layers):
            self.keys[i][:, :, : self.columns] = layer.keys
            self.values[i][:, :, : self.columns] = layer.values

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.d,), w, self.eps)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def body(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of one new token per row (``ids`` ``[rows]``); ``cos``/``sin`` ``[rows, 1, 1, head_dim]``."""
        R, hd, last = self.rows, self.head_dim, self.columns
        h = F.embedding(ids, self.embed)  # [R, d]
        for L, p in enumerate(self.layers):
            x = self._rms(h, p.ln1)
            q = self._rotate(F.linear(x, p.q).view(R, self.heads, 1, hd), cos, sin)
            k = self._rotate(F.linear(x, p.k).view(R, self.kv_heads, 1, hd), cos, sin)
            self.keys[L][:, :, last:] = k
            self.values[L][:, :, last:] = F.linear(x, p.v).view(R, self.kv_heads, 1, hd)
            a = F.scaled_dot_product_attention(q, self.keys[L], self.values[L], enable_gqa=True)
            h = h + F.linear(a.reshape(R, self.heads * hd), p.o)
            x = self._rms(h, p.ln2)
            h = h + F.linear(F.silu(F.linear(x, p.gate)) * F.linear(x, p.up), p.down)
        return F.linear(self._rms(h, self.norm), self.head)

    def rope(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary ``cos``/``sin`` of one position for every row, from the model's own rotary module."""
        pos = torch.full((self.rows, 1), int(position), dtype=torch.long)
        cos, sin = self.rotary(self.embed[:1][None], pos)  # [rows, 1, head_dim]
        return cos[:, None], sin[:, None]

    def step(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """Eager step at ``position`` (the new token's position)."""
        cos, sin = self.rope(position)
        with torch.no_grad():
            return self.body(ids, cos, sin)

    def compiled(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """The same step through ``torch.compile`` (static shapes; compiled on first call)."""
        if self._compiled is None:
            self._compiled = torch.compile(self.body, dynamic=False)
        cos, sin = self.rope(position)
        with torch.no_grad():
            return self._compiled(ids, cos, sin)


def check_against_hf(hf: Any, rows: int = 2, columns: int = 7, seed: int = 0) -> float:
    """Largest |logit difference| between ``MinimalDecoder.step`` and HF's forward for one decode step over the same
    prefilled cache (random token ids)."""
    vocab = hf.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (rows, columns), generator=g)
    new = torch.randint(0, vocab, (rows,), generator=g)
    with torch.no_grad():
        past = hf(prompt, use_cache=True).past_key_values
        dec = MinimalDecoder(hf, rows, columns)
        dec.load(past)  # copied before the reference step appends the new token to the same cache
        ref = hf(new[:, None], cache=past, use_cache=True).logits[:, -1]
        got = dec.step(new, columns)
    return float((got - ref).abs().max())
