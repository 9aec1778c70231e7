"""Teacher-forced forward passes with injections, for training: the experiments' intervention, with gradients.

Why not the nnsight trace: ``execution.forward`` runs under ``torch.no_grad`` and nnsight's
graph capture adds nothing a loss needs. Here a plain forward hook on each injection layer
calls ``InterventionPlan.apply_residual`` — the *same* object and method every experiment
uses to edit activations — with the tokens' unpadded positions, so the training rows see
exactly the intervention the evaluation applies (tested: logits equal ``execution.forward``'s).

Why a shared prefix: every row of a training batch starts with the same prompt up to the
injection window (the introduction and "Ok, let's get started."), ~145 of ~190 tokens on
SmolLM2. That prefix is run once, its KV cache repeated over the batch's rows, and only the
rows' suffixes are run per row. Gradients flow through the shared part into the adapter, so
the loss and its gradient are those of the full forward pass (tested), at a fraction of the
cost. Rows are right-padded after the prefix, so every row's positions stay contiguous.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..inject import Injection
from ..interventions import InterventionPlan
from ..step import layer_hidden

if TYPE_CHECKING:
    from ..models import Model

IGNORE = -100


@dataclass
class ForcedBatch:
    """Token ids of a batch split into the shared prefix and right-padded per-row suffixes.

    ``labels[b, j]`` is the token that suffix position ``j`` of row ``b`` must predict
    (the next token), or ``IGNORE``; only reply tokens (and the end-of-turn token) are targets.
    """

    prefix: torch.Tensor  # [P] long
    suffix: torch.Tensor  # [B, S] long, right padded
    mask: torch.Tensor  # [B, S] long, 1 for real tokens
    labels: torch.Tensor  # [B, S] long
    injections: list[Injection | None]

    @property
    def size(self) -> int:
        return int(self.suffix.shape[0])

    @property
    def prefix_len(self) -> int:
        return int(self.prefix.shape[0])

    def full(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same batch without the prefix split: ids, mask and labels ``[B, P+S]``."""
        B, P = self.size, self.prefix_len
        ids = torch.cat([self.prefix.expand(B, P), self.suffix], dim=1)
        mask = torch.cat([torch.ones(B, P, dtype=self.mask.dtype), self.mask], dim=1)
        labels = torch.cat([torch.full((B, P), IGNORE, dtype=self.labels.dtype), self.labels], dim=1)
        return ids, mask, labels


def make_forced_batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], injections: Sequence[Injection | None],
                      pad_id: int, prefix_len: int | None = None) -> ForcedBatch:
    """Build a batch from ``(prompt_ids, reply_ids)`` rows (the reply includes the end-of-turn token).

    ``prefix_len``: how many leading tokens every row shares and no injection touches; by
    default the longest common prefix, cut back to the earliest injection start.
    """
    if not rows:
        raise ConfigError("a training batch needs at least one row")
    if len(injections) != len(rows):
        raise ConfigError(f"{len(injections)} injections for {len(rows)} rows")
    seqs = [list(p) + list(r) for p, r in rows]
    if prefix_len is None:
        prefix_len = min(len(s) for s in seqs) - 1
        first = seqs[0]
        for s in seqs[1:]:
            k = next((i for i, (a, b) in enumerate(zip(first, s)) if a != b), prefix_len)
            prefix_len = min(prefix_len, k)
        starts = [inj.window.start for inj in injections if inj is not None]
        prefix_len = min([prefix_len] + starts)
    P = int(prefix_len)
    if P < 0 or any(len(s) <= P for s in seqs) or any(s[:P] != seqs[0][:P] for s in seqs):
        raise ConfigError(f"rows do not share a prefix of {P} tokens followed by at least one more token")
    for inj in injections:
        if inj is not None and inj.window.start < P:
            raise ConfigError(f"an injection starts at token {inj.window.start}, inside the shared prefix of {P} "
                              "tokens; shorten the prefix")
    S = max(len(s) for s in seqs) - P
    B = len(rows)
    suffix = torch.full((B, S), int(pad_id), dtype=torch.long)
    mask = torch.zeros((B, S), dtype=torch.long)
    labels = torch.full((B, S), IGNORE, dtype=torch.long)
    for b, ((prompt, reply), s) in enumerate(zip(rows, seqs)):
        tail = s[P:]
        suffix[b, :len(tail)] = torch.tensor(tail)
        mask[b, :len(tail)] = 1
        n_prompt = len(prompt) - P  # suffix index of the first reply token
        if n_prompt < 1:
            raise ConfigError("the shared prefix reaches into a reply; the prefix must end inside the prompt")
        for j in range(len(reply)):
            labels[b, n_prompt - 1 + j] = int(reply[j])
    return ForcedBatch(torch.tensor(seqs[0][:P], dtype=torch.long), suffix, mask, labels, list(injections))


@contextmanager
def injection_hooks(model: Model, plan: InterventionPlan, positions: torch.Tensor) -> Iterator[None]:
    """Forward hooks that apply ``plan`` at its injection layers, for tokens at unpadded ``positions`` ``[B, T]``.

    The edit is ``plan.apply_residual`` — the code ``execution`` runs inside nnsight traces.
    """
    handles = []

    def make(layer: int):
        def hook(_module, _inputs, output):
            h, is_tuple = layer_hidden(output)
            h2 = plan.apply_residual(layer, h, positions.to(h.device), prefill=True)
            return (h2,) + tuple(output[1:]) if is_tuple else h2
        return hook

    try:
        for L in plan.edit_layers:
            handles.append(model.arch.layer(model.hf, L).register_forward_hook(make(L)))
        yield
    finally:
        for h in handles:
            h.remove()


def _plan(model: Model, batch: ForcedBatch) -> InterventionPlan:
    return InterventionPlan(model.arch, batch.size, batch.injections, dtype=model.dtype, device=model.device)


def _head(model: Model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's LM head on final hidden states (after its final norm), with its logit soft-capping if any."""
    logits = model.hf.get_output_embeddings()(hidden)
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _hidden(model: Model, batch: ForcedBatch, use_prefix: bool) -> torch.Tensor:
    """Final hidden states ``[B, S, d]`` of the suffix columns, with the batch's injections applied.

    ``use_prefix=True`` runs the shared prefix once and reuses its KV cache; ``False`` runs
    every row in full. Both apply the injections through ``InterventionPlan``."""
    body, dev = model.hf.base_model, model.device
    B, P, S = batch.size, batch.prefix_len, batch.suffix.shape[1]
    plan = _plan(model, batch)
    if use_prefix and P > 0:
        cache = body(input_ids=batch.prefix[None].to(dev), use_cache=True)["cache"]  # transformers 5 name
        cache.batch_repeat_interleave(B)
        positions = torch.arange(P, P + S)[None].expand(B, S)
        attn = torch.cat([torch.ones(B, P, dtype=batch.mask.dtype), batch.mask], dim=1).to(dev)
        with injection_hooks(model, plan, positions):
            out = body(input_ids=batch.suffix.to(dev), attention_mask=attn, position_ids=positions.to(dev),
                       cache=cache, use_cache=True)
        return out.last_hidden_state
    ids, mask, _ = batch.full()
    positions = torch.arange(P + S)[None].expand(B, P + S)
    with injection_hooks(model, plan, positions):
        out = body(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev), use_cache=False)
    return out.last_hidden_state[:, P:]


def forced_logits(model: Model, batch: ForcedBatch, *, use_prefix: bool = True) -> torch.Tensor:
    """Logits ``[B, S, V]`` of every suffix column (for checks; training computes only the targets')."""
    return _head(model, _hidden(model, batch, use_prefix))


def forced_loss(model: Model, batch: ForcedBatch, *, use_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over all target tokens, and each row's mean (for per-kind loss curves).

    The LM head (576 × 49k on SmolLM2) runs on the target positions only."""
    hidden = _hidden(model, batch, use_prefix)
    labels = batch.labels.to(hidden.device)
    where = labels != IGNORE
    if not bool(where.any()):
        raise ConfigError("the batch has no target tokens")
    logits = _head(model, hidden[where])
    tok = F.cross_entropy(logits.float(), labels[where], reduction="none")
    rows = where.nonzero()[:, 0]
    per_row = torch.zeros(batch.size, dtype=tok.dtype, device=tok.device).index_add_(0, rows, tok.detach())
    per_row = per_row / where.sum(1).clamp_min(1)
    return tok.mean(), per_row
