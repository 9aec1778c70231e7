"""Concordance heads on the Exp 3 (prefill intent) prompt: which heads react when the injected "prior
intention" matches the prefilled word, and do they carry the intent claim?

Setup. The assistant turn is prefilled with a word unrelated to the sentence; the user then asks
"Did you mean to say that, or was it an accident?". Under *matched* injection the prefilled word's
concept vector is added (``strength`` × vector, residual output of ``injection_layer``) on the
sentence tokens, before the prefill; under *none* nothing is added. Every pair runs under both, in
one batched forward with attention weights recorded at every layer (eager attention).

Per (layer, head) and pair, three features:

(a) ``attn_word``: attention mass from the answer position (the last prompt token, where the reply
    starts) to the prefilled-word tokens;
(b) ``attn_sentence``: the same to the sentence tokens;
(c) ``qk_sentence``: a QK contrast from the prefilled-word query positions to the sentence keys.
    Attention weights are ``w_qk = softmax_k(s_qk)``, so ``log w_qk = s_qk − logsumexp_k' s_qk'``:
    the log weight differs from the raw QK logit by a per-query constant. A *difference of means
    over keys of the same query* cancels it, so
    ``mean_{k ∈ sentence} log w_qk − mean_{k ∈ other earlier keys} log w_qk``
    equals the same contrast of raw QK logits (scaled, RoPE'd, with any additive mask) — softmax-
    invariant, derived from the weights alone. "Other earlier keys" are the positions strictly before
    the query that are not sentence tokens (chat-template tokens, the instruction, the BOS/sink,
    earlier word pieces). Averaged over the word's query positions. A weight that is exactly 0 (a
    logit gap above ~87 nats in float32, or a key masked out, e.g. outside a sliding window) has no
    finite log; it is floored at float32's smallest normal number and the floored fraction is
    reported (``floored_fraction``).

Heads at layers ≤ ``injection_layer`` cannot change (the vector enters after their layer), so all
change is downstream. Heads are ranked by the mean over pairs of the paired difference
(matched − none), with a t interval over pairs. A third condition, Exp 3's control — another
concept's vector (``exp.other[i]``), same place and strength — gives each top head's ``other_change``
(other − none) and ``matched_minus_other``: a head that reacts to *any* perturbation of the sentence
is not a concordance head.

Causal test (the ``analyses.circuits`` harness). Metric: mean intent-vs-apology log-odds (log Σ
P(intent replies) − log Σ P(apology replies), teacher-forced, exactly Exp 3's logit measure) under
matched injection — optionally also under none and their difference (``with_none``). Hypothesis:
the top-k heads by the paired change of ``rank_feature`` — by default (c), the QK concordance
contrast the paper's mechanism proposes ("heads whose query at the prefilled word attends to the
earlier intention"); (a) and (b) are options. Interventions ``zero`` (the harness's), ``mean``
(mean head output over the no-injection prompts) and ``patch`` (the head's output from the
no-injection run of the same rows: the mediation test — how much of the injection's effect flows
through these heads). Every intervention acts from the sentence (the injection window) on, so the
tokens before it, the attention sink among them, keep their values.
Null: k random heads, 99 sets by default (minimum attainable p 0.01). By default
(``null="same_layers"``) each is a random other head at the same layer as a hypothesis head (the
harness's sampler): the null matches the hypothesis layer by layer. ``"downstream"`` draws from
all layers after the injection layer (where the hypothesis heads necessarily sit: under ``patch``
an upstream head is an exact no-op and would shrink the null); ``"any"`` from every layer. p is
the harness's permutation p, centred on the null median. The heads are picked on the same pairs by
default; ``held_out`` runs the causal test on the next pairs of the protocol instead (selection on
the test pairs' noise inflates the effect).

Speed. The four replies of a pair share the prompt, so by default they are *packed* into one row:
prompt, then each reply, with a 4D attention mask under which a reply sees the prompt and its own
earlier tokens only, and position ids restarting after the prompt. That is the same computation as
four separate rows (checked against ``PrefillIntent.execute_logits`` in the tests) at about a third
of the tokens. Models with sliding-window layers fall back to separate rows (a custom 4D mask would
bypass their window).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from analyses.circuits import (ComponentStats, Head, Hypothesis, HypothesisResult, _slice_ablation, test_hypothesis,
                               to_ablations)
from introspect_mech.batch import Batch
from introspect_mech.execution import forward
from introspect_mech.inject import Injection, Window, check_strength
from introspect_mech.interventions import HeadAblation
from introspect_mech.prompts import RenderedPrompt, encode_text
from introspect_mech.record import RecordSpec
from introspect_mech.reply_scoring import (PackedBatch, ReplyLayout, build_reply_layout, packing_supported,
                                           score_replies, slice_batch)
from introspect_mech.stats import format_p

FEATURES = ("attn_word", "attn_sentence", "qk_sentence")
FEATURE_TITLES = {
    "attn_word": "(a) attention answer → prefilled word",
    "attn_sentence": "(b) attention answer → sentence",
    "qk_sentence": "(c) QK contrast word query → sentence keys",
}
CONDITIONS = ("none", "matched")
FEATURE_CONDITIONS = ("none", "matched", "other")
INTERVENTIONS = ("zero", "mean", "patch")
NULLS = ("downstream", "any", "same_layers")
QUANTITIES = {"matched": "intent_logodds_matched", "none": "intent_logodds_none",
              "injection_effect": "injection_effect"}
FLOOR = float(torch.finfo(torch.float32).tiny)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PairInput:
    """One Exp 3 prompt with its token windows (unpadded, half-open) and the matching concept vector."""

    prompt: RenderedPrompt
    sentence: tuple[int, int]
    word: tuple[int, int]
    vector: torch.Tensor  # the prefilled word's concept vector at the injection layer
    label: str = ""  # the prefilled word
    other_vector: torch.Tensor | None = None  # control: another concept's vector (Exp 3's random_other_concept)
    other_label: str = ""

    def __post_init__(self) -> None:
        n = len(self.prompt)
        s0, s1 = self.sentence
        w0, w1 = self.word
        if not (0 <= s0 < s1 <= w0 < w1 <= n - 1):
            raise ValueError(f"windows must satisfy sentence < word < last token: sentence {self.sentence}, "
                             f"word {self.word}, prompt length {n}")

    @property
    def answer(self) -> int:
        return len(self.prompt) - 1

    def injection(self, layer: int, strength: float, other: bool = False) -> Injection:
        if other and self.other_vector is None:
            raise ValueError("this pair has no control (other-concept) vector")
        v, lab = (self.other_vector, self.other_label) if other else (self.vector, self.label)
        return Injection(v, layer, strength, Window.span(*self.sentence), label=lab)

    def as_other(self) -> "PairInput":
        """The same pair with the control vector in the matched slot (to score the other-concept condition)."""
        if self.other_vector is None:
            raise ValueError("this pair has no control (other-concept) vector")
        return replace(self, vector=self.other_vector, label=self.other_label, other_vector=None, other_label="")


def exp3_pairs(model: Any, exp: Any, pairs: Sequence[int], injection_layer: int) -> list[PairInput]:
    """``PairInput``s for pairs ``pairs`` of a ``PrefillIntent``; concept vectors at ``injection_layer``
    come from ``exp.vectors`` when they hold that layer, else they are extracted (and cached). The
    control vector is ``exp.other[i]``'s (a different concept word)."""
    vectors = exp.vectors
    if vectors is None or injection_layer not in vectors.layers:
        from introspect_mech.concepts import extract_concept_vectors

        vectors = extract_concept_vectors(model, exp.words, layers=[injection_layer], fmt=exp.cfg.fmt)
    out = []
    for i in pairs:
        rp, sent_w, _q_w, word_span = exp.prompt(model, int(i))
        word, other = exp.prefill[int(i)], exp.other[int(i)]
        out.append(PairInput(rp, (sent_w.start, sent_w.end), tuple(word_span), vectors.get(word, injection_layer),
                             word, vectors.get(other, injection_layer), other))
    return out


def _resolve_items(model: Any, exp: Any, pairs: Sequence[Any], injection_layer: int) -> list[PairInput]:
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs given")
    if all(isinstance(p, PairInput) for p in pairs):
        return pairs
    if exp is None:
        raise ValueError("pass a PrefillIntent as `exp` to use pair indices, or pass PairInput objects")
    return exp3_pairs(model, exp, [int(p) for p in pairs], injection_layer)


# ---------------------------------------------------------------------------------------
# (1) Attention features
# ---------------------------------------------------------------------------------------


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
        """Mean paired change ``a − b`` per (layer, head) with a t interval over pairs (``[L, H]`` arrays)."""
        from introspect_mech.stats import t_quantile

        d = self.diff(feature, a, b).numpy()
        n = d.shape[0]
        mean = d.mean(0)
        if n > 1:
            sd = d.std(0, ddof=1)
            se = sd / math.sqrt(n)
            half = t_quantile(level, n - 1) * se
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), 0.0)
        else:
            sd = np.full_like(mean, np.nan)
            half = np.full_like(mean, np.nan)
            t = np.full_like(mean, np.nan)
        i = self.index(feature)
        return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd, "t": t,
                "mean_none": self.none[i].numpy().mean(0), "mean_matched": self.matched[i].numpy().mean(0)}

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
            d = {"layer": L, "head": h, "mean_change": float(m[L, h]), "ci_low": float(c["ci_low"][L, h]),
                 "ci_high": float(c["ci_high"][L, h]), "t": float(c["t"][L, h]),
                 "mean_none": float(c["mean_none"][L, h]), "mean_matched": float(c["mean_matched"][L, h]),
                 "n_pairs": int(self.none.shape[1])}
            for name, cc in ctrl.items():
                d[name] = {"mean": float(cc["mean"][L, h]), "ci_low": float(cc["ci_low"][L, h]),
                           "ci_high": float(cc["ci_high"][L, h])}
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
    model: Any,
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
    items = _resolve_items(model, exp, pairs, L_inj)
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


# ---------------------------------------------------------------------------------------
# (3) The intent log-odds metric (teacher-forced replies, packed rows)
# ---------------------------------------------------------------------------------------


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

    def __init__(self, model: Any, items: Sequence[PairInput], injection_layer: int, strength: float, *,
                 conditions: Sequence[str] = ("matched",), quantity: str = "matched", packed: bool | None = None,
                 batch_size: int = 16) -> None:
        from introspect_mech.experiments.prefill_intent import APOLOGY_REPLIES, INTENT_REPLIES

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
        self.replies = list(INTENT_REPLIES) + list(APOLOGY_REPLIES)
        self.n_intent = len(INTENT_REPLIES)
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
                               ablations_for=lambda i, j: [_slice_ablation(a, i, j - i) for a in ablations])
        N = len(self.items)
        out = {}
        per_cond = self.rows_per_condition
        for c, cond in enumerate(self.conditions):
            block = scores[c * per_cond:(c + 1) * per_cond]
            items = torch.tensor(lay.item[c * per_cond:(c + 1) * per_cond])
            lp = torch.full((N, len(self.replies)), float("nan"), dtype=torch.float64)
            for r in range(per_cond):
                for k in range(len(self.replies)):
                    if not torch.isnan(block[r, k]):
                        lp[items[r], k] = block[r, k]
            out[cond] = torch.logsumexp(lp[:, :self.n_intent], -1) - torch.logsumexp(lp[:, self.n_intent:], -1)
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


# ---------------------------------------------------------------------------------------
# (3) The causal test
# ---------------------------------------------------------------------------------------


def downstream_null(model: Any, heads: Sequence[Head], injection_layer: int, n_null: int,
                    seed: int) -> list[list[Head]]:
    """``n_null`` sets of ``len(heads)`` distinct random heads at layers after the injection layer,
    excluding the hypothesis heads."""
    arch = model.arch
    pool = [Head(L, h) for L in range(injection_layer + 1, arch.n_layers) for h in range(arch.n_heads)
            if Head(L, h) not in set(heads)]
    if len(pool) < len(heads):
        raise ValueError(f"only {len(pool)} heads after layer {injection_layer} outside the hypothesis; "
                         f"need {len(heads)}")
    rng = random.Random(seed)
    return [sorted(rng.sample(pool, len(heads)), key=lambda x: (x.layer, x.head)) for _ in range(n_null)]


def causal_test(
    model: Any,
    metric: IntentLogOdds,
    heads: Sequence[Head],
    *,
    intervention: str = "zero",
    n_null: int = 20,
    seed: int = 0,
    null: str = "same_layers",
    stats: Any = None,
    baseline: dict[str, torch.Tensor] | None = None,
    start: int = 0,
) -> dict:
    """Intervene on ``heads`` (at positions ``>= start``) vs ``n_null`` random head sets of the same size;
    one result per quantity the metric measures (``HypothesisResult.to_dict()`` each), plus the null
    head sets."""
    if intervention not in INTERVENTIONS:
        raise ValueError(f"intervention must be one of {INTERVENTIONS}")
    if null not in NULLS:
        raise ValueError(f"null must be one of {NULLS}")
    heads = [Head(int(h.layer), int(h.head)) for h in heads]
    if stats is None and intervention == "patch":
        stats = metric.patch_source()
    if stats is None and intervention == "mean":
        stats = ComponentStats(model, [it.prompt for it in metric.items], start=max(start, 1))
    hyp = Hypothesis(f"top-{len(heads)} heads ({intervention})", list(heads), intervention, start=start)
    base_pp = baseline if baseline is not None else metric.per_pair([])
    base = IntentLogOdds.quantities(base_pp)
    metric.history.clear()
    null_kind = {"downstream": "random heads from the layers after the injection layer",
                 "same_layers": "random other heads at the hypothesis heads' layers",
                 "any": "random heads at any layer"}[null]
    if null == "downstream":
        test_hypothesis(model, hyp, metric, stats=stats, baseline=base[metric.quantity],
                        null_sets=downstream_null(model, heads, metric.layer, n_null, seed), null_kind=null_kind)
    else:
        test_hypothesis(model, hyp, metric, n_null=n_null, seed=seed, stats=stats,
                        same_layers=(null == "same_layers"), baseline=base[metric.quantity], null_kind=null_kind)
    hist = list(metric.history)
    results = {}
    for q, name in QUANTITIES.items():
        if q not in base:
            continue
        nulls = [h[q] - base[q] for h in hist[1:]]
        results[name] = HypothesisResult.from_null(hyp.name, base[q], hist[0][q], nulls, len(heads), hyp.describe(),
                                                   null_kind=null_kind).to_dict()
    return {"intervention": intervention, "null": null, "null_kind": null_kind, "start": start,
            "primary": QUANTITIES[metric.quantity], "results": results,
            "null_head_sets": [h["heads"] for h in hist[1:]]}


# ---------------------------------------------------------------------------------------
# (4) Figures
# ---------------------------------------------------------------------------------------


def _domain_end(fig, col: int) -> float:
    return float(fig.layout["xaxis" if col == 1 else f"xaxis{col}"].domain[1])


def heatmap_figure(feats: AttentionFeatures, tops: dict[str, list[dict]], model_name: str = ""):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(feats.features), subplot_titles=[FEATURE_TITLES[f] for f in feats.features],
                        horizontal_spacing=0.1)
    for c, f in enumerate(feats.features, start=1):
        ch = feats.change(f)
        m = ch["mean"]
        lim = float(np.abs(m).max()) or 1.0
        text = [[f"L{L} H{h}<br>change {m[L, h]:+.4f}<br>95% CI [{ch['ci_low'][L, h]:+.4f}, {ch['ci_high'][L, h]:+.4f}]"
                 for h in range(m.shape[1])] for L in range(m.shape[0])]
        fig.add_trace(go.Heatmap(z=m, x=list(range(m.shape[1])), y=list(range(m.shape[0])), zmid=0, zmin=-lim,
                                 zmax=lim, colorscale="RdBu_r", text=text, hoverinfo="text",
                                 colorbar=dict(x=_domain_end(fig, c) + 0.004, xanchor="left", len=0.85, thickness=10,
                                               tickfont=dict(size=9))),
                      row=1, col=c)
        t = tops.get(f, [])
        fig.add_trace(go.Scatter(x=[d["head"] for d in t], y=[d["layer"] for d in t], mode="markers",
                                 marker=dict(symbol="circle-open", size=11, color="black", line=dict(width=2)),
                                 name="top-k", showlegend=(c == 1), hoverinfo="skip"), row=1, col=c)
        fig.add_hline(y=feats.injection_layer + 0.5, line=dict(color="gray", dash="dash", width=1), row=1, col=c)
        fig.update_xaxes(title_text="head", row=1, col=c)
        fig.update_yaxes(range=[-0.5, m.shape[0] - 0.5], row=1, col=c)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=f"Change (matched − none injection) per head, mean over {feats.none.shape[1]} Exp 3 pairs"
                            f" — {model_name}, injection layer {feats.injection_layer} (dashed), "
                            f"strength {feats.strength:g}",
                      title_font_size=13, legend=dict(orientation="h", y=-0.15))
    return fig


def top_heads_figure(tops: dict[str, list[dict]]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    feats = list(tops)
    fig = make_subplots(rows=1, cols=len(feats), subplot_titles=[FEATURE_TITLES[f] for f in feats],
                        horizontal_spacing=0.07)
    for c, f in enumerate(feats, start=1):
        t = tops[f]
        x = [f"L{d['layer']}H{d['head']}" for d in t]
        fig.add_trace(go.Bar(x=x, y=[d["mean_change"] for d in t], marker_color="#1f77b4", name="matched − none",
                             showlegend=(c == 1), legendgroup="m",
                             error_y=dict(type="data", symmetric=False,
                                          array=[d["ci_high"] - d["mean_change"] for d in t],
                                          arrayminus=[d["mean_change"] - d["ci_low"] for d in t])), row=1, col=c)
        if t and "other_change" in t[0]:
            o = [d["other_change"] for d in t]
            fig.add_trace(go.Bar(x=x, y=[d["mean"] for d in o], marker_color="#ff7f0e",
                                 name="other concept − none (control)", showlegend=(c == 1), legendgroup="o",
                                 error_y=dict(type="data", symmetric=False,
                                              array=[d["ci_high"] - d["mean"] for d in o],
                                              arrayminus=[d["mean"] - d["ci_low"] for d in o])), row=1, col=c)
        fig.add_hline(y=0, line=dict(color="gray", width=1), row=1, col=c)
    fig.update_yaxes(title_text="mean change vs no injection, 95% CI", row=1, col=1)
    fig.update_layout(title="Top heads by |mean change (matched − none)| per feature", title_font_size=13,
                      barmode="group", legend=dict(orientation="h", y=-0.2))
    return fig


def causal_figure(causal: dict[str, dict]):
    """One panel per (intervention, quantity), each on its own scale: the null effects (random head sets)
    as jittered points with their box, the top-k heads' effect as a diamond, and the permutation p."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [(interv, name, r) for interv, c in causal.items() for name, r in c["results"].items()]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=[f"{i}: {n}" for i, n, _ in panels],
                        horizontal_spacing=0.06)
    for col, (interv, name, r) in enumerate(panels, start=1):
        fig.add_trace(go.Box(y=r["null_effects"], name="random head sets", boxpoints="all", jitter=0.6, pointpos=0,
                             marker=dict(color="gray", size=6, opacity=0.7), line=dict(color="lightgray"),
                             fillcolor="rgba(0,0,0,0)", showlegend=(col == 1),
                             legendgroup="null",
                             hovertext=[f"random heads: {h}" for h in causal[interv]["null_head_sets"]]),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=["random head sets"], y=[r["effect"]], mode="markers+text", name="top-k heads",
                                 marker=dict(color="#d62728", size=15, symbol="diamond"),
                                 text=[f"p={r['p_value']:.3f} (min {r.get('min_p', float('nan')):.3f})"],
                                 textposition="middle right", showlegend=(col == 1),
                                 legendgroup="hyp"), row=1, col=col)
        fig.add_hline(y=0, line=dict(color="black", width=1), row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    fig.update_annotations(font_size=10)
    fig.update_yaxes(title_text="effect on intent log-odds (nats)", row=1, col=1)
    fig.update_layout(title="Causal test: top-k heads vs random head sets (gray: null)", title_font_size=13,
                      legend=dict(orientation="h", y=-0.08))
    return fig


# ---------------------------------------------------------------------------------------
# (5) run / main
# ---------------------------------------------------------------------------------------


def _save_figures(out: Path, feats: AttentionFeatures, tops: dict, causal: dict, model_name: str, png: bool) -> dict:
    from introspect_mech.plots import save_figure

    figs = {"heatmap": save_figure(heatmap_figure(feats, tops, model_name), out / "concordance_heatmap", png=png,
                                   width=1400, height=560),
            "top_heads": save_figure(top_heads_figure(tops), out / "concordance_top_heads", png=png, width=1300,
                                     height=460)}
    if causal:
        n = sum(len(c["results"]) for c in causal.values())
        figs["causal"] = save_figure(causal_figure(causal), out / "concordance_causal", png=png,
                                     width=max(520, 330 * n), height=520)
    return figs


def redraw(out_dir: str | Path, png: bool = True) -> dict:
    """Redraw the figures of a finished run from its ``concordance_summary.json`` and ``concordance_features.npz``."""
    out = Path(out_dir)
    d = json.loads((out / "concordance_summary.json").read_text())
    z = np.load(out / "concordance_features.npz")
    cfg = d["config"]
    feats = AttentionFeatures(tuple(str(x) for x in z["features"]), torch.from_numpy(z["none"]),
                              torch.from_numpy(z["matched"]), int(cfg["injection_layer"]), float(cfg["strength"]),
                              [str(x) for x in z["labels"]], float(d.get("floored_fraction", 0.0)),
                              torch.from_numpy(z["other"]) if "other" in z.files else None)
    return _save_figures(out, feats, {f: v["top"] for f, v in d["features"].items()}, d["causal"], cfg["model"], png)


def _interval(x: torch.Tensor, level: float = 0.95) -> dict:
    """Mean over pairs with a t interval (``stats.mean_interval``), in this module's key names."""
    from introspect_mech.stats import mean_interval

    d = mean_interval(x.double().tolist(), level)
    return {"mean": d["mean"], "ci_low": d["lo"], "ci_high": d["hi"], "n": d["n"]}


def run(
    model: Any,
    *,
    n_pairs: int = 12,
    injection_layer: int | float | str = 0.5,
    strength: float = 8,
    k: int = 5,
    n_null: int = 99,
    out_dir: str | Path = "figures/concordance",
    png: bool = True,
    interventions: Sequence[str] = ("zero", "patch"),
    null: str = "same_layers",
    rank_feature: str = "qk_sentence",
    with_none: bool = False,
    causal_pairs: int | None = None,
    held_out: bool = False,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """The whole analysis; writes ``concordance_summary.json``, ``concordance_features.npz`` and figures.

    The causal test uses the first ``causal_pairs`` (default all) of the ranking pairs, or with
    ``held_out`` the next ``causal_pairs`` (default ``n_pairs``) pairs of the protocol — sentences
    not used to pick the heads, so the effect is not inflated by selecting on the same pairs' noise."""
    from introspect_mech.experiments.prefill_intent import PrefillIntent, PrefillIntentConfig
    from introspect_mech.store import atomic_write_json

    t0 = time.time()
    if not getattr(model, "attention", False):
        raise ValueError("load the model with attention=True (eager attention) to record attention weights")
    bad = set(interventions) - set(INTERVENTIONS)
    if bad:
        raise ValueError(f"unknown intervention(s) {sorted(bad)}; choose from {INTERVENTIONS}")
    if rank_feature not in FEATURES:
        raise ValueError(f"rank_feature must be one of {FEATURES}")
    if null not in NULLS:
        raise ValueError(f"null must be one of {NULLS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    L = model.arch.resolve_layer(injection_layer)
    s = check_strength(strength)
    n_causal = causal_pairs or n_pairs
    if held_out:
        causal_idx = list(range(n_pairs, n_pairs + n_causal))
    else:
        causal_idx = list(range(min(n_causal, n_pairs)))
    n_total = max(n_pairs, causal_idx[-1] + 1)
    if n_total > 50:
        raise ValueError(f"the protocol has 50 pairs; {n_pairs} ranking + {n_causal} held-out pairs do not fit")
    exp = PrefillIntent(model, PrefillIntentConfig(layers=[L], strengths=[s], n_pairs=n_total, measure="logits"))
    exp.prepare(model)
    all_items = exp3_pairs(model, exp, range(n_total), L)
    items = all_items[:n_pairs]
    timing = {}

    t = time.time()
    feats = head_attention_features(model, None, items, L, s)
    timing["features_s"] = time.time() - t
    tops = {f: feats.top(f, k) for f in FEATURES}
    arrays = {"none": feats.none.numpy(), "matched": feats.matched.numpy()}
    if feats.other is not None:
        arrays["other"] = feats.other.numpy()
    np.savez_compressed(out / "concordance_features.npz", features=np.array(FEATURES), labels=np.array(feats.labels),
                        **arrays)

    t = time.time()
    c_items = [all_items[i] for i in causal_idx]
    conds = ("matched", "none") if with_none else ("matched",)
    metric = IntentLogOdds(model, c_items, L, s, conditions=conds, quantity="matched", batch_size=batch_size)
    # unablated context: intent log-odds with and without the injection (always both conditions)
    ctx_metric = IntentLogOdds(model, c_items, L, s, conditions=CONDITIONS, quantity="matched",
                               batch_size=batch_size)
    ctx = ctx_metric.per_pair([])
    baseline = {c: ctx[c] for c in conds}
    other_items = [it.as_other() for it in c_items if it.other_vector is not None]
    ctx_other = None
    if len(other_items) == len(c_items):  # Exp 3's control: another concept's vector, same place and strength
        ctx_other = IntentLogOdds(model, other_items, L, s, conditions=("matched",), batch_size=batch_size).per_pair([])

    hyp_heads = [Head(d["layer"], d["head"]) for d in tops[rank_feature]]
    # every pair shares the prompt up to the sentence, so this is the sentence's first token in every row
    start = min(it.sentence[0] for it in c_items)
    causal = {}
    for interv in interventions:
        causal[interv] = causal_test(model, metric, hyp_heads, intervention=interv, n_null=n_null, seed=seed,
                                     null=null, baseline=baseline, start=start)
    timing["causal_s"] = time.time() - t

    summary = {
        "config": {"model": model.name, "fingerprint": model.fingerprint, "n_pairs": n_pairs,
                   "injection_layer": L, "strength": s, "k": k, "n_null": n_null, "null": null,
                   "interventions": list(interventions), "rank_feature": rank_feature,
                   "rank_feature_title": FEATURE_TITLES[rank_feature], "ablation_start": start,
                   "min_attainable_p": 1 / (1 + n_null), "with_none": with_none,
                   "causal_pairs": len(c_items), "causal_pair_indices": causal_idx, "held_out": held_out,
                   "seed": seed, "packed_replies": metric.packed,
                   "answer_position": "last prompt token (the start of the reply)",
                   "system_prompt": all_items[0].prompt.system,
                   "n_layers": model.arch.n_layers, "n_heads": model.arch.n_heads,
                   "pairs": [{"sentence": exp.sentences[i], "prefilled_word": exp.prefill[i],
                              "other_word": exp.other[i]} for i in range(n_total)]},
        "features": {f: {"title": FEATURE_TITLES[f], "top": tops[f]} for f in FEATURES},
        "floored_fraction": feats.floored_fraction,
        "behaviour": {"intent_logodds_none": _interval(ctx["none"]),
                      "intent_logodds_matched": _interval(ctx["matched"]),
                      "injection_effect": _interval(ctx["matched"] - ctx["none"]),
                      **({"intent_logodds_other_concept": _interval(ctx_other["matched"]),
                          "injection_effect_other_concept": _interval(ctx_other["matched"] - ctx["none"]),
                          "matched_minus_other_concept": _interval(ctx["matched"] - ctx_other["matched"])}
                         if ctx_other is not None else {}),
                      "per_pair": {**{c: v.tolist() for c, v in ctx.items()},
                                   **({"other_concept": ctx_other["matched"].tolist()}
                                      if ctx_other is not None else {})}},
        "hypothesis_heads": [[h.layer, h.head] for h in hyp_heads],
        "causal": causal,
    }
    figs = _save_figures(out, feats, tops, causal, model.name, png)
    timing["total_s"] = time.time() - t0
    summary["figures"] = figs
    summary["timing"] = timing
    summary["seconds"] = timing["total_s"]
    atomic_write_json(out / "concordance_summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="introspect-mech analyze concordance", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-pairs", type=int, default=12)
    ap.add_argument("--layer", default="0.5", help="injection layer (index or depth fraction)")
    ap.add_argument("--strength", type=float, default=8)
    ap.add_argument("--k", type=int, default=5, help="heads in the hypothesis and per-feature top list")
    ap.add_argument("--n-null", type=int, default=99,
                    help="random head sets in the null distribution (minimum attainable p = 1/(1+n))")
    ap.add_argument("--interventions", default="zero,patch", help=f"comma list of {', '.join(INTERVENTIONS)}")
    ap.add_argument("--null", default="same_layers", choices=NULLS,
                    help="where null heads come from: the hypothesis heads' layers (default), layers after the "
                         "injection, or any layer")
    ap.add_argument("--rank-feature", default="qk_sentence", choices=FEATURES,
                    help="the feature whose top-k heads form the causal hypothesis (default: the QK concordance "
                         "contrast, the paper's proposed mechanism)")
    ap.add_argument("--with-none", action="store_true",
                    help="also score the no-injection rows under every ablation (injection effect; twice the cost)")
    ap.add_argument("--causal-pairs", type=int, default=None,
                    help="pairs used by the causal test (default: all ranking pairs, or n-pairs with --held-out)")
    ap.add_argument("--held-out", action="store_true",
                    help="run the causal test on the next pairs of the protocol, not the ones that ranked the heads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    ap.add_argument("--out", default="figures/concordance")
    ap.add_argument("--no-png", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from introspect_mech.models import load_model

    model = load_model(a.model, attention=True)
    layer = model.arch.resolve_layer(a.layer)
    s = run(model, n_pairs=a.n_pairs, injection_layer=layer, strength=a.strength, k=a.k, n_null=a.n_null,
            out_dir=a.out, png=not a.no_png, interventions=[x for x in a.interventions.split(",") if x],
            null=a.null, rank_feature=a.rank_feature, with_none=a.with_none, causal_pairs=a.causal_pairs,
            held_out=a.held_out, seed=a.seed, batch_size=a.batch_size)
    b = s["behaviour"]
    ie = b["injection_effect"]
    print(f"injection layer {s['config']['injection_layer']}, strength {a.strength:g}: intent log-odds "
          f"none {b['intent_logodds_none']['mean']:+.3f}, matched {b['intent_logodds_matched']['mean']:+.3f}, "
          f"effect {ie['mean']:+.3f} [{ie['ci_low']:+.3f}, {ie['ci_high']:+.3f}]")
    if "injection_effect_other_concept" in b:
        io = b["injection_effect_other_concept"]
        print(f"  other-concept control: effect {io['mean']:+.3f} [{io['ci_low']:+.3f}, {io['ci_high']:+.3f}]")
    for f in FEATURES:
        print(f"{f} (matched − none [95% CI]; other − none):")
        for d in s["features"][f]["top"]:
            o = d.get("other_change")
            print(f"  L{d['layer']}H{d['head']} {d['mean_change']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
                  + (f"; {o['mean']:+.4f} [{o['ci_low']:+.4f}, {o['ci_high']:+.4f}]" if o else ""))
    print(f"hypothesis: top-{a.k} heads by {FEATURE_TITLES[s['config']['rank_feature']]} "
          f"({s['config']['rank_feature']}): {s['hypothesis_heads']}; interventions from token "
          f"{s['config']['ablation_start']} (the sentence) on")
    for interv, c in s["causal"].items():
        for name, r in c["results"].items():
            print(f"{interv} {name}: effect {r['effect']:+.3f} (null: {r['null_kind']}, median {r['null_median']:+.3f}, "
                  f"mean {r['null_mean']:+.3f} ± {r['null_sd']:.3f}; {format_p(r['p_value'], r['min_p'], r['n_null'])})")
    print(f"wrote {a.out}/concordance_summary.json in {s['seconds']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
