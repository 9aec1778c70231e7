"""Circuit tests on the Exp 1 detection decision: do these heads / MLPs carry "Yes, I detect it"?

A declared hypothesis ("the MLPs of layers 17-18", "every head of layers 17-18", "heads 17.3 and
18.5") is knocked out (``zero`` / ``mean`` / ``patch``, the harness's interventions, from the
injection window on, never the attention-sink token) while the model reads the Exp 1 question:

- ``injected``: the paper's held-out concept words, each injected at (layer, strength) from the
  "\\n\\n" before "Trial N" on (the experiments' own window and injection path);
- ``clean``: the same prompts without injection (both prompt variants, several trial numbers);
- ``discrimination``: injected − clean, the quantity detection needs.

Metric: log P(Yes) − log P(No) at the answer position (first tokens of "Yes"/"No" in their
spellings, ``circuits.yes_no_token_ids``), averaged over rows. Effect = metric under the
knock-out − metric intact, against a permutation null of component sets drawn like the hypothesis:

- for a whole-layer hypothesis (``mlp:17,18``, ``heads:17,18``): the same kind of components at an
  equal number of *other* layers, drawn without repetition from ``null_layers`` (default: every
  layer after the injection layer, where the injected vector is read), so the null knocks out as
  much model as the hypothesis does;
- for named heads (``head:17.3``): distinct random heads at the same layers (``circuits.draw_null_sets``;
  every possible set when there are no more than ``n_null``, an exact test with a coarser minimum p).

p is centred on the null median (``stats.permutation_test``) and always printed with the minimum
attainable p, 1 / (1 + number of null sets).

Mean: the component's mean over the clean rows' positions from the window on (``mean_over="clean"``,
the value it takes when nothing is injected), or over every row (``"all"``).

Patch: each row's components take their values from its counterfactual — an injected row from the
clean run of the same prompt, a clean row from an injected run of the same prompt — so the test
asks whether these components alone carry the difference between the two conditions.
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import time
from dataclasses import asdict, dataclass, field
from math import comb
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch

from introspect_mech import protocol
from introspect_mech.errors import ConfigError
from introspect_mech.experiments.injected_thoughts.prompt import VARIANTS, exp1_prompt
from introspect_mech.inject import Injection
from introspect_mech.model_options import add_model_args, load_model_from_args
from introspect_mech.stats import format_p
from introspect_mech.store import atomic_write_json

from .circuits import (MLP, Component, ComponentStats, Head, Hypothesis, LogitMetric, next_token_logodds,
                       draw_null_sets, test_hypothesis_metrics, yes_no_token_ids)

if TYPE_CHECKING:
    from introspect_mech.models import Model

Kind = Literal["mlp", "heads", "head"]
INTERVENTIONS = ("zero", "mean", "patch")
METRICS = ("injected", "clean", "discrimination")
_SPEC = re.compile(r"^(mlp|heads|head):(.+)$")


def _layer_list(text: str, what: str) -> tuple[int, ...]:
    """``"17,18"`` or ``"17-19"`` (or a mix) → sorted distinct layer indices."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"{what}: {part!r} is not a layer index or range like 17-18")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ConfigError(f"{what}: range {part!r} runs backwards")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


@dataclass(frozen=True)
class ComponentSpec:
    """A declared component set: ``mlp:17,18`` (the MLPs of those layers), ``heads:17-18`` (every head of
    those layers), ``head:17.3,18.5`` (named heads)."""

    kind: Kind
    layers: tuple[int, ...]
    heads: tuple[tuple[int, int], ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "ComponentSpec":
        m = _SPEC.match(text.strip())
        if not m:
            raise ConfigError(f"--components {text!r}: use mlp:LAYERS, heads:LAYERS or head:L.H,L.H "
                              "(e.g. mlp:17,18 or heads:17-18 or head:17.3)")
        kind, rest = m.group(1), m.group(2)
        if kind == "head":
            heads = []
            for part in rest.split(","):
                hm = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", part)
                if not hm:
                    raise ConfigError(f"--components {text!r}: {part!r} is not LAYER.HEAD (e.g. 17.3)")
                heads.append((int(hm.group(1)), int(hm.group(2))))
            heads = sorted(set(heads))
            return cls("head", tuple(sorted({L for L, _ in heads})), tuple(heads), text.strip())
        return cls(kind, _layer_list(rest, f"--components {text!r}"), (), text.strip())  # type: ignore[arg-type]

    def check(self, n_layers: int, n_heads: int) -> None:
        bad = [L for L in self.layers if L >= n_layers]
        if bad:
            raise ConfigError(f"--components {self.text!r}: layer {bad[0]} is past the model's last layer "
                              f"{n_layers - 1}")
        badh = [h for _, h in self.heads if h >= n_heads]
        if badh:
            raise ConfigError(f"--components {self.text!r}: head {badh[0]} is past the last head {n_heads - 1}")

    def components(self, n_heads: int, layers: Sequence[int] | None = None) -> list[Component]:
        """The components, at ``layers`` instead of the declared ones when given (null sets of a whole-layer spec)."""
        if self.kind == "head":
            return [Head(L, h) for L, h in self.heads]
        ls = self.layers if layers is None else layers
        if self.kind == "mlp":
            return [MLP(L) for L in ls]
        return [Head(L, h) for L in ls for h in range(n_heads)]


@dataclass
class Exp1CircuitConfig:
    hypotheses: list[str] = field(default_factory=lambda: ["mlp:17,18", "heads:17,18"])
    intervention: str = "mean"
    injection_layer: int = 14
    strength: float = 8.0
    n_words: int = 50  # the paper's concept words (held out from the organism's training)
    n_clean: int = 20  # clean prompts: both variants × trial numbers 1..n_clean/2 (rounded up)
    n_null: int = 39  # null component sets per hypothesis (minimum attainable p = 1 / (1 + n_null))
    null_layers: list[int] | None = None  # pool of a whole-layer hypothesis's null (default: after the injection)
    mean_over: str = "clean"  # rows whose mean a mean-ablation writes: "clean" or "all" (injected and clean)
    batch_size: int = 32
    seed: int = 0

    def specs(self) -> list[ComponentSpec]:
        return [ComponentSpec.parse(h) for h in self.hypotheses]

    def validate(self) -> None:
        """Everything that can be checked without the model (the model's depth: ``check_model``)."""
        if not self.hypotheses:
            raise ConfigError("give at least one --components hypothesis")
        self.specs()
        if self.intervention not in INTERVENTIONS:
            raise ConfigError(f"--intervention must be one of {', '.join(INTERVENTIONS)}, got {self.intervention!r}")
        if self.injection_layer < 0:
            raise ConfigError(f"--layer must be a layer index >= 0, got {self.injection_layer}")
        if not (self.strength > 0 and self.strength < float("inf")):
            raise ConfigError(f"--strength must be a finite number > 0, got {self.strength}")
        n_paper = len(protocol.concept_words())
        if not 1 <= self.n_words <= n_paper:
            raise ConfigError(f"--n-words must be 1..{n_paper} (the paper's concept words), got {self.n_words}")
        if self.n_clean < 1:
            raise ConfigError(f"--n-clean must be >= 1, got {self.n_clean}")
        if self.intervention == "patch" and self.n_words < self.n_clean:
            raise ConfigError("--intervention patch pairs every clean prompt with an injected one: "
                              "use --n-words >= --n-clean")
        if self.mean_over not in ("clean", "all"):
            raise ConfigError(f"--mean-over must be 'clean' or 'all', got {self.mean_over!r}")
        if self.n_null < 1:
            raise ConfigError(f"--n-null must be >= 1 (minimum attainable p = 1/(1+n)), got {self.n_null}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")

    def check_model(self, n_layers: int, n_heads: int) -> None:
        if self.injection_layer >= n_layers:
            raise ConfigError(f"--layer {self.injection_layer} is past the model's last layer {n_layers - 1}")
        for s in self.specs():
            s.check(n_layers, n_heads)
        if self.null_layers is not None and any(L >= n_layers for L in self.null_layers):
            raise ConfigError(f"--null-layers: the model's last layer is {n_layers - 1}")


def null_layer_sets(spec: ComponentSpec, pool: Sequence[int], n: int, seed: int) -> list[tuple[int, ...]]:
    """``n`` distinct sets of ``len(spec.layers)`` layers from ``pool`` minus the hypothesis's layers
    (all of them, sorted, when there are fewer than ``n``: then the minimum p is coarser, and says so)."""
    k = len(spec.layers)
    others = sorted(set(pool) - set(spec.layers))
    if len(others) < k:
        raise ConfigError(f"the null of {spec.text!r} needs {k} layers outside it; the null pool has {others}")
    total = comb(len(others), k)
    rng = random.Random(seed)
    if total <= n:
        return list(itertools.combinations(others, k))
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        seen.add(tuple(sorted(rng.sample(others, k))))
    return sorted(seen, key=lambda s: rng.random())


@dataclass
class Trials:
    """The rows every metric call runs: ``n_injected`` injected rows, then the clean rows."""

    prompts: list[Any]
    injections: list[Injection | None]
    counterfactual: list[Injection | None]  # per row, the other condition on the same prompt (patching)
    n_injected: int
    start: int
    words: list[str]


def build_trials(model: Model, cfg: Exp1CircuitConfig, vectors) -> Trials:
    """Clean prompts cycle over both variants and trial numbers; word i is injected into clean prompt
    i mod n_clean, so the two conditions see the same prompts (and a row's counterfactual exists)."""
    asks = [(v, t) for t in range(1, cfg.n_clean + 1) for v in VARIANTS][: cfg.n_clean]
    ps = [exp1_prompt(model.tokenizer, variant=v, trial=t) for v, t in asks]
    starts = {p.start for p in ps}
    if len(starts) != 1:
        raise ConfigError(f"the Exp 1 prompts' windows start at different tokens {sorted(starts)}; "
                          "this analysis needs one start")
    L, s = cfg.injection_layer, cfg.strength
    words = [w.lower() for w in protocol.concept_words()[: cfg.n_words]]
    inj = [Injection(vectors.get(w, L), L, s, ps[i % len(ps)].window, label=w) for i, w in enumerate(words)]
    prompts = [ps[i % len(ps)].rendered for i in range(len(words))] + [p.rendered for p in ps]
    injections: list[Injection | None] = [*inj, *([None] * len(ps))]
    counter: list[Injection | None] = [*([None] * len(words)), *inj[: len(ps)]]
    return Trials(prompts, injections, counter, len(words), starts.pop(), words)


def run(model: Model, cfg: Exp1CircuitConfig | None = None, out_dir: str | Path = "figures/circuits",
        png: bool = True, vectors=None) -> dict:
    """Every hypothesis of ``cfg`` against its null, on ``injected``, ``clean`` and ``discrimination``."""
    from introspect_mech.concepts import extract_concept_vectors

    cfg = cfg or Exp1CircuitConfig()
    cfg.validate()
    arch = model.arch
    cfg.check_model(arch.n_layers, arch.n_heads)
    t0 = time.perf_counter()
    L = cfg.injection_layer
    if vectors is None:
        vectors = extract_concept_vectors(model, [w.lower() for w in protocol.concept_words()[: cfg.n_words]],
                                          layers=[L])
    trials = build_trials(model, cfg, vectors)
    yes, no = yes_no_token_ids(model.tokenizer)
    n_inj = trials.n_injected
    pool = cfg.null_layers if cfg.null_layers is not None else list(range(L + 1, arch.n_layers))
    specs = cfg.specs()
    touched = sorted({x for s in specs for x in s.layers} | set(pool))
    stats = None
    if cfg.intervention == "mean":
        rows = slice(n_inj, None) if cfg.mean_over == "clean" else slice(None)
        stats = ComponentStats(model, trials.prompts[rows], trials.injections[rows], start=trials.start,
                               layers=touched)
    elif cfg.intervention == "patch":
        stats = ComponentStats(model, trials.prompts, trials.counterfactual, start=trials.start, layers=touched)
    batch = len(trials.prompts) if cfg.intervention == "patch" else cfg.batch_size
    per_row = LogitMetric(model, trials.prompts, next_token_logodds(yes, no), injections=trials.injections,
                          batch_size=batch)

    def metrics(ablations: Sequence[Any]) -> dict[str, float]:
        v = per_row.per_row(ablations)
        inj, clean = float(v[:n_inj].mean()), float(v[n_inj:].mean())
        return {"injected": inj, "clean": clean, "discrimination": inj - clean}

    intact = metrics([])
    results = []
    for spec in specs:
        hyp = Hypothesis(spec.text, spec.components(arch.n_heads), cfg.intervention, start=trials.start)
        if spec.kind == "head":
            rng = random.Random(cfg.seed)
            exclude = set(hyp.components)
            drawn = draw_null_sets(model, hyp.components, cfg.n_null, rng, exclude, same_layers=True)
            null_sets = drawn.sets
            null_kind = f"{len(hyp.components)} random other heads at the same layers; {drawn.describe()}"
            null_layers: list[tuple[int, ...]] = []
        else:
            null_layers = null_layer_sets(spec, pool, cfg.n_null, cfg.seed)
            null_sets = [spec.components(arch.n_heads, ls) for ls in null_layers]
            null_kind = (f"{'MLPs' if spec.kind == 'mlp' else 'all heads'} of {len(spec.layers)} other layer(s) "
                         f"drawn from {pool[0]}..{pool[-1]}" if pool else "none")
        res = test_hypothesis_metrics(model, hyp, metrics, baseline=intact, stats=stats, null_sets=null_sets,
                                      null_kind=null_kind)
        results.append({"hypothesis": spec.text, "kind": spec.kind, "layers": list(spec.layers),
                        "n_components": len(hyp.components), "null_layer_sets": [list(x) for x in null_layers],
                        "metrics": {k: res[k].to_dict() for k in METRICS}})
    summary = {"config": asdict(cfg), "model": model.describe(), "injection_layer": L, "strength": cfg.strength,
               "metric": "mean over rows of log P(Yes) - log P(No) at the answer position (first tokens of "
                         "Yes/ Yes/yes vs No/ No/no), Exp 1 question",
               "rows": {"injected": n_inj, "clean": len(trials.prompts) - n_inj, "words": trials.words},
               "intervention_start": trials.start, "null_pool": list(pool), "intact": intact,
               "results": results, "seconds": time.perf_counter() - t0}
    out = Path(out_dir)
    summary["figures"] = figure(summary, out, png)
    atomic_write_json(out / "circuits_summary.json", summary)
    return summary


def figure(summary: dict, out: Path, png: bool) -> dict:
    """Per hypothesis and metric: the null's effects (box, every point) and the hypothesis's effect."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from introspect_mech import plots

    fig = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[f"Δ log-odds, {m}" for m in METRICS])
    for c, m in enumerate(METRICS, start=1):
        for r in summary["results"]:
            d = r["metrics"][m]
            fig.add_trace(go.Box(y=d["null_effects"], name=r["hypothesis"], boxpoints="all", marker_color="grey",
                                 showlegend=False), row=1, col=c)
            fig.add_trace(go.Scatter(x=[r["hypothesis"]], y=[d["effect"]], mode="markers",
                                     marker=dict(size=13, color="crimson", symbol="diamond"), showlegend=False,
                                     hovertext=format_p(d["p_value"], d["min_p"], d["n_null"])), row=1, col=c)
    fig.update_layout(title=f"{summary['model'].get('name', 'model')}: {summary['config']['intervention']}-ablation "
                            f"vs null (grey), Exp 1 injection at layer {summary['injection_layer']}",
                      template="plotly_white", height=450, width=1100)
    return {"circuits": plots.save_figure(fig, out / "circuits_null", png=png)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="introspect-mech analyze circuits", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--components", action="append", default=None,
                   help="a hypothesis: mlp:LAYERS, heads:LAYERS or head:L.H,... (repeat for several; "
                        "default: mlp:17,18 and heads:17,18)")
    p.add_argument("--intervention", default="mean", choices=INTERVENTIONS)
    p.add_argument("--layer", type=int, default=14, help="injection layer index (default 14)")
    p.add_argument("--strength", type=float, default=8.0, help="injection strength (default 8)")
    p.add_argument("--n-words", type=int, default=50, help="paper concept words injected (default 50)")
    p.add_argument("--n-clean", type=int, default=20, help="clean Exp 1 prompts (default 20)")
    p.add_argument("--n-null", type=int, default=39, help="null sets per hypothesis (min attainable p = 1/(1+n))")
    p.add_argument("--null-layers", default=None,
                   help="layers a whole-layer hypothesis's null is drawn from, e.g. 15-29 (default: after --layer)")
    p.add_argument("--mean-over", default="clean", choices=["clean", "all"],
                   help="mean ablation writes the component's mean over the clean rows (default) or over all rows")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="figures/circuits")
    p.add_argument("--no-png", action="store_true")
    return p


def config_from_args(a: argparse.Namespace) -> Exp1CircuitConfig:
    cfg = Exp1CircuitConfig(hypotheses=a.components or ["mlp:17,18", "heads:17,18"], intervention=a.intervention,
                            injection_layer=a.layer, strength=a.strength, n_words=a.n_words, n_clean=a.n_clean,
                            n_null=a.n_null,
                            null_layers=list(_layer_list(a.null_layers, "--null-layers")) if a.null_layers else None,
                            mean_over=a.mean_over,
                            batch_size=a.batch_size, seed=a.seed)
    cfg.validate()
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    cfg = config_from_args(a)  # every option checked before the model loads
    model = load_model_from_args(a)
    s = run(model, cfg, a.out, png=not a.no_png)
    i = s["intact"]
    print(f"intact yes-vs-no log-odds: injected {i['injected']:+.3f}, clean {i['clean']:+.3f}, "
          f"discrimination {i['discrimination']:+.3f} ({s['rows']['injected']} injected, {s['rows']['clean']} clean rows)")
    for r in s["results"]:
        for m in METRICS:
            d = r["metrics"][m]
            print(f"{r['hypothesis']} [{cfg.intervention}] {m}: effect {d['effect']:+.3f}; null ({d['null_kind']}) "
                  f"median {d['null_median']:+.3f}, mean {d['null_mean']:+.3f} ± {d['null_sd']:.3f}; "
                  f"z {d['z_score']:+.1f}; {format_p(d['p_value'], d['min_p'], d['n_null'])}")
    print(f"wrote {a.out}/circuits_summary.json in {s['seconds']:.0f} s")
    return 0
