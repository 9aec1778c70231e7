"""Per-slot KV buffers for the continuous decode loop: rows of different lengths, no padding, no copies.

Why: HF's ``DynamicCache`` grows by concatenation, so every decode step copies the whole cache
(35 % of a batch-64 decode step of SmolLM2 on this CPU, measured with the torch profiler), and
a left-padded batch cannot take in a new row of another length without re-padding every row.
Here each layer owns preallocated ``[slots, kv_heads, capacity + 1, head_dim]`` buffers, and the
key/value of row ``r``'s token at unpadded position ``p`` is written at column ``p`` of slot ``r``.
A column *is* a position, so windows, rotary positions and sliding-window attention need no
padding bookkeeping, and a finished row's slot is reused by the next trial as it is (stale
columns beyond the new row's length are masked). The last column takes the keys of pad tokens
(prefill groups are left padded); no mask ever shows it.

The attention mask is built here, per row (key column ``c`` is visible from a query at position
``q`` iff ``c <= q``, and ``c > q - window`` on a sliding-window layer), in the format of the
model's attention implementation (boolean for ``sdpa``, additive for ``eager``), one tensor per
layer type. It is handed to the model by a forward pre-hook on the decoder stack
(``mask_hook``): nnsight's input processing splits ``attention_mask`` per row and cannot carry
the per-type dict that models mixing sliding and full layers (Gemma 2/3) take.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import ConfigError

SUPPORTED_ATTENTION = ("sdpa", "eager")


def layer_windows(model: Any) -> tuple[list[str], list[int | None]]:
    """Attention type and sliding window of every decoder layer, as the model's own cache sees them."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    cfg = model.hf.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    types, kwargs = get_layer_types_and_kwargs(cfg)
    odd = sorted(set(types) - {"full_attention", "sliding_attention"})
    if odd:
        raise ConfigError(f"decode='continuous' supports full and sliding-window attention layers; this model has "
                          f"{', '.join(odd)} layers — run it with --decode hf")
    return list(types), [k.get("sliding_window") if t == "sliding_attention" else None for t, k in zip(types, kwargs)]


def check_attention(model: Any) -> str:
    impl = getattr(model.hf.config, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
        raise ConfigError(f"decode='continuous' builds its own attention masks for {' or '.join(SUPPORTED_ATTENTION)} "
                          f"attention; this model uses {impl!r} — load it with the default attention, or run --decode hf")
    return impl


class _SlotLayer(DynamicLayer):
    """One layer's buffers; ``update`` writes the new keys at the owner's columns and returns the visible ones."""

    def __init__(self, owner: "SlotCache") -> None:
        super().__init__()
        self.owner = owner
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None

    def allocate(self, kv_heads: int, k_dim: int, v_dim: int, dtype: torch.dtype, device: Any) -> None:
        o = self.owner
        # zeros, not empty: an additive (eager) mask gives masked columns weight exactly 0, and 0 * NaN is NaN
        self.kbuf = torch.zeros(o.slots, kv_heads, o.capacity + 1, k_dim, dtype=dtype, device=device)
        self.vbuf = torch.zeros(o.slots, kv_heads, o.capacity + 1, v_dim, dtype=dtype, device=device)
        self.device, self.is_initialized = device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        o = self.owner
        if self.kbuf is None:
            self.allocate(key_states.shape[1], key_states.shape[-1], value_states.shape[-1], key_states.dtype,
                          key_states.device)
        kb, vb = self.kbuf[o.rows], self.vbuf[o.rows]
        kb[o.row_index, :, o.write_cols] = key_states.transpose(1, 2).to(kb.dtype)
        vb[o.row_index, :, o.write_cols] = value_states.transpose(1, 2).to(vb.dtype)
        self.keys, self.values = kb[:, :, : o.kv_len], vb[:, :, : o.kv_len]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.owner.kv_len - self.owner.q_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.kv_len, 0


class SlotCache(Cache):
    """``slots`` rows of up to ``capacity`` tokens each; see the module docstring.

    Before each forward the loop calls ``prepare(start, positions)``: the forward runs on slots
    ``start .. start + n`` and its input token ``(i, j)`` sits at unpadded position
    ``positions[i, j]`` (``-1`` for a pad token). Rows being decoded are kept in the first slots,
    so a decode step sees a view of the buffers, never a gathered copy.
    """

    def __init__(self, model: Any, slots: int, capacity: int) -> None:
        self.types, self.windows = layer_windows(model)
        self.impl = check_attention(model)
        super().__init__(layers=[_SlotLayer(self) for _ in self.types])
        self.slots, self.capacity = int(slots), int(capacity)
        self.dtype, self.device = model.dtype, model.device
        self.rows = slice(0, 0)
        self.row_index = self.write_cols = torch.zeros(0, 0, dtype=torch.long)
        self.kv_len = self.q_len = 0
        self.masks: Any = None

    # ---- per forward --------------------------------------------------------------------
    def prepare(self, start: int, positions: torch.Tensor) -> None:
        """Set where this forward's keys go and build its attention masks (``positions`` ``[n, S]``, -1 = pad)."""
        n, s = positions.shape
        if start + n > self.slots or int(positions.max()) >= self.capacity:
            raise ValueError(f"rows {start}..{start + n} / position {int(positions.max())} outside the cache "
                             f"({self.slots} slots × {self.capacity} positions)")
        positions = positions.to(self.device)
        self.rows = slice(start, start + n)
        self.row_index = torch.arange(n, device=self.device)[:, None].expand(n, s)
        self.write_cols = torch.where(positions >= 0, positions, torch.full_like(positions, self.capacity))
        self.kv_len, self.q_len = int(positions.max()) + 1, s
        masks = {t: self._mask(positions, w) for t, w in dict(zip(self.types, self.windows)).items()}
        self.masks = next(iter(masks.values())) if len(masks) == 1 else masks

    def _mask(self, q: torch.Tensor, window: int | None) -> torch.Tensor:
        cols = torch.arange(self.kv_len, device=q.device)
        m = cols[None, None, :] <= q[:, :, None]
        if window is not None:
            m &= cols[None, None, :] > q[:, :, None] - window
        # a pad query sees column 0 only: a row with nothing visible would give NaN under sdpa
        m |= (q[:, :, None] < 0) & (cols[None, None, :] == 0)
        m = m[:, None]
        if self.impl == "eager":  # additive, as HF builds it for eager attention
            zero = torch.zeros((), dtype=self.dtype, device=q.device)
            m = torch.where(m, zero, torch.finfo(self.dtype).min)
        return m

    # ---- row bookkeeping ----------------------------------------------------------------
    def _allocate_like(self, prefix_cache: Any) -> None:
        for layer, src in zip(self.layers, prefix_cache.layers):
            if layer.kbuf is None:
                layer.allocate(src.keys.shape[1], src.keys.shape[-1], src.values.shape[-1], src.keys.dtype,
                               src.keys.device)

    def load_prefix(self, start: int, n: int, prefix: Any) -> None:
        """Copy a prefix's keys and values (computed once, batch 1) into slots ``start .. start + n``.

        A sliding-window layer of the prefix's own cache keeps only its last ``window - 1``
        columns; those are all a later token can see, so they are placed right-aligned."""
        cache, P = prefix.cache, prefix.length
        self._allocate_like(cache)
        for layer, src in zip(self.layers, cache.layers):
            k, v = src.keys[0], src.values[0]
            w = k.shape[-2]
            layer.kbuf[start:start + n, :, P - w:P] = k.to(layer.kbuf.dtype)
            layer.vbuf[start:start + n, :, P - w:P] = v.to(layer.vbuf.dtype)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` columns of slot ``src`` into slot ``dst`` (keeps running rows contiguous)."""
        for layer in self.layers:
            if layer.kbuf is not None:
                layer.kbuf[dst, :, :length] = layer.kbuf[src, :, :length]
                layer.vbuf[dst, :, :length] = layer.vbuf[src, :, :length]

    def buffer_bytes(self) -> int:
        """Bytes held by the key/value buffers (allocated on the first forward)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.kbuf, layer.vbuf)
                   if t is not None)

    @contextmanager
    def mask_hook(self, model: Any) -> Iterator[None]:
        """While open, every forward of the decoder stack gets this cache's masks as ``attention_mask``."""
        stack = model.hf.base_model

        def hook(module: Any, args: tuple, kwargs: dict) -> tuple:
            kwargs["attention_mask"] = self.masks
            return args, kwargs

        handle = stack.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
