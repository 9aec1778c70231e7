"""Per-head attention features of the concordance analysis (attention to the word and the sentence, and a
softmax-invariant QK contrast), per pair and condition, with paired changes and t intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from introspect_mech.execution import forward
from introspect_mech.inject import check_strength
from introspect_mech.record import RecordSpec
from introspect_mech.stats import mean_intervals

from .inputs import CONDITIONS, PairInput, pair_inputs

if TYPE_CHECKING:
    from introspect_mech.models import Model

FEATURES = ("attn_word", "attn_sentence", "qk_sentence")
FEATURE_TITLES = {
    "attn_word": "(a) attention answer → prefilled word",
    "attn_sentence": "(b) attention answer → sentence",
    "qk_sentence": "(c) QK contrast word query → sentence keys",
}
FEATURE_CONDITIONS = ("none", "matched", "other")
FLOOR = float(torch.finfo(torch.float32).tiny)


def qk_contrast(weights: torch.Tensor, key_mask: torch.Tensor, floor: float = FLOOR) -> torch.Tensor:
    """Softmax-invariant QK contrast of one query's attention ``weights [..., K]`` over its earlier keys:
    mean log-weight over keys in ``key_mask [K]`` minus mean log-weight over the other keys.

    Equals the same contrast of the raw logits, because ``log softmax(s) = s − logsumexp(s)`` and the
    constant cancels in a difference of means over one query's keys."""
    key_mask = key_mask.bool()
    if not key_mask.any() or key_mask.all():
        raise ValueError("the contrast needs at least one key inside and one outside the mask")
    lw = weights.double().clamp_min(floor).log()
    return lw[..., key_mask].mean(-1) - lw[..., ~key_mask].mean(-1)


@dataclass
class AttentionFeatures:
    """Per-pair features ``[F, N, n_layers, n_heads]`` under no injection, matched injection and (if the
    pairs carry control vectors) another concept's injection (``other``)."""

    features: tuple[str, ...]
    none: torch.Tensor
    matched: torch.Tensor
    injection_layer: int
    strength: float
    labels: list[str]
    floored_fraction: float = 0.0
    other: torch.Tensor | None = None

    def _cond(self, name: str) -> torch.Tensor:
        t = getattr(self, name) if name in FEATURE_CONDITIONS else None
        if t is None:
            raise ValueError(f"no {name!r} condition recorded")
        return t

    def index(self, feature: str) -> int:
        if feature not in self.features:
            raise ValueError(f"unknown feature {feature!r}; choose from {', '.join(self.features)}")
        return self.features.index(feature)

    def diff(self, feature: str | None = None, a: str = "matched", b: str = "none") -> torch.Tensor:
        """Paired differences ``a − b`` (default matched − none): ``[F, N, L, H]``, or ``[N, L, H]`` for one
        feature."""
        d = self._cond(a) - self._cond(b)
        return d if feature is None else d[self.index(feature)]

    def change(self, feature: str, level: float = 0.95, a: str = "matched", b: str = "none") -> dict[str, np.ndarray]:
        """Mean paired change ``a − b`` per (layer, head) with a t interval over pairs (``[L, H]`` arrays:
        ``stats.mean_intervals``' mean, lo, hi, sd, t, plus the two conditions' means)."""
        c = mean_intervals(self.diff(feature, a, b).numpy(), level)
        i = self.index(feature)
        return {**c, "mean_none": self.none[i].numpy().mean(0), "mean_matched": self.matched[i].numpy().mean(0)}

    def _controls(self, feature: str) -> dict[str, dict[str, np.ndarray]]:
        if self.other is None:
            return {}
        return {"other_change": self.change(feature, a="other", b="none"),
                "matched_minus_other": self.change(feature, a="matched", b="other")}

    def top(self, feature: str, k: int, by: str = "abs") -> list[dict]:
        """The ``k`` heads with the largest mean change (``by``: "abs", "increase" or "decrease")."""
        c = self.change(feature)
        m = c["mean"]
        key = {"abs": np.abs(m), "increase": m, "decrease": -m}[by]
        order = np.argsort(-key.ravel(), kind="stable")[:k]
        H = m.shape[1]
        ctrl = self._controls(feature)
        out = []
        for flat in order:
            L, h = divmod(int(flat), H)
            d = {"layer": L, "head": h, "mean_change": float(m[L, h]), "lo": float(c["lo"][L, h]),
                 "hi": float(c["hi"][L, h]), "t": float(c["t"][L, h]),
                 "mean_none": float(c["mean_none"][L, h]), "mean_matched": float(c["mean_matched"][L, h]),
                 "n_pairs": int(self.none.shape[1])}
            for name, cc in ctrl.items():
                d[name] = {"mean": float(cc["mean"][L, h]), "lo": float(cc["lo"][L, h]),
                           "hi": float(cc["hi"][L, h])}
            out.append(d)
        return out


def _features_of_row(att: torch.Tensor, pad: int, item: PairInput) -> tuple[torch.Tensor, int, int]:
    """Features ``[F, L, H]`` of one row from its attention ``[L, H, T, T]`` (padded columns)."""
    s0, s1 = item.sentence
    w0, w1 = item.word
    last = pad + item.answer
    a = att[:, :, last, pad + w0:pad + w1].sum(-1)
    b = att[:, :, last, pad + s0:pad + s1].sum(-1)
    cs, floored, total = [], 0, 0
    for q in range(w0, w1):
        w = att[:, :, pad + q, pad:pad + q]  # strictly earlier keys
        mask = torch.zeros(q, dtype=torch.bool)
        mask[s0:s1] = True
        cs.append(qk_contrast(w, mask))
        floored += int((w < FLOOR).sum())
        total += w.numel()
    return torch.stack([a.double(), b.double(), torch.stack(cs).mean(0)]), floored, total


def head_attention_features(
    model: Model,
    exp: Any,
    pairs: Sequence[int | PairInput],
    injection_layer: int | float | str,
    strength: float,
    *,
    batch_size: int | None = None,
    control: bool = True,
) -> AttentionFeatures:
    """Features (a)-(c) for every (layer, head) and pair, under none and matched injection — and, with
    ``control`` and pairs that carry an other-concept vector, under that vector's injection too.

    ``pairs``: indices into ``exp`` (a ``PrefillIntent``) or explicit ``PairInput``s (then ``exp`` may be
    None). One batched forward over all rows (or chunks of ``batch_size`` pairs), eager attention
    recorded at every layer; needs a model loaded with ``attention=True``."""
    L_inj = model.arch.resolve_layer(injection_layer)
    s = check_strength(strength)
    items = pair_inputs(exp, pairs, L_inj)
    n_layers = model.arch.n_layers
    step = len(items) if not batch_size else max(1, int(batch_size))
    conds = FEATURE_CONDITIONS if control and all(it.other_vector is not None for it in items) else CONDITIONS
    per = {c: [] for c in conds}
    floored = total = 0
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        prompts = [it.prompt for it in chunk] * len(conds)
        injs = [None if c == "none" else [it.injection(L_inj, s, other=(c == "other"))] for c in conds for it in chunk]
        rec = forward(model, prompts, injs, record=RecordSpec(layers=None, attention=True, residual=False,
                                                              logits=False))
        for r in range(len(prompts)):
            att = torch.stack([rec.attention[L][r] for L in range(n_layers)])  # [L, H, T, T]
            it = chunk[r % len(chunk)]
            f, fl, tot = _features_of_row(att, int(rec.batch.pad[r]), it)
            per[conds[r // len(chunk)]].append(f)
            floored, total = floored + fl, total + tot
    arr = {c: torch.stack(v, 1) for c, v in per.items()}
    return AttentionFeatures(FEATURES, arr["none"], arr["matched"], L_inj, s, [it.label for it in items],
                             floored / max(total, 1), arr.get("other"))
