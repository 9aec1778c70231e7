"""Circuit-hypothesis harness: declare components, an intervention and a metric; get an effect size,
a permutation null from random component sets of the same size, and a p-value.

Why a null: in a 30-layer model almost any ablation moves a metric a little. "Ablating
these 3 heads changes the apology log-odds by 0.4" means something only next to what
ablating 3 *random* heads (same kinds, by default at the same layers) does. The
p-value is a Monte-Carlo permutation p centred on the null (``stats.permutation_test``):
(1 + #{|null − m| ≥ |effect − m|}) / (1 + n_null) with m the null median, or a pre-declared
one-sided test; every result carries the minimum attainable p, 1 / (1 + n_null).

The null must be drawn like the hypothesis: random heads for heads, and for a direction
learnt from data (a probe) directions learnt the same way without the signal (shuffled-label
probes, passed as ``null_sets``) or drawn from the residual covariance
(``covariance_directions``), not isotropic random directions, which live mostly in dimensions
the residual barely uses. A hypothesis acts only at positions ``>= start`` (its ``start``):
the injection window or the readout position on, never the attention-sink token, whose
residual norm (~25,000 on SmolLM2) makes any projection there a large, unrelated edit.

Components:
- ``Head(layer, head)``: the head's slice of the o_proj input;
- ``MLP(layer)``: the MLP's write to the residual stream (its output; its post-norm's on Gemma 2/3, OLMo-2);
- ``Direction(layer, vector)``: the residual stream's component along ``vector``.
Interventions: ``zero``; ``mean`` (over ``reference`` prompts); ``patch`` (values from a
counterfactual prompt batch of the same token layout).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch

from introspect_mech.execution import forward
from introspect_mech.interventions import DirectionAblation, HeadAblation, MLPAblation
from introspect_mech.record import RecordSpec
from introspect_mech.stats import Alternative, permutation_test

if TYPE_CHECKING:
    from introspect_mech.models import Model


@dataclass(frozen=True)
class Head:
    layer: int
    head: int


@dataclass(frozen=True)
class MLP:
    layer: int


@dataclass(frozen=True, eq=False)
class Direction:
    layer: int
    vector: torch.Tensor
    label: str = ""


Component = Head | MLP | Direction
Intervention = Literal["zero", "mean", "patch"]


@dataclass
class Hypothesis:
    """A named set of components and how to knock them out."""

    name: str
    components: list[Component]
    intervention: Intervention = "zero"
    start: int = 0  # first (unpadded) token position the interventions touch

    def describe(self) -> dict:
        out = []
        for c in self.components:
            if isinstance(c, Direction):
                out.append({"kind": "direction", "layer": c.layer, "label": c.label})
            else:
                out.append({"kind": type(c).__name__.lower(), **asdict(c)})
        return {"name": self.name, "intervention": self.intervention, "start": self.start, "components": out}


@dataclass
class HypothesisResult:
    name: str
    baseline: float
    intervened: float
    effect: float
    null_effects: list[float]
    p_value: float
    n_components: int
    hypothesis: dict = field(default_factory=dict)
    min_p: float = float("nan")
    null_median: float = float("nan")
    alternative: str = "two-sided"
    null_kind: str = ""

    @property
    def null_mean(self) -> float:
        return sum(self.null_effects) / len(self.null_effects) if self.null_effects else float("nan")

    @property
    def null_sd(self) -> float:
        n = len(self.null_effects)
        if n < 2:
            return float("nan")
        m = self.null_mean
        return (sum((x - m) ** 2 for x in self.null_effects) / (n - 1)) ** 0.5

    @property
    def z_score(self) -> float:
        sd = self.null_sd
        return (self.effect - self.null_mean) / sd if sd and sd == sd and sd > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"name": self.name, "baseline": self.baseline, "intervened": self.intervened, "effect": self.effect,
                "null_effects": self.null_effects, "null_mean": self.null_mean, "null_sd": self.null_sd,
                "z_score": self.z_score, "p_value": self.p_value, "min_p": self.min_p,
                "null_median": self.null_median, "p_alternative": self.alternative,
                "p_method": ("two-sided, centred on the null median: (1 + #{|null - median| >= |effect - median|})"
                             " / (1 + n_null)" if self.alternative == "two-sided" else
                             f"one-sided ({self.alternative}), pre-declared"),
                "null_kind": self.null_kind, "n_components": self.n_components,
                "n_null": len(self.null_effects), "hypothesis": self.hypothesis}

    @classmethod
    def from_null(cls, name: str, baseline: float, value: float, null_effects: Sequence[float], n_components: int,
                  hypothesis: dict, alternative: Alternative = "two-sided", null_kind: str = "") -> "HypothesisResult":
        """The one place a hypothesis result gets its p-value (``stats.permutation_test``)."""
        effect = value - baseline
        t = permutation_test(effect, null_effects, alternative)
        return cls(name, baseline, value, effect, list(null_effects), t.p_value, n_components, hypothesis,
                   t.min_p, t.null_median, alternative, null_kind)


class ComponentStats:
    """Mean or counterfactual values of components, computed once per prompt set (cached per layer).

    Means average the real tokens at positions ``>= start`` (default 1: never the attention-sink
    token, whose activations are outliers), to match hypotheses that act from ``start`` on."""

    def __init__(self, model: Model, prompts: Sequence[Any], injections: Sequence[Any] | None = None,
                 start: int = 1, layers: Sequence[int] | None = None) -> None:
        """``layers``: record only these (default every layer): a recording of every layer's heads, MLP
        writes and residual for a few dozen prompts is gigabytes, and a test touches only some layers."""
        self.model, self.prompts, self.injections = model, list(prompts), injections
        self.start = start
        self.layers = None if layers is None else sorted({int(L) for L in layers})
        self._rec = None

    def _recording(self):
        if self._rec is None:
            self._rec = forward(self.model, self.prompts, self.injections,
                                record=RecordSpec(layers=self.layers, residual=True, head_outputs=True,
                                                  components=True, logits=False))
        return self._rec

    def _real_mask(self) -> torch.Tensor:
        b = self._recording().batch
        return (b.positions(b.width, b.width) >= self.start).float()

    def head_mean(self, layer: int) -> torch.Tensor:
        x = self._recording().head_outputs[layer]  # [B, T, H, hd]
        m = self._real_mask()[..., None, None]
        return (x * m).sum((0, 1)) / m.sum((0, 1))

    def mlp_mean(self, layer: int) -> torch.Tensor:
        y = self._recording().mlp_out[layer]
        m = self._real_mask()[..., None]
        return (y * m).sum((0, 1)) / m.sum((0, 1))

    def direction_mean(self, layer: int, vector: torch.Tensor) -> float:
        h = self._recording().residual[layer]
        u = vector / vector.norm()
        m = self._real_mask()
        return float(((h @ u.to(h.dtype)) * m).sum() / m.sum())

    def head_values(self, layer: int) -> torch.Tensor:
        return self._recording().head_outputs[layer]

    def mlp_values(self, layer: int) -> torch.Tensor:
        return self._recording().mlp_out[layer]


def to_ablations(components: Sequence[Component], intervention: Intervention,
                 stats: ComponentStats | None = None, start: int = 0) -> list:
    """Translate components + an intervention into the core's ablation specs, acting at positions ``>= start``."""
    if intervention in ("mean", "patch") and stats is None:
        raise ValueError(f"intervention {intervention!r} needs reference/counterfactual prompts")
    heads: dict[int, list[int]] = {}
    out: list = []
    for c in components:
        if isinstance(c, Head):
            heads.setdefault(c.layer, []).append(c.head)
        elif isinstance(c, MLP):
            if intervention == "zero":
                out.append(MLPAblation(c.layer, "zero", start=start))
            elif intervention == "mean":
                out.append(MLPAblation(c.layer, "mean", stats.mlp_mean(c.layer), start=start))
            else:
                out.append(MLPAblation(c.layer, "patch", stats.mlp_values(c.layer), start=start))
        elif isinstance(c, Direction):
            if intervention == "zero":
                out.append(DirectionAblation(c.layer, c.vector, start=start))
            elif intervention == "mean":
                out.append(DirectionAblation(c.layer, c.vector, value=stats.direction_mean(c.layer, c.vector),
                                             start=start))
            else:
                raise ValueError("patching a residual direction from a counterfactual: use intervention='mean' with "
                                 "the counterfactual prompts as reference (sets the projection to their mean)")
        else:
            raise TypeError(f"unknown component {c!r}")
    for layer, hs in heads.items():
        if intervention == "zero":
            out.append(HeadAblation(layer, tuple(hs), "zero", start=start))
        elif intervention == "mean":
            out.append(HeadAblation(layer, tuple(hs), "mean", stats.head_mean(layer), start=start))
        else:
            out.append(HeadAblation(layer, tuple(hs), "patch", stats.head_values(layer), start=start))
    return out


@dataclass
class LogitMetric:
    """A forward-only metric: run ``prompts`` (with ``injections``) under the ablations, score each row
    from the logits with ``score(recording) -> [B]`` and average."""

    model: Model
    prompts: Sequence[Any]
    score: Callable[[Any], torch.Tensor]
    injections: Sequence[Any] | None = None
    batch_size: int = 32

    def per_row(self, ablations: Sequence[Any] = ()) -> torch.Tensor:
        patching = any(getattr(a, "mode", None) == "patch" for a in ablations)
        if patching and len(self.prompts) > self.batch_size:
            raise ValueError("patch values are recorded on one batch: use batch_size >= the number of prompts "
                             "(chunks would be re-padded to their own widths)")
        vals = []
        for i in range(0, len(self.prompts), self.batch_size):
            chunk = list(self.prompts[i:i + self.batch_size])
            injs = None if self.injections is None else list(self.injections[i:i + self.batch_size])
            abl = [slice_ablation(a, i, len(chunk)) for a in ablations]
            rec = forward(self.model, chunk, injs, ablations=abl)
            vals.append(self.score(rec).double())
        return torch.cat(vals)

    def __call__(self, ablations: Sequence[Any] = ()) -> float:
        return float(self.per_row(ablations).mean())


def slice_ablation(a: Any, start: int, n: int) -> Any:
    """Patch/mean values carry a batch dimension for patching; cut them to the current chunk."""
    from dataclasses import replace

    if isinstance(a, HeadAblation) and a.mode == "patch":
        return replace(a, mean=a.mean[start:start + n])
    if isinstance(a, MLPAblation) and a.mode == "patch":
        return replace(a, value=a.value[start:start + n])
    return a


def next_token_logodds(pos_ids: Sequence[int], neg_ids: Sequence[int]) -> Callable[[Any], torch.Tensor]:
    """Score = log Σ P(pos tokens) − log Σ P(neg tokens) at each row's last position."""
    def score(rec) -> torch.Tensor:
        logp = torch.log_softmax(rec.logits[:, -1].double(), dim=-1)
        return torch.logsumexp(logp[:, list(pos_ids)], -1) - torch.logsumexp(logp[:, list(neg_ids)], -1)
    return score


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The first tokens of "Yes"/" Yes"/"yes" and of "No"/" No"/"no": the two sides of the Exp 1
    yes-vs-no log-odds (``next_token_logodds``), one definition for every analysis that reads it."""
    def first(words: Sequence[str]) -> list[int]:
        return sorted({tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in words})
    return first(("Yes", " Yes", "yes")), first(("No", " No", "no"))


def random_like_components(model: Model, components: Sequence[Component], rng: random.Random,
                           exclude: set | None = None, same_layers: bool = True) -> list[Component]:
    """A random component set with the same kinds (and, by default, layers) as ``components``."""
    arch = model.arch
    exclude = exclude or set()
    out: list[Component] = []
    taken: set = set()
    for c in components:
        if isinstance(c, Head):
            for _ in range(1000):
                layer = c.layer if same_layers else rng.randrange(arch.n_layers)
                cand = Head(layer, rng.randrange(arch.n_heads))
                if cand not in exclude and cand not in taken:
                    break
            else:
                raise ValueError(f"no other head available at layer {c.layer} for the null distribution")
            taken.add(cand)
            out.append(cand)
        elif isinstance(c, MLP):
            choices = [L for L in range(arch.n_layers) if MLP(L) not in exclude and MLP(L) not in taken]
            cand = MLP(rng.choice(choices))
            taken.add(cand)
            out.append(cand)
        elif isinstance(c, Direction):
            # isotropic: the simplest null, but not one that matches a data-derived direction (module doc)
            g = torch.Generator().manual_seed(rng.randrange(2**31))
            v = torch.randn(c.vector.shape[0], generator=g, dtype=torch.float64).to(c.vector.dtype)
            out.append(Direction(c.layer, v * (c.vector.norm() / v.norm()), "random"))
    return out


def _null_groups(model: Model, components: Sequence[Component], exclude: set,
                 same_layers: bool) -> list[tuple[list[Component], int]]:
    """The choices ``random_like_components`` makes, as (candidates, how many are drawn from them): one group
    per hypothesis layer for same-layer heads (else one over every head), one for MLPs."""
    from collections import Counter

    arch = model.arch
    groups: list[tuple[list[Component], int]] = []
    heads = [c for c in components if isinstance(c, Head)]
    if heads and same_layers:
        for layer, k in sorted(Counter(h.layer for h in heads).items()):
            groups.append(([Head(layer, h) for h in range(arch.n_heads) if Head(layer, h) not in exclude], k))
    elif heads:
        groups.append(([Head(L, h) for L in range(arch.n_layers) for h in range(arch.n_heads)
                        if Head(L, h) not in exclude], len(heads)))
    n_mlps = sum(isinstance(c, MLP) for c in components)
    if n_mlps:
        groups.append(([MLP(L) for L in range(arch.n_layers) if MLP(L) not in exclude], n_mlps))
    return groups


def null_pool_size(model: Model, components: Sequence[Component], exclude: set | None = None,
                   same_layers: bool = True) -> int | None:
    """How many distinct component sets ``random_like_components`` can draw (None: directions, a continuum).

    Why: a single-head hypothesis on a model with 9 heads a layer has only 8 possible nulls at its
    layer; drawing 39 with replacement repeats them, and a p of 1/40 would claim a resolution the
    test does not have (the exact floor is 1/9)."""
    from math import comb, prod

    if any(isinstance(c, Direction) for c in components):
        return None
    return prod(comb(len(cands), k) for cands, k in _null_groups(model, components, exclude or set(), same_layers))


def _all_like(model: Model, components: Sequence[Component], exclude: set, same_layers: bool) -> list[list[Component]]:
    """Every distinct set ``random_like_components`` could draw, in a fixed order (small pools only)."""
    choices = [itertools.combinations(cands, k) for cands, k in _null_groups(model, components, exclude, same_layers)]
    return [[c for part in combo for c in part] for combo in itertools.product(*choices)]


@dataclass
class NullSets:
    """The null's component sets and whether they are every possible one (an exact test)."""

    sets: list[list[Component]]
    exhaustive: bool
    pool_size: int | None  # distinct sets possible (None: directions)

    def describe(self) -> str:
        if self.exhaustive:
            return f"all {len(self.sets)} possible sets (exact; min p = 1/{len(self.sets) + 1})"
        return f"{len(self.sets)} distinct sets" + (f" of {self.pool_size} possible" if self.pool_size else "")


def draw_null_sets(model: Model, components: Sequence[Component], n: int, rng: random.Random,
                   exclude: set | None = None, same_layers: bool = True) -> NullSets:
    """``n`` *distinct* random sets like ``components`` -- or every possible set when there are at most ``n``.

    Draws follow ``random_like_components``'s sequence and skip repeats, so a run whose draws never
    repeated gets the same nulls as before repeats were skipped. Directions are continuous and never repeat."""
    exclude = set(exclude or ())
    size = null_pool_size(model, components, exclude, same_layers)
    if size is not None and size == 0:
        raise ValueError("no component set other than the hypothesis's exists for the null distribution")
    if size is not None and size <= n:
        return NullSets(_all_like(model, components, exclude, same_layers), True, size)
    sets: list[list[Component]] = []
    seen: set[frozenset] = set()
    while len(sets) < n:
        s = random_like_components(model, components, rng, exclude, same_layers)
        key = frozenset(id(c) if isinstance(c, Direction) else c for c in s)
        if key not in seen:
            seen.add(key)
            sets.append(s)
    return NullSets(sets, False, size)


def covariance_directions(x: torch.Tensor, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` unit directions drawn from N(0, Σ) with Σ the covariance of the rows of ``x`` ``[N, d]``:
    random directions that live where the residual actually varies, as a data-derived direction does."""
    x = x.double()
    xc = x - x.mean(0, keepdim=True)
    g = torch.Generator().manual_seed(int(seed))
    # Σ^{1/2} z for z ~ N(0, I) equals Xcᵀ w / √(N−1) with w ~ N(0, I_N): no d×d factorisation needed
    w = torch.randn(n, x.shape[0], generator=g, dtype=torch.float64)
    v = w @ xc / max(x.shape[0] - 1, 1) ** 0.5
    return [r / r.norm() for r in v]


def test_hypothesis(
    model: Model,
    hypothesis: Hypothesis,
    metric: Callable[[Sequence[Any]], float],
    *,
    n_null: int = 20,
    seed: int = 0,
    stats: ComponentStats | None = None,
    same_layers: bool = True,
    baseline: float | None = None,
    null_sets: Sequence[Sequence[Component]] | None = None,
    null_kind: str | None = None,
    alternative: Alternative = "two-sided",
) -> HypothesisResult:
    """Effect of ``hypothesis`` on ``metric`` vs ``n_null`` random component sets of the same size.

    ``null_sets``: the null's component sets, drawn by the caller to match how the hypothesis was
    made (e.g. shuffled-label probe directions); then ``n_null`` is ``len(null_sets)``. Otherwise
    ``draw_null_sets`` draws ``n_null`` distinct ones (random heads / MLPs; isotropic directions), or
    takes every possible set when there are no more, so ``min_p`` is the test's true floor."""
    res = test_hypothesis_metrics(model, hypothesis, lambda abl: {"metric": metric(abl)}, n_null=n_null, seed=seed,
                                  stats=stats, same_layers=same_layers,
                                  baseline=None if baseline is None else {"metric": baseline},
                                  null_sets=null_sets, null_kind=null_kind, alternative=alternative)
    return res["metric"]


def test_hypothesis_metrics(
    model: Model,
    hypothesis: Hypothesis,
    metrics: Callable[[Sequence[Any]], dict[str, float]],
    *,
    n_null: int = 20,
    seed: int = 0,
    stats: ComponentStats | None = None,
    same_layers: bool = True,
    baseline: dict[str, float] | None = None,
    null_sets: Sequence[Sequence[Component]] | None = None,
    null_kind: str | None = None,
    alternative: Alternative = "two-sided",
) -> dict[str, HypothesisResult]:
    """``test_hypothesis`` for several metrics read off the same forward passes (``metrics(ablations)``
    returns ``{name: value}``): one result per name, every one against the same null sets.

    Why: a detection circuit is judged on injected trials, on clean trials and on their difference;
    running the hypothesis and each null set once for all three costs a third of three tests."""
    base = metrics([]) if baseline is None else dict(baseline)
    start = hypothesis.start
    value = metrics(to_ablations(hypothesis.components, hypothesis.intervention, stats, start))
    if null_sets is None:
        rng = random.Random(seed)
        exclude = {c for c in hypothesis.components if not isinstance(c, Direction)}
        drawn = draw_null_sets(model, hypothesis.components, n_null, rng, exclude, same_layers)
        null_sets = drawn.sets
        kinds = {type(c).__name__ for c in hypothesis.components}
        described = null_kind or ("random " + "/".join(sorted(kinds)).lower()
                                  + (" at the same layers" if same_layers else " at any layer")
                                  + (" (isotropic directions)" if "Direction" in kinds else ""))
        null_kind = f"{described}; {drawn.describe()}"
    null_values = [metrics(to_ablations(list(comps), hypothesis.intervention, stats, start)) for comps in null_sets]
    return {k: HypothesisResult.from_null(hypothesis.name, base[k], value[k], [v[k] - base[k] for v in null_values],
                                          len(hypothesis.components), hypothesis.describe(), alternative,
                                          null_kind or "caller-supplied")
            for k in value}


test_hypothesis.__test__ = False  # not a pytest test despite its name
