"""Is there a concept-independent "something is off" signal after an injection?

At each readout layer ≥ the injection layer we train a linear probe (scikit-learn
logistic regression) to separate injected from clean residuals at the answer position
of Exp 1-style prompts, cross-validated **by held-out concepts** (and held-out prompts
for the clean class), so a probe can only succeed through what injections of *other*
concepts share. It is compared against:

- a probe on the residual norm alone (is "anomaly" just "bigger"?);
- random vectors norm-matched to concept vectors, and natural-activation scaling by
  the same relative amount: does the concept-trained probe flag those too?

Direction specificity: AUC when training on one strength and testing on another, and
the cosine between probe directions of different concept folds. Causal test: project
the probe direction out at the readout layers after the injection layer, at the tokens
from the injection window on (never the attention-sink token at position 0, whose
residual norm is ~50-100x the others'), and measure the change in the Exp 1 first-token
yes-vs-no log-odds. The null is drawn the way the hypothesis was made (``null``):
"shuffled" (default) refits the same probe on the same rows with shuffled labels, 99
times; "covariance" draws directions from the residual covariance at each layer;
"isotropic" is the harness's uniform random directions (for comparison only). The
p-value is centred on the null median, and the summary states the minimum attainable p.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from introspect_mech import protocol
from introspect_mech.concepts import extract_concept_vectors
from introspect_mech.errors import ConfigError
from introspect_mech.execution import forward
from introspect_mech.experiments.injected_thoughts.prompt import VARIANTS, exp1_prompt, paper_question
from introspect_mech.model_options import add_model_args, load_model_from_args
from introspect_mech.inject import Injection, Window, random_like
from introspect_mech.record import RecordSpec
from introspect_mech.seeds import seed_from
from introspect_mech.stats import Rate, format_p
from introspect_mech.store import atomic_write_json

from .circuits import (Direction, Hypothesis, LogitMetric, covariance_directions, next_token_logodds, test_hypothesis,
                       yes_no_token_ids)

if TYPE_CHECKING:
    from introspect_mech.models import Model

NULLS = ("shuffled", "covariance", "isotropic")


@dataclass
class AnomalyConfig:
    injection_layer: Any = 0.5
    readout_layers: list[Any] | None = None  # default: the injection layer and 4 more up to the last layer
    n_concepts: int = 12
    strengths: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    n_trial_numbers: int = 8  # Exp 1 prompt with "Trial 1..N", both variants, + the 20 yes-bias questions
    n_random_concepts: int = 3
    n_folds: int = 4
    causal_concepts: int = 12
    causal_strength: float = 8.0
    n_null: int = 99  # minimum attainable p = 1 / (1 + n_null) = 0.01
    null: str = "shuffled"  # shuffled | covariance | isotropic (module docstring)
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        if self.null not in NULLS:
            raise ConfigError(f"null must be one of {', '.join(NULLS)}, got {self.null!r}")
        if self.n_null < 1:
            raise ConfigError("n_null must be >= 1 (the minimum attainable p is 1 / (1 + n_null))")


def exp1_prompt_set(model: Model, n_trial_numbers: int) -> list[tuple[Any, Window, str]]:
    """Exp 1-style prompts that differ in the last user turn; each with its injection window and a key."""
    asks = [(f"{v}:t{n}", dict(question=paper_question(v), trial=n))
            for v in VARIANTS for n in range(1, n_trial_numbers + 1)]
    asks += [(f"yes_bias:{i}", dict(question=q))
             for i, q in enumerate(protocol.experiment("injected_thoughts")["yes_bias_control_questions"])]
    out = []
    for key, ask in asks:
        p = exp1_prompt(model.tokenizer, **ask)
        out.append((p.rendered, p.window, key))
    return out


@dataclass
class Rows:
    X: dict[int, np.ndarray]  # layer -> [N, d] residual at the answer position
    kind: list[str]  # clean | concept | random | scaling
    concept: list[str | None]
    strength: list[float | None]
    prompt: list[str]


def collect(model: Model, cfg: AnomalyConfig, layers: list[int], inj_layer: int, words: list[str], vectors) -> Rows:
    prompts = exp1_prompt_set(model, cfg.n_trial_numbers)
    items: list[tuple[Any, Injection | None, str, str | None, float | None, str]] = []
    for rp, win, key in prompts:
        items.append((rp, None, "clean", None, None, key))
        for w in words:
            v = vectors.get(w, inj_layer)
            for s in cfg.strengths:
                items.append((rp, Injection(v, inj_layer, s, win, label=w), "concept", w, s, key))
        for w in words[: cfg.n_random_concepts]:
            seed = seed_from(w, key)
            for s in cfg.strengths:
                items.append((rp, Injection(random_like(vectors.get(w, inj_layer), seed), inj_layer, s, win), "random",
                              w, s, key))
        for s in cfg.strengths:
            items.append((rp, Injection.scaling(inj_layer, vectors.scaling_factor(inj_layer, s), win), "scaling", None, s, key))
    X: dict[int, list] = {L: [] for L in layers}
    for i in range(0, len(items), cfg.batch_size):
        chunk = items[i:i + cfg.batch_size]
        rec = forward(model, [c[0] for c in chunk], [c[1] for c in chunk],
                      record=RecordSpec(layers=layers, last_token_only=True, logits=False))
        for L in layers:
            X[L].append(rec.residual[L][:, 0].float().numpy())
    return Rows({L: np.concatenate(v) for L, v in X.items()}, [c[2] for c in items], [c[3] for c in items],
                [c[4] for c in items], [c[5] for c in items])


def held_out_folds(rows: Rows, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per row: concepts (for concept/random rows) and prompts (for clean/scaling rows) are held out."""
    rng = np.random.default_rng(seed)
    concepts = sorted({c for c in rows.concept if c})
    prompts = sorted(set(rows.prompt))
    cf = {c: i % n_folds for i, c in enumerate(rng.permutation(concepts))}
    pf = {p: i % n_folds for i, p in enumerate(rng.permutation(prompts))}
    return np.array([cf[c] if k in ("concept", "random") else pf[p]
                     for k, c, p in zip(rows.kind, rows.concept, rows.prompt)])


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else float("nan")


def _direction(pipe) -> np.ndarray:
    sc, lr = pipe[0], pipe[1]
    w = lr.coef_[0] / sc.scale_
    return w / np.linalg.norm(w)


def probe_layer(rows: Rows, L: int, folds: np.ndarray, strengths: list[float]) -> dict:
    X = rows.X[L]
    kind = np.array(rows.kind)
    strength = np.array([s if s is not None else np.nan for s in rows.strength], dtype=float)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    train_mask = np.isin(kind, ["clean", "concept"])
    y = (kind == "concept").astype(int)
    scores = np.full(len(y), np.nan)
    nscores = np.full(len(y), np.nan)
    flags = np.zeros(len(y), dtype=bool)
    dirs = []
    for f in sorted(set(folds.tolist())):
        tr = train_mask & (folds != f)
        te = folds == f
        p = _probe().fit(X[tr], y[tr])
        scores[te] = p.decision_function(X[te])
        flags[te] = p.predict(X[te]).astype(bool)
        dirs.append(_direction(p))
        n = _probe().fit(norm[tr], y[tr])
        nscores[te] = n.decision_function(norm[te])
    ev = train_mask
    full = _probe().fit(X[train_mask], y[train_mask])
    cos = [float(a @ b) for i, a in enumerate(dirs) for b in dirs[i + 1:]]

    def flag_rate(k: str, s: float | None = None) -> dict:
        m = (kind == k) & ((strength == s) if s is not None else True)
        return asdict(Rate.of(int(flags[m].sum()), int(m.sum())))

    strength_auc = {}
    for s_tr in strengths:
        row = {}
        for s_te in strengths:
            aucs = []
            for f in sorted(set(folds.tolist())):
                tr = ((kind == "clean") | ((kind == "concept") & (strength == s_tr))) & (folds != f)
                te = ((kind == "clean") | ((kind == "concept") & (strength == s_te))) & (folds == f)
                p = _probe().fit(X[tr], y[tr])
                aucs.append(_auc(y[te], p.decision_function(X[te])))
            row[str(s_te)] = float(np.nanmean(aucs))
        strength_auc[str(s_tr)] = row
    return {
        "layer": L,
        "auc_held_out_concepts": _auc(y[ev], scores[ev]),
        "auc_norm_only": _auc(y[ev], nscores[ev]),
        "flag_rate": {"clean": flag_rate("clean"), "concept": flag_rate("concept"),
                      "random": flag_rate("random"), "scaling": flag_rate("scaling"),
                      **{f"random_s{s:g}": flag_rate("random", s) for s in strengths},
                      **{f"scaling_s{s:g}": flag_rate("scaling", s) for s in strengths}},
        "auc_random_vs_clean": _auc(np.r_[np.zeros((kind == "clean").sum()), np.ones((kind == "random").sum())],
                                    np.r_[scores[kind == "clean"], scores[kind == "random"]]),
        "auc_scaling_vs_clean": _auc(np.r_[np.zeros((kind == "clean").sum()), np.ones((kind == "scaling").sum())],
                                     np.r_[scores[kind == "clean"], scores[kind == "scaling"]]),
        "fold_direction_cosine_mean": float(np.mean(cos)) if cos else float("nan"),
        "strength_transfer_auc": strength_auc,
        "direction": _direction(full).tolist(),
    }


def shuffled_probe_directions(rows: Rows, layers: list[int], n: int, seed: int) -> list[dict[int, np.ndarray]]:
    """``n`` null probes: the same pipeline fitted on the same (clean + concept) rows with the labels
    permuted (class sizes kept), one direction per layer per draw."""
    kind = np.array(rows.kind)
    train = np.isin(kind, ["clean", "concept"])
    y = (kind[train] == "concept").astype(int)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ys = rng.permutation(y)
        out.append({L: _direction(_probe().fit(rows.X[L][train], ys)) for L in layers})
    return out


def null_direction_sets(rows: Rows, layers: list[int], cfg: AnomalyConfig) -> tuple[list[list[Direction]] | None, str]:
    """The null's direction sets for ``cfg.null`` (None: let the harness draw isotropic ones)."""
    if cfg.null == "shuffled":
        draws = shuffled_probe_directions(rows, layers, cfg.n_null, cfg.seed)
        sets = [[Direction(L, torch.tensor(d[L], dtype=torch.float32), "shuffled-label probe") for L in layers]
                for d in draws]
        return sets, "probes refitted on the same rows with shuffled labels"
    if cfg.null == "covariance":
        kind = np.array(rows.kind)
        train = np.isin(kind, ["clean", "concept"])
        per = {L: covariance_directions(torch.from_numpy(rows.X[L][train]), cfg.n_null, cfg.seed + L) for L in layers}
        sets = [[Direction(L, per[L][i].float(), "covariance") for L in layers] for i in range(cfg.n_null)]
        return sets, "directions drawn from N(0, residual covariance) at each layer"
    return None, "isotropic random directions"


def causal_test(model: Model, cfg: AnomalyConfig, inj_layer: int, vectors, words: list[str], probes: dict,
                rows: Rows | None = None) -> dict:
    """Project the probe directions out at readout layers > the injection layer, at tokens from the
    injection window on; metric = Exp 1 yes-vs-no log-odds; null per ``cfg.null``."""
    p = exp1_prompt(model.tokenizer)
    yes, no = yes_no_token_ids(model.tokenizer)
    cw = words[: cfg.causal_concepts]
    injs = [Injection(vectors.get(w, inj_layer), inj_layer, cfg.causal_strength, p.window, label=w) for w in cw]
    metric = LogitMetric(model, [p.rendered] * len(cw), next_token_logodds(yes, no), injections=injs,
                         batch_size=cfg.batch_size)
    clean = LogitMetric(model, [p.rendered], next_token_logodds(yes, no))()
    layers = [L for L in sorted(probes) if L > inj_layer]
    comps = [Direction(L, torch.tensor(probes[L]["direction"], dtype=torch.float32), f"probe@{L}") for L in layers]
    if not comps:
        return {"skipped": "no readout layer after the injection layer"}
    if cfg.null != "isotropic" and rows is None:
        raise ValueError(f"the {cfg.null!r} null needs the probe's training rows")
    null_sets, null_kind = null_direction_sets(rows, layers, cfg) if rows is not None else (None, "isotropic")
    # from the injection window on: the sink token (position 0) and the untouched prefix keep their residual
    hyp = Hypothesis("project out probe directions", comps, "zero", start=p.start)
    res = test_hypothesis(model, hyp, metric, n_null=cfg.n_null, seed=cfg.seed, null_sets=null_sets,
                          null_kind=null_kind)
    return {"metric": "log P(Yes) - log P(No) at the first answer token, Exp 1 prompt, concept injected",
            "ablated_positions": f"unpadded positions >= {p.start} (the injection window's start) through the "
                                 "readout token",
            "clean_prompt_logodds": clean, "injected_logodds": res.baseline,
            "injection_effect_on_metric": res.baseline - clean, **res.to_dict()}


def run(model: Model, cfg: AnomalyConfig | None = None, out_dir: str | Path = "figures/anomaly", png: bool = True) -> dict:
    cfg = cfg or AnomalyConfig()
    cfg.validate()
    t0 = time.perf_counter()
    arch = model.arch
    inj = arch.resolve_layer(cfg.injection_layer)
    if cfg.readout_layers is None:
        layers = sorted({int(round(x)) for x in np.linspace(inj, arch.n_layers - 1, 5)})
    else:
        layers = sorted({arch.resolve_layer(x) for x in cfg.readout_layers})
    if any(L < inj for L in layers):
        raise ValueError(f"readout layers must be >= the injection layer {inj}")
    words = [w.lower() for w in protocol.concept_words()[: cfg.n_concepts]]
    vectors = extract_concept_vectors(model, words, layers=[inj])
    rows = collect(model, cfg, layers, inj, words, vectors)
    folds = held_out_folds(rows, cfg.n_folds, cfg.seed)
    probes = {L: probe_layer(rows, L, folds, cfg.strengths) for L in layers}
    causal = causal_test(model, cfg, inj, vectors, words, probes, rows)
    from introspect_mech.prompts import resolve_system

    summary = {"config": asdict(cfg), "model": model.describe(), "injection_layer": inj, "readout_layers": layers,
               "system_prompt": resolve_system(model.tokenizer)[1],
               "n_rows": len(rows.kind), "rows_by_kind": {k: rows.kind.count(k) for k in sorted(set(rows.kind))},
               "probes": {str(L): {k: v for k, v in p.items() if k != "direction"} for L, p in probes.items()},
               "causal": causal, "seconds": time.perf_counter() - t0}
    out = Path(out_dir)
    summary["figures"] = figures(summary, out, png)
    atomic_write_json(out / "anomaly_summary.json", summary)
    return summary


def figures(summary: dict, out: Path, png: bool) -> dict:
    import plotly.graph_objects as go

    from introspect_mech import plots

    layers = summary["readout_layers"]
    P = summary["probes"]
    fig = go.Figure()
    for key, name in (("auc_held_out_concepts", "probe, held-out concepts (concept vs clean)"),
                      ("auc_norm_only", "norm-only probe"),
                      ("auc_random_vs_clean", "same probe: random norm-matched vs clean"),
                      ("auc_scaling_vs_clean", "same probe: activation scaling vs clean")):
        fig.add_trace(go.Scatter(x=layers, y=[P[str(L)][key] for L in layers], mode="lines+markers", name=name))
    fig.add_hline(y=0.5, line_dash="dash", annotation_text="chance")
    fig.update_layout(title=f"Anomaly probe AUC by readout layer (injection at layer {summary['injection_layer']})",
                      xaxis_title="readout layer", yaxis_title="ROC AUC", yaxis_range=[0, 1.02], template="plotly_white")
    written = {"auc": plots.save_figure(fig, out / "anomaly_auc_vs_layer", png=png)}
    c = summary["causal"]
    if "null_effects" in c:
        fig2 = go.Figure()
        fig2.add_trace(go.Box(y=c["null_effects"], name=f"null: {c.get('null_kind', 'random directions')}",
                              boxpoints="all"))
        fig2.add_trace(go.Scatter(x=["probe directions"], y=[c["effect"]], mode="markers", marker=dict(size=14),
                                  name=f"probe directions (p={c['p_value']:.3f}, min attainable "
                                       f"{c.get('min_p', float('nan')):.3f})"))
        fig2.update_layout(title="Causal test: change in Exp 1 yes-vs-no log-odds when projecting out",
                           yaxis_title="Δ log-odds", template="plotly_white")
        written["causal"] = plots.save_figure(fig2, out / "anomaly_causal", png=png)
    return written


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="introspect-mech analyze anomaly", description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--layer", default="0.5", help="injection layer (index or depth fraction)")
    ap.add_argument("--readout", default=None, help="comma list of readout layers (default: 5 from the injection layer)")
    ap.add_argument("--n-concepts", type=int, default=12)
    ap.add_argument("--strengths", default="2,4,8")
    ap.add_argument("--n-trial-numbers", type=int, default=8)
    ap.add_argument("--n-null", type=int, default=99, help="null draws (minimum attainable p = 1/(1+n))")
    ap.add_argument("--null", default="shuffled", choices=NULLS,
                    help="shuffled-label probes (default), residual-covariance directions, or isotropic directions")
    ap.add_argument("--n-random-concepts", type=int, default=3)
    ap.add_argument("--causal-concepts", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures/anomaly")
    ap.add_argument("--no-png", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    model = load_model_from_args(a)
    cfg = AnomalyConfig(injection_layer=a.layer, readout_layers=a.readout.split(",") if a.readout else None,
                        n_concepts=a.n_concepts, strengths=[float(x) for x in a.strengths.split(",")],
                        n_trial_numbers=a.n_trial_numbers, n_null=a.n_null, null=a.null,
                        n_random_concepts=a.n_random_concepts, causal_concepts=a.causal_concepts, seed=a.seed)
    s = run(model, cfg, a.out, png=not a.no_png)
    for L in s["readout_layers"]:
        p = s["probes"][str(L)]
        print(f"layer {L}: AUC held-out concepts {p['auc_held_out_concepts']:.3f}, norm-only {p['auc_norm_only']:.3f}, "
              f"random-vs-clean {p['auc_random_vs_clean']:.3f}, scaling-vs-clean {p['auc_scaling_vs_clean']:.3f}")
    c = s["causal"]
    if "effect" in c:
        print(f"causal: projecting out probe directions (from token {c['hypothesis']['start']} on) changes yes-vs-no "
              f"log-odds by {c['effect']:+.3f} (null: {c['null_kind']}, median {c['null_median']:+.3f}, mean "
              f"{c['null_mean']:+.3f} ± {c['null_sd']:.3f}; {format_p(c['p_value'], c['min_p'], c['n_null'])})")
    print(f"wrote {a.out}/anomaly_summary.json in {s['seconds']:.0f} s")
    return 0
