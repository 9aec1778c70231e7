"""The one code path that edits activations, for traces and for every generation step.

``InterventionPlan`` turns per-row specs (injections, head ablations, residual
patches) into a few dense tensors once per batch; ``apply_*`` then edit a layer's
activation given the *unpadded positions* of the tokens the layer sees at this step
(all prompt tokens at the prefill, one token per KV-cached decode step). Masking by
positions rather than slicing columns is what keeps left-padded rows correct.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import torch

from .arch import Architecture
from .errors import LayerError, StrengthError
from .inject import NO_END, Injection, check_vector


@dataclass(frozen=True, eq=False)
class HeadAblation:
    """Replace the output of ``heads`` at ``layer`` (the o_proj input slice) by zero or a mean.

    ``mean`` is ``[n_heads, head_dim]`` (e.g. ``analyses.circuits.ComponentStats.head_mean``) for mode "mean".
    ``rows=None`` applies to every row of the batch. Only unpadded positions ``>= start`` are edited:
    a causal test should leave the tokens before the intervention window (the attention sink among
    them) as they are.
    """

    layer: int
    heads: tuple[int, ...]
    mode: Literal["zero", "mean", "patch"] = "zero"
    mean: torch.Tensor | None = None  # mode "mean": [n_heads, head_dim]; mode "patch": [B, T, n_heads, head_dim]
    rows: tuple[int, ...] | None = None
    start: int = 0


@dataclass(frozen=True, eq=False)
class MLPAblation:
    """Replace the MLP's write to the residual stream at ``layer`` by zero, a mean ``[d]``, or a per-position
    source ``[B, T, d]`` (patch), at unpadded positions ``>= start``.

    The write is the MLP's output on pre-norm blocks and its post-norm's output on Gemma 2/3 and OLMo-2
    (``Architecture.mlp_write``), the same tensor ``RecordSpec(components=True)`` records as ``mlp_out``,
    so recorded means and patch sources go back where they came from."""

    layer: int
    mode: Literal["zero", "mean", "patch"] = "zero"
    value: torch.Tensor | None = None
    rows: tuple[int, ...] | None = None
    start: int = 0


@dataclass(frozen=True, eq=False)
class DirectionAblation:
    """Edit the residual (layer output) along a unit direction ``u``: project it out, or set its
    projection to ``value`` (patching a clean-run mean), at unpadded positions in ``window``."""

    layer: int
    direction: torch.Tensor
    value: float | None = None
    start: int = 0
    end: int | None = None
    rows: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class ResidualPatch:
    """Overwrite the residual (layer output) of ``row`` at unpadded ``position`` with ``vector``."""

    layer: int
    row: int
    position: int
    vector: torch.Tensor


@dataclass
class _Slot:
    """Up to one injection per row at one layer, stored densely."""

    mode: str
    values: torch.Tensor  # add: [B, d] strength*vector ; scale: [B] factor
    starts: torch.Tensor  # [B]
    ends: torch.Tensor  # [B]
    active: torch.Tensor  # [B] bool
    rows: list[int] = field(default_factory=list)
    entries: list[tuple[int, int]] = field(default_factory=list)  # (row, index of injection within the row)


def _normalize_rows(injections: Sequence[Injection | Sequence[Injection] | None], batch_size: int) -> list[list[Injection]]:
    if len(injections) != batch_size:
        raise ValueError(f"got {len(injections)} injection entries for a batch of {batch_size} rows "
                         "(pass one per row; None for a clean row)")
    rows = []
    for item in injections:
        if item is None:
            rows.append([])
        elif isinstance(item, Injection):
            rows.append([item])
        else:
            rows.append(list(item))
    return rows


class InterventionPlan:
    """Dense per-layer tensors for a batch's injections, ablations and patches."""

    def __init__(
        self,
        arch: Architecture,
        batch_size: int,
        injections: Sequence[Injection | Sequence[Injection] | None] | None = None,
        ablations: Sequence[Any] = (),
        patches: Sequence[ResidualPatch] = (),
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        head_abl = [a for a in ablations if isinstance(a, HeadAblation)]
        other = [a for a in ablations if not isinstance(a, HeadAblation)]
        ablations = head_abl
        self.arch, self.batch_size, self.dtype, self.device = arch, batch_size, dtype, torch.device(device)
        self.rows = _normalize_rows(injections, batch_size) if injections is not None else [[] for _ in range(batch_size)]
        self.prefix_norms: dict[int, tuple[float, float]] = {}  # set when a shared prefix comes from the KV cache
        self.slots: dict[int, list[_Slot]] = defaultdict(list)
        self.resolved_layers: list[list[int]] = []
        for r, injs in enumerate(self.rows):
            lays = []
            for j, inj in enumerate(injs):
                layer = arch.resolve_layer(inj.layer)
                lays.append(layer)
                if inj.mode == "add":
                    check_vector(inj.vector, arch.d_model, what=f"injection vector of row {r}")
                self._place(layer, r, j, inj)
            self.resolved_layers.append(lays)
        self.ablations: dict[int, list[HeadAblation]] = defaultdict(list)
        for ab in ablations:
            layer = arch.resolve_layer(ab.layer)
            for h in ab.heads:
                if not 0 <= h < arch.n_heads:
                    raise LayerError(f"head {h} out of range at layer {layer}: the model has {arch.n_heads} heads")
            if ab.mode == "mean" and (ab.mean is None or tuple(ab.mean.shape) != (arch.n_heads, arch.head_dim)):
                raise ValueError(f"mean ablation needs mean of shape ({arch.n_heads}, {arch.head_dim})")
            if ab.mode == "patch" and (ab.mean is None or ab.mean.ndim != 4):
                raise ValueError("head patching needs source values [B, T, n_heads, head_dim] in `mean`")
            self.ablations[layer].append(ab)
        self.mlp_ablations: dict[int, list[MLPAblation]] = defaultdict(list)
        self.directions: dict[int, list[DirectionAblation]] = defaultdict(list)
        for ab in other:
            layer = arch.resolve_layer(ab.layer)
            if isinstance(ab, MLPAblation):
                self.mlp_ablations[layer].append(ab)
            elif isinstance(ab, DirectionAblation):
                check_vector(ab.direction, arch.d_model, what="ablation direction")
                self.directions[layer].append(ab)
            else:
                raise TypeError(f"unknown ablation spec {type(ab).__name__}")
        self.patches: dict[int, list[ResidualPatch]] = defaultdict(list)
        for p in patches:
            layer = arch.resolve_layer(p.layer)
            check_vector(p.vector, arch.d_model, what="patch vector")
            if not 0 <= p.row < batch_size:
                raise ValueError(f"patch row {p.row} outside the batch of {batch_size}")
            self.patches[layer].append(p)

    def _place(self, layer: int, row: int, j: int, inj: Injection) -> None:
        slot = next((s for s in self.slots[layer] if s.mode == inj.mode and row not in s.rows), None)
        if slot is None:
            b = self.batch_size
            values = (torch.zeros(b, self.arch.d_model, dtype=self.dtype, device=self.device) if inj.mode == "add"
                      else torch.ones(b, dtype=self.dtype, device=self.device))
            slot = _Slot(inj.mode, values, torch.zeros(b, dtype=torch.long, device=self.device),
                         torch.zeros(b, dtype=torch.long, device=self.device),
                         torch.zeros(b, dtype=torch.bool, device=self.device))
            self.slots[layer].append(slot)
        if inj.mode == "add":
            value = inj.strength * inj.vector.to(device=self.device, dtype=self.dtype)
            if not torch.isfinite(value).all():
                raise StrengthError(f"strength {inj.strength:g} × this vector overflows {self.dtype} (the model's "
                                    "dtype); use a smaller strength")
            slot.values[row] = value
        else:
            slot.values[row] = inj.strength
        slot.starts[row] = inj.window.start
        slot.ends[row] = NO_END if inj.window.end is None else inj.window.end
        slot.active[row] = True
        slot.rows.append(row)
        slot.entries.append((row, j))

    def select_rows(self, keep: Sequence[int]) -> "InterventionPlan":
        """The plan for a sub-batch made of rows ``keep`` (in that order), for decode steps only.

        Why: a decode loop that drops finished rows must keep every remaining row's
        injection, window and ablations attached to the right row. Residual patches and
        patch-mode sources act at the prefill only and are not carried over.
        """
        remap = {old: new for new, old in enumerate(keep)}
        if len(remap) != len(keep) or any(not 0 <= r < self.batch_size for r in keep):
            raise ValueError(f"rows to keep must be distinct indices into a batch of {self.batch_size}")
        idx = torch.tensor(list(keep), dtype=torch.long, device=self.device)

        def rows_of(rows: tuple[int, ...] | None) -> tuple[int, ...] | None:
            return None if rows is None else tuple(remap[r] for r in rows if r in remap)

        def kept(specs: list) -> list:
            out = [replace(a, rows=rows_of(a.rows)) for a in specs]
            return [a for a in out if a.rows is None or a.rows]

        new = copy.copy(self)
        new.batch_size = len(keep)
        new.rows = [self.rows[r] for r in keep]
        new.resolved_layers = [self.resolved_layers[r] for r in keep]
        new.slots = defaultdict(list)
        for layer, slots in self.slots.items():
            for s in slots:
                new.slots[layer].append(_Slot(
                    s.mode, s.values[idx], s.starts[idx], s.ends[idx], s.active[idx],
                    [remap[r] for r in s.rows if r in remap],
                    [(remap[r], j) for r, j in s.entries if r in remap]))
        new.ablations = defaultdict(list, {L: v for L, a in self.ablations.items() if (v := kept(a))})
        new.mlp_ablations = defaultdict(list, {L: v for L, a in self.mlp_ablations.items() if (v := kept(a))})
        new.directions = defaultdict(list, {L: v for L, a in self.directions.items() if (v := kept(a))})
        new.patches = defaultdict(list)
        return new

    # ---- which layers does a step touch? -----------------------------------------
    @property
    def edit_layers(self) -> list[int]:
        return sorted(set(self.slots) | set(self.patches) | set(self.directions))

    @property
    def mlp_layers(self) -> list[int]:
        return sorted(self.mlp_ablations)

    @property
    def ablation_layers(self) -> list[int]:
        return sorted(self.ablations)

    # ---- application ---------------------------------------------------------------
    def apply_residual(self, layer: int, h: torch.Tensor, positions: torch.Tensor, prefill: bool) -> torch.Tensor:
        """Return the edited residual ``h`` ``[B, S, d]`` for tokens at unpadded ``positions`` ``[B, S]``."""
        positions = positions.to(h.device)
        for slot in self.slots.get(layer, ()):
            m = (positions >= slot.starts[:, None]) & (positions < slot.ends[:, None]) & slot.active[:, None]
            if slot.mode == "add":
                h = h + m.unsqueeze(-1).to(h.dtype) * slot.values.to(h.dtype)[:, None, :]
            else:
                factor = torch.where(m, slot.values.to(h.dtype)[:, None], torch.ones((), dtype=h.dtype, device=h.device))
                h = h * factor.unsqueeze(-1)
        for d in self.directions.get(layer, ()):
            u = d.direction.to(device=h.device, dtype=h.dtype)
            u = u / u.norm()
            m = (positions >= d.start) & (positions < (NO_END if d.end is None else d.end))
            if d.rows is not None:
                keep = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
                keep[list(d.rows)] = True
                m = m & keep[:, None]
            proj = h @ u  # [B, S]
            target = torch.zeros_like(proj) if d.value is None else torch.full_like(proj, float(d.value))
            h = h + (m.to(h.dtype) * (target - proj)).unsqueeze(-1) * u
        if prefill and layer in self.patches:
            h = h.clone()
            for p in self.patches[layer]:
                cols = (positions[p.row] == p.position).nonzero().flatten()
                if len(cols) != 1:
                    raise ValueError(f"patch position {p.position} is not a token of row {p.row}")
                h[p.row, cols[0]] = p.vector.to(h.dtype)
        return h

    @staticmethod
    def _where(start: int, rows: tuple[int, ...] | None, positions: torch.Tensor | None, shape: tuple[int, int],
               device: torch.device) -> torch.Tensor:
        """``[B, S, 1]`` bool: the (row, token) cells an ablation edits."""
        b, s = shape
        m = torch.ones(b, s, dtype=torch.bool, device=device)
        if start:
            if positions is None:
                raise ValueError("an ablation with start > 0 needs the tokens' positions")
            m = positions.to(device) >= start
        if rows is not None:
            keep = torch.zeros(b, dtype=torch.bool, device=device)
            keep[list(rows)] = True
            m = m & keep[:, None]
        return m[..., None]

    def apply_heads(self, layer: int, x: torch.Tensor, prefill: bool = True,
                    positions: torch.Tensor | None = None) -> torch.Tensor:
        """Edit the o_proj input ``x`` ``[B, S, n_heads*head_dim]`` for head ablations at ``layer``
        (``positions``: the tokens' unpadded positions ``[B, S]``, needed for ablations with ``start``)."""
        hd = self.arch.head_dim
        x = x.clone()
        for ab in self.ablations[layer]:
            where = self._where(ab.start, ab.rows, positions, tuple(x.shape[:2]), x.device)
            for h in ab.heads:
                sl = slice(h * hd, (h + 1) * hd)
                if ab.mode == "zero":
                    new = torch.zeros_like(x[:, :, sl])
                elif ab.mode == "mean":
                    new = ab.mean[h].to(device=x.device, dtype=x.dtype).expand_as(x[:, :, sl])
                elif prefill:  # patch: source values cover the prompt positions (the prefill step)
                    if tuple(ab.mean.shape[:2]) != tuple(x.shape[:2]):
                        raise ValueError(f"head patch source has shape {tuple(ab.mean.shape[:2])} but the batch is "
                                         f"{tuple(x.shape[:2])}: patch values must come from a batch with the same padding")
                    new = ab.mean[:, :, h].to(device=x.device, dtype=x.dtype)
                else:
                    continue
                x[:, :, sl] = torch.where(where, new, x[:, :, sl])
        return x

    def apply_mlp(self, layer: int, y: torch.Tensor, prefill: bool = True,
                  positions: torch.Tensor | None = None) -> torch.Tensor:
        """Edit the MLP write ``y`` ``[B, S, d]`` for MLP ablations at ``layer``."""
        y = y.clone()
        for ab in self.mlp_ablations[layer]:
            where = self._where(ab.start, ab.rows, positions, tuple(y.shape[:2]), y.device)
            if ab.mode == "zero":
                new = torch.zeros_like(y)
            elif ab.mode == "mean":
                new = ab.value.to(device=y.device, dtype=y.dtype).expand_as(y)
            elif prefill:
                if tuple(ab.value.shape[:2]) != tuple(y.shape[:2]):
                    raise ValueError(f"MLP patch source has shape {tuple(ab.value.shape[:2])} but the batch is "
                                     f"{tuple(y.shape[:2])}: patch values must come from a batch with the same padding")
                new = ab.value.to(device=y.device, dtype=y.dtype)
            else:
                continue
            y = torch.where(where, new, y)
        return y

    def dose_norm_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """Tokens over which the reference ‖h‖ is averaged: real prompt tokens except the first
        (its residual norm is an outlier, the attention sink, on most models)."""
        m = positions >= 1
        only_first = m.sum(1) == 0
        return m | (only_first[:, None] & (positions >= 0))

    def doses(self, ref_norms: dict[int, torch.Tensor]) -> list[list[float | None]]:
        """Effective dose of each injection: ``‖strength·v‖ / mean‖h‖`` (add) or ``|factor−1|`` (scale)."""
        out: list[list[float | None]] = [[None] * len(r) for r in self.rows]
        for layer, slots in self.slots.items():
            norms = ref_norms.get(layer)
            for slot in slots:
                for row, j in slot.entries:
                    if slot.mode == "scale":
                        out[row][j] = abs(float(slot.values[row]) - 1.0)
                    elif norms is not None:
                        out[row][j] = float(slot.values[row].double().norm() / norms[row].double())
        return out
