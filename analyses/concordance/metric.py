"""The causal test's metric: Exp 3's intent-vs-apology log-odds (``experiments.prefill_intent``'s measure),
teacher-forced over packed rows, under matched and/or no injection, with any head ablations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from analyses.circuits import slice_ablation
from introspect_mech.batch import Batch
from introspect_mech.execution import forward
from introspect_mech.experiments.prefill_intent.measure import REPLIES, intent_logodds, reply_logprobs
from introspect_mech.inject import check_strength
from introspect_mech.interventions import HeadAblation
from introspect_mech.record import RecordSpec
from introspect_mech.reply_scoring import (PackedBatch, ReplyLayout, build_reply_layout, packing_supported, score_replies,
                                           slice_batch)

from .inputs import CONDITIONS, PairInput

if TYPE_CHECKING:
    from introspect_mech.models import Model

QUANTITIES = {"matched": "intent_logodds_matched", "none": "intent_logodds_none",
              "injection_effect": "injection_effect"}


class HeadValues:
    """Per-row head outputs of a reference run in a given row layout (``to_ablations``'s patch source)."""

    def __init__(self, values: dict[int, torch.Tensor]) -> None:
        self._values = values

    def head_values(self, layer: int) -> torch.Tensor:
        return self._values[layer]


class IntentLogOdds:
    """Metric for the harness: mean intent-vs-apology log-odds over pairs under matched injection
    (``quantity="matched"``), under none (``"none"``) or their mean difference (``"injection_effect"``,
    needs ``conditions`` to include both). Each call is logged in ``history`` (every quantity, and the
    heads it ablated)."""

    def __init__(self, model: Model, items: Sequence[PairInput], injection_layer: int, strength: float, *,
                 conditions: Sequence[str] = ("matched",), quantity: str = "matched", packed: bool | None = None,
                 batch_size: int = 16) -> None:
        bad = set(conditions) - set(CONDITIONS)
        if bad or not conditions:
            raise ValueError(f"conditions must be a non-empty subset of {CONDITIONS}")
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}")
        if quantity == "injection_effect" and set(conditions) != set(CONDITIONS):
            raise ValueError("the injection effect needs both conditions")
        if quantity in CONDITIONS and quantity not in conditions:
            raise ValueError(f"quantity {quantity!r} needs condition {quantity!r}")
        self.model, self.items = model, list(items)
        self.layer, self.strength = injection_layer, check_strength(strength)
        self.conditions, self.quantity = tuple(conditions), quantity
        self.replies = list(REPLIES)
        self.packed = packing_supported(model) if packed is None else bool(packed)
        self.batch_size = max(1, int(batch_size))
        base = build_reply_layout(model, [it.prompt for it in self.items], self.replies, self.packed)
        self.rows_per_condition = base.batch.size
        # metric rows: one block per condition, each block the same layout
        self.layout = self._tile(base, len(self.conditions))
        self._base = base
        self.history: list[dict] = []

    @staticmethod
    def _tile(lay: ReplyLayout, n: int) -> ReplyLayout:
        b = lay.batch
        cat = lambda t: torch.cat([t] * n, 0)  # noqa: E731
        common = dict(input_ids=cat(b.input_ids), attention_mask=cat(b.attention_mask), pad=cat(b.pad),
                      lengths=cat(b.lengths), prompts=tuple(b.prompts) * n)
        batch = PackedBatch(**common, mask4d=cat(b.mask4d), position_ids=cat(b.position_ids)) \
            if isinstance(b, PackedBatch) else Batch(**common)
        return ReplyLayout(batch, lay.ids * n, lay.segments * n, lay.prompt_len * n, lay.item * n)

    def _injections(self) -> list:
        out = []
        for cond in self.conditions:
            for i in self._base.item:
                out.append([self.items[i].injection(self.layer, self.strength)] if cond == "matched" else None)
        return out

    def per_pair(self, ablations: Sequence[Any] = ()) -> dict[str, torch.Tensor]:
        """Log-odds per pair ``[N]`` for each condition under ``ablations``."""
        lay, injs = self.layout, self._injections()
        scores = score_replies(self.model, lay, injs, len(self.replies), self.batch_size,
                               ablations_for=lambda i, j: [slice_ablation(a, i, j - i) for a in ablations])
        out = {}
        per_cond = self.rows_per_condition
        for c, cond in enumerate(self.conditions):
            block = slice(c * per_cond, (c + 1) * per_cond)
            out[cond] = intent_logodds(reply_logprobs(scores[block], lay.item[block], len(self.items)))
        return out

    @staticmethod
    def quantities(pp: dict[str, torch.Tensor]) -> dict[str, float]:
        q = {k: float(v.mean()) for k, v in pp.items()}
        if "matched" in pp and "none" in pp:
            q["injection_effect"] = float((pp["matched"] - pp["none"]).mean())
        return q

    def __call__(self, ablations: Sequence[Any] = ()) -> float:
        pp = self.per_pair(ablations)
        heads = sorted((a.layer, h) for a in ablations if isinstance(a, HeadAblation) for h in a.heads)
        entry = {"heads": [list(x) for x in heads], **self.quantities(pp),
                 "per_pair": {k: v.tolist() for k, v in pp.items()}}
        self.history.append(entry)
        return entry[self.quantity]

    def patch_source(self) -> HeadValues:
        """Head outputs of the *no-injection* run of the same rows, tiled over the condition blocks:
        patching them into the matched rows removes the injection's effect through those heads
        (and is a no-op on the none rows)."""
        b = self._base.batch
        vals: dict[int, list[torch.Tensor]] = {}
        for i in range(0, b.size, self.batch_size):
            j = min(i + self.batch_size, b.size)
            rec = forward(self.model, slice_batch(b, i, j), None,
                          record=RecordSpec(layers=None, residual=False, head_outputs=True, logits=False))
            for L, v in rec.head_outputs.items():
                vals.setdefault(L, []).append(v)
        n = len(self.conditions)
        return HeadValues({L: torch.cat(v, 0).repeat(n, 1, 1, 1) for L, v in vals.items()})
