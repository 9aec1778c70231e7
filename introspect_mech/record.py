"""What to record in a pass, and what comes back.

A ``RecordSpec`` asks for any mix of residual streams, attention patterns per head,
per-head outputs (the o_proj input split by head) and cosine similarities of every
chosen layer's residual with a set of vectors. All of it is read in the *same*
forward pass that carries the injections, so a recording always shows the run the
model actually made (residuals are recorded after the injection at their layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .batch import Batch

if TYPE_CHECKING:
    from .models import Model


@dataclass(frozen=True, eq=False)
class RecordSpec:
    """Which activations to record. ``layers=None`` means every layer.

    ``cosine_with`` is ``[K, d]`` (the same K vectors at every layer) or
    ``[K, n_layers, d]`` (a vector per layer, as a ``ConceptVectors.stack()`` gives).
    """

    layers: Any = None
    residual: bool = True
    attention: bool = False
    head_outputs: bool = False
    cosine_with: torch.Tensor | None = None
    logits: bool = True
    last_token_only: bool = False  # keep only the final position (concept-vector extraction): [B, 1, ...]
    # also record the attention block's and the MLP's writes to the residual stream: their outputs on pre-norm
    # blocks, the outputs of their post-norms on Gemma 2/3 and OLMo-2 (``Architecture.attn_write``/``mlp_write``)
    components: bool = False


@dataclass
class Recording:
    """Per-layer tensors, padded like the batch (``[B, T, ...]``; use ``row()`` to strip padding)."""

    batch: Batch
    layers: list[int]
    residual: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, T, d]
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, H, T, T]
    head_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, T, H, head_dim]
    cosine: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, T, K]
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, T, d] attention block's residual write
    mlp_out: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, T, d] MLP's residual write
    logits: torch.Tensor | None = None  # [B, T, vocab]
    doses: list[list[float | None]] = field(default_factory=list)
    ref_norms: dict[int, torch.Tensor] = field(default_factory=dict)  # [B] mean ‖h‖ at injection layers

    def row(self, tensor: torch.Tensor, r: int, token_dim: int = 0) -> torch.Tensor:
        """Strip row ``r``'s left padding from one row's tensor along ``token_dim``.

        A ``last_token_only`` recording has no padding to strip (one position per row)."""
        if tensor.shape[token_dim] != self.batch.width:
            return tensor
        pad = int(self.batch.pad[r])
        return tensor.narrow(token_dim, pad, tensor.shape[token_dim] - pad)

    def residual_at(self, layer: int, r: int) -> torch.Tensor:
        """Row ``r``'s residual at ``layer`` without padding: ``[len_r, d]``."""
        return self.row(self.residual[layer][r], r)

    def cosine_curve(self, r: int, positions: slice | list[int] | None = None) -> torch.Tensor:
        """Mean cosine over the given unpadded positions of row ``r``, per layer: ``[n_layers_recorded, K]``."""
        out = []
        for layer in self.layers:
            c = self.row(self.cosine[layer][r], r)
            c = c if positions is None else c[positions]
            out.append(c.mean(0))
        return torch.stack(out)


def cosine_to(h: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every token's residual ``[B, S, d]`` with ``vectors`` ``[K, d]`` → ``[B, S, K]``."""
    hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    vn = vectors.to(h.dtype) / vectors.to(h.dtype).norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return hn @ vn.T


def head_contributions(model: Model, layer: int, head_inputs: torch.Tensor) -> torch.Tensor:
    """Project per-head outputs ``[B, T, H, hd]`` through o_proj into ``[B, T, H, d]``.

    Summing over heads (plus the o_proj bias, if any) gives the attention module's
    output: on pre-norm blocks, each head's direct contribution to the residual stream.
    On Gemma 2/3 and OLMo-2 the residual write is the post-attention norm *of that sum*
    (``model.arch.block``), which no per-head sum reproduces; these are then contributions
    to the attention output, before the norm.
    """
    proj = model.arch.o_proj(model.hf, layer)
    w = proj.weight
    if type(proj).__name__ == "Conv1D":  # GPT-2 stores [in, out]
        w = w.T
    b, t, h, hd = head_inputs.shape
    with torch.no_grad():
        w_heads = w.reshape(w.shape[0], h, hd)  # [d, H, hd]
        return torch.einsum("bthk,dhk->bthd", head_inputs.to(w.dtype), w_heads)


def o_proj_bias(model: Model, layer: int) -> torch.Tensor | None:
    return getattr(model.arch.o_proj(model.hf, layer), "bias", None)
