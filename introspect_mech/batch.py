"""Left-padded batches of rendered prompts, with the bookkeeping positions need.

We pad ourselves rather than letting the tokenizer do it so that each row's pad count
is known exactly: token position ``p`` of row ``r`` sits in padded column
``pad[r] + p``. Windows are expressed in unpadded positions, so left padding never
shifts an injection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .errors import ConfigError
from .prompts import RenderedPrompt, encode_text


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T] long, left padded
    attention_mask: torch.Tensor  # [B, T] long
    pad: torch.Tensor  # [B] long: number of pad tokens on the left of each row
    lengths: torch.Tensor  # [B] long: real tokens per row
    prompts: tuple[RenderedPrompt, ...]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def inputs(self, device: Any = None) -> dict:
        ids, mask = self.input_ids, self.attention_mask
        if device is not None:
            ids, mask = ids.to(device), mask.to(device)
        return {"input_ids": ids, "attention_mask": mask}

    def positions(self, n_tokens: int, step_total: int) -> torch.Tensor:
        """Unpadded positions ``[B, n_tokens]`` of the last ``n_tokens`` columns of a sequence of
        ``step_total`` padded columns (prefill: ``n_tokens == step_total == width``; a
        KV-cached decode step ``k``: ``n_tokens == 1``, ``step_total == width + k``).
        Pad columns get negative positions and so fall outside every window."""
        cols = torch.arange(step_total - n_tokens, step_total)
        return cols[None, :] - self.pad[:, None]

    def select_rows(self, keep: Sequence[int]) -> "Batch":
        """The sub-batch of rows ``keep`` with the same width, so padded columns keep their meaning."""
        idx = torch.tensor(list(keep), dtype=torch.long)
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.pad[idx], self.lengths[idx],
                     tuple(self.prompts[r] for r in keep))


def make_batch(tokenizer: Any, prompts: Sequence[RenderedPrompt | str]) -> Batch:
    """Left-pad rendered prompts (plain strings are tokenized as raw text) into one batch."""
    if len(prompts) == 0:
        raise ConfigError("cannot build a batch from zero prompts")
    rendered = [p if isinstance(p, RenderedPrompt) else encode_text(tokenizer, str(p)) for p in prompts]
    width = max(len(p) for p in rendered)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0
    ids = torch.full((len(rendered), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rendered), width), dtype=torch.long)
    pads = []
    for r, p in enumerate(rendered):
        n = len(p)
        if n == 0:
            raise ConfigError(f"prompt {r} tokenized to zero tokens")
        ids[r, width - n:] = torch.tensor(p.input_ids, dtype=torch.long)
        mask[r, width - n:] = 1
        pads.append(width - n)
    pad = torch.tensor(pads, dtype=torch.long)
    return Batch(ids, mask, pad, width - pad, tuple(rendered))
