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

Shared prefixes (cascade attention). When many rows start with the same cached prefix (the Exp 1
preamble: 145 of 175 prompt tokens), copying its keys into every row makes every decode step read
them once per row: attention was 26-35 % of a 128-row decode step of SmolLM2 here, memory-bound.
With ``cascade=True`` a row whose prompt starts with a cached prefix of ``P`` tokens stores only
positions ``P..`` (column = position - P), and ``cascade_attention`` attends to the prefix's own
keys once per step for all rows that share it (a matrix product over the rows' queries), then
merges the two parts of the softmax exactly (log-sum-exp). Measured on 128 rows of 275 positions:
attention 185-212 ms per step (SDPA over full rows) vs 107 ms. It replaces the model's SDPA
attention during the loop's own forward passes only (``attention_swap``), for the model types whose
attention takes the standard arguments (``CASCADE_MODEL_TYPES``); other models copy the prefix.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import ConfigError

SUPPORTED_ATTENTION = ("sdpa", "eager")
CASCADE_NAME = "introspect_mech_cascade"
CASCADE_MODEL_TYPES = ("llama", "qwen2", "gemma3_text", "gemma3")
"""Model types whose attention modules call the attention function with the standard arguments (query, key,
value, mask, dropout, scaling[, sliding_window, softcap]) and that the tests check with cascade attention."""
_ACTIVE: list = []  # the SlotCache whose forward is running (cascade_attention reads its groups)


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


def cascade_supported(model: Any) -> bool:
    """Whether ``cascade_attention`` may stand in for this model's attention (SDPA, a listed model type)."""
    cfg = model.hf.config
    return (getattr(cfg, "_attn_implementation", None) == "sdpa" and getattr(cfg, "model_type", None)
            in CASCADE_MODEL_TYPES and not getattr(cfg, "sub_configs", None))


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
        ri, wc = o.row_index, o.write_cols
        if ri.device != kb.device:  # a layer on another device (device_map across GPUs)
            ri, wc = ri.to(kb.device), wc.to(kb.device)
        kb[ri, :, wc] = key_states.transpose(1, 2).to(kb.dtype)
        vb[ri, :, wc] = value_states.transpose(1, 2).to(vb.dtype)
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

    def __init__(self, model: Any, slots: int, capacity: int, cascade: bool = False) -> None:
        self.types, self.windows = layer_windows(model)
        self.impl = check_attention(model)
        if cascade and not cascade_supported(model):
            raise ConfigError("cascade attention needs SDPA attention and a model type in "
                              f"{', '.join(CASCADE_MODEL_TYPES)}")
        super().__init__(layers=[_SlotLayer(self) for _ in self.types])
        self.slots, self.capacity, self.cascade = int(slots), int(capacity), bool(cascade)
        self.dtype, self.device = model.dtype, model.device
        self.rows = slice(0, 0)
        self.row_index = self.write_cols = torch.zeros(0, 0, dtype=torch.long)
        self.kv_len = self.q_len = 0
        self.masks: Any = None
        self.positions = torch.zeros(0, 0, dtype=torch.long)
        self.groups: list[tuple[torch.Tensor, Any]] = []  # cascade: (rows of this forward, PrefixCache)

    # ---- per forward --------------------------------------------------------------------
    def prepare(self, start: int, positions: torch.Tensor, offsets: torch.Tensor | None = None,
                prefixes: list | None = None) -> None:
        """Set where this forward's keys go and build its attention masks.

        ``positions`` ``[n, S]``: unpadded position of each input token (-1 = pad). With cascade
        attention, ``offsets`` ``[n]`` is each row's cached-prefix length (its column 0 is that position)
        and ``prefixes`` each row's ``PrefixCache`` (or None)."""
        n, s = positions.shape
        positions = positions.to(self.device)
        off = torch.zeros(n, dtype=torch.long, device=self.device) if offsets is None else offsets.to(self.device)
        cols = positions - off[:, None]
        if start + n > self.slots or int(cols.max()) >= self.capacity:
            raise ValueError(f"rows {start}..{start + n} / column {int(cols.max())} outside the cache "
                             f"({self.slots} slots × {self.capacity} columns)")
        self.rows = slice(start, start + n)
        self.row_index = torch.arange(n, device=self.device)[:, None].expand(n, s)
        self.write_cols = torch.where(positions >= 0, cols, torch.full_like(cols, self.capacity))
        self.kv_len, self.q_len = int(cols.max()) + 1, s
        self.positions = positions
        masks = {t: self._mask(positions, off, w) for t, w in dict(zip(self.types, self.windows)).items()}
        self.masks = next(iter(masks.values())) if len(masks) == 1 else masks
        self.groups = []
        if self.cascade and prefixes is not None:
            by_id: dict = {}
            for i, pre in enumerate(prefixes):
                if pre is not None:
                    by_id.setdefault(id(pre), (pre, []))[1].append(i)
            self.groups = [(torch.tensor(ix, device=self.device), pre) for pre, ix in by_id.values()]

    def _mask(self, q: torch.Tensor, offsets: torch.Tensor, window: int | None) -> torch.Tensor:
        pos = torch.arange(self.kv_len, device=q.device)[None, None, :] + offsets[:, None, None]  # column -> position
        m = pos <= q[:, :, None]
        if window is not None:
            m &= pos > q[:, :, None] - window
        # a pad query sees column 0 only: a row with nothing visible would give NaN under sdpa
        m |= (q[:, :, None] < 0) & (torch.arange(self.kv_len, device=q.device)[None, None, :] == 0)
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

    def load_prefix(self, start: int, n: int, prefix: Any, offset: int = 0) -> None:
        """Copy a prefix's keys and values (computed once, batch 1) at positions ``offset..`` into slots
        ``start .. start + n`` (column = position - ``offset``; cascade rows store positions from their stem on).

        A sliding-window layer of the prefix's own cache keeps only its last ``window - 1``
        columns; those are all a later token can see, so they are placed right-aligned (the columns
        before them stay hidden by the window)."""
        cache, P = prefix.cache, prefix.length
        self._allocate_like(cache)
        for layer, src in zip(self.layers, cache.layers):
            k, v = src.keys[0], src.values[0]
            held = P - k.shape[-2]  # the first position the prefix's cache holds
            first = max(held, int(offset))  # the first one both held and wanted
            if first >= P:
                continue
            k, v = k[:, first - held:], v[:, first - held:]
            layer.kbuf[start:start + n, :, first - offset:P - offset] = k.to(layer.kbuf.dtype)
            layer.vbuf[start:start + n, :, first - offset:P - offset] = v.to(layer.vbuf.dtype)

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
        """While open, every forward of the decoder stack gets this cache's masks as ``attention_mask``, and
        with cascade attention the model's attention function is ``cascade_attention``."""
        stack = model.hf.base_model

        def hook(module: Any, args: tuple, kwargs: dict) -> tuple:
            kwargs["attention_mask"] = self.masks
            return args, kwargs

        handle = stack.register_forward_pre_hook(hook, with_kwargs=True)
        cfg, old = model.hf.config, model.hf.config._attn_implementation
        if self.cascade:
            _register()
            cfg._attn_implementation = CASCADE_NAME
        _ACTIVE.append(self)
        try:
            yield
        finally:
            _ACTIVE.pop()
            if self.cascade:
                cfg._attn_implementation = old
            handle.remove()


def _register() -> None:
    from transformers import AttentionInterface

    if CASCADE_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(CASCADE_NAME, cascade_attention)


def cascade_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                      softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over [a shared prefix's keys] + [each row's own keys], merged exactly.

    ``key``/``value`` are the rows' own columns (``SlotCache`` views); ``attention_mask`` is this
    cache's per-row mask over them. For each group of rows sharing a cached prefix the prefix part is
    one matrix product of all their queries with the prefix's keys; the two partial softmaxes are
    combined with their maxima and sums (the log-sum-exp identity), so the result is the attention
    over the concatenation, up to float rounding. Written for the decode step, where it runs once per
    layer and step on many rows: masks broadcast instead of being expanded, the softmax is computed in
    place, and a group that holds every row (the usual case, ``stem_lengths``) is read without gathers."""
    cache = _ACTIVE[-1]
    layer = module.layer_idx
    n, hq, s, d = query.shape
    hkv = key.shape[1]
    g = hq // hkv
    scale = scaling if scaling is not None else d ** -0.5
    q = query.reshape(n, hkv, g * s, d)  # query heads of one KV head, then positions
    scores = torch.matmul(q, key.transpose(-1, -2))  # [n, hkv, g*s, W]
    W = scores.shape[-1]
    scores.mul_(scale)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    m = attention_mask if not isinstance(attention_mask, dict) else attention_mask[cache.types[layer]]
    m = m.to(query.device)[:, :, None]  # [n, 1, 1, s, W]: broadcast over the KV and query heads
    s5 = scores.view(n, hkv, g, s, W)
    if m.dtype == torch.bool:
        s5.masked_fill_(~m, float("-inf"))
    else:
        s5.add_(m)
    mx = scores.amax(-1, keepdim=True)
    e = scores.sub_(mx).exp_()
    total = e.sum(-1, keepdim=True)
    out = torch.matmul(e.to(value.dtype), value).float()
    mx, total = mx.float(), total.float()
    window = cache.windows[layer]
    for rows, pre in cache.groups:
        whole = rows.numel() == n  # every row of this forward (rows are distinct indices)
        rows = rows.to(query.device)
        src = pre.cache.layers[layer]
        kp, vp = src.keys[0], src.values[0]  # [hkv, P', d]: the prefix's last P' positions
        first = pre.length - kp.shape[-2]
        ng = n if whole else rows.numel()
        qg = (q if whole else q[rows]).transpose(0, 1).reshape(hkv, ng * g * s, d)
        sp = torch.bmm(qg, kp.transpose(1, 2).to(qg.dtype))  # [hkv, ng*g*s, P']
        sp.mul_(scale)
        if softcap is not None:
            sp = torch.tanh(sp / softcap) * softcap
        if window is not None:  # sliding layer: prefix position p is visible from q iff p > q - window
            qpos = cache.positions.to(query.device)[rows]  # [ng, s]
            ppos = torch.arange(first, pre.length, device=qpos.device)
            vis = ppos[None, None, :] > (qpos[:, :, None] - window)  # [ng, s, P']
            sp.view(hkv, ng, g, s, -1).masked_fill_(~vis[None, :, None], float("-inf"))
            mp = sp.amax(-1, keepdim=True)  # -inf where the window hides the whole prefix
            mp = torch.where(torch.isfinite(mp), mp, torch.zeros_like(mp))
        else:
            mp = sp.amax(-1, keepdim=True)
        ep = sp.sub_(mp).exp_()
        tp = ep.sum(-1, keepdim=True)
        op = torch.bmm(ep.to(vp.dtype), vp).float()
        # back to [ng, hkv, g*s, ...]; a hidden prefix merges with weight exp(-inf) = 0 (its sum tp is 0)
        op = op.view(hkv, ng, g * s, -1).transpose(0, 1)
        mp = mp.view(hkv, ng, g * s, 1).transpose(0, 1).float()
        tp = tp.view(hkv, ng, g * s, 1).transpose(0, 1).float()
        mr, tr, orow = (mx, total, out) if whole else (mx[rows], total[rows], out[rows])
        new = torch.maximum(mr, mp)
        a, b = torch.exp(mr - new), torch.exp(mp - new)
        if whole:
            out = orow.mul_(a).add_(op * b)
            total = tr.mul_(a).add_(tp * b)
            mx = new
        else:
            out[rows] = orow * a + op * b
            total[rows] = tr * a + tp * b
            mx[rows] = new
    out = out.div_(total).to(query.dtype).reshape(n, hq, s, d)
    return out.transpose(1, 2).contiguous(), None
