"""The whole concordance analysis (``run``), its figures from a finished run (``redraw``) and its command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from analyses.circuits import Head
from introspect_mech.inject import check_strength
from introspect_mech.model_options import add_model_args, load_model_from_args
from introspect_mech.stats import MeanCI, format_p, mean_interval

from .causal import INTERVENTIONS, NULLS, causal_test
from .features import FEATURE_TITLES, FEATURES, AttentionFeatures, head_attention_features
from .figures import causal_figure, heatmap_figure, top_heads_figure
from .inputs import CONDITIONS, exp3_pairs
from .metric import IntentLogOdds

if TYPE_CHECKING:
    from introspect_mech.models import Model


def save_figures(out: Path, feats: AttentionFeatures, tops: dict, causal: dict, model_name: str, png: bool) -> dict:
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
    return save_figures(out, feats, {f: v["top"] for f, v in d["features"].items()}, d["causal"], cfg["model"], png)


def _interval(x: torch.Tensor, level: float = 0.95) -> MeanCI:
    """Mean over pairs with a t interval."""
    return mean_interval(x.double().tolist(), level)


def run(
    model: Model,
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
    from introspect_mech.experiments.prefill_intent.protocol import PrefillIntent
    from introspect_mech.experiments.prefill_intent.config import PrefillIntentConfig
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
    all_items = exp3_pairs(exp, range(n_total), L)
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
                   # the coarsest floor of the causal tests (below n_null nulls when fewer head sets exist)
                   "min_attainable_p": max((r["min_p"] for c in causal.values() for r in c["results"].values()),
                                           default=1 / (1 + n_null)), "with_none": with_none,
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
    figs = save_figures(out, feats, tops, causal, model.name, png)
    timing["total_s"] = time.time() - t0
    summary["figures"] = figs
    summary["timing"] = timing
    summary["seconds"] = timing["total_s"]
    atomic_write_json(out / "concordance_summary.json", summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="introspect-mech analyze concordance",
                                 description="Concordance heads on the Exp 3 (prefill intent) prompt: which heads react "
                                             "when the injected prior intention matches the prefilled word, and do "
                                             "they carry the intent claim?")
    add_model_args(ap)
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
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model_from_args(a, attention=True)
    layer = model.arch.resolve_layer(a.layer)
    s = run(model, n_pairs=a.n_pairs, injection_layer=layer, strength=a.strength, k=a.k, n_null=a.n_null,
            out_dir=a.out, png=not a.no_png, interventions=[x for x in a.interventions.split(",") if x],
            null=a.null, rank_feature=a.rank_feature, with_none=a.with_none, causal_pairs=a.causal_pairs,
            held_out=a.held_out, seed=a.seed, batch_size=a.batch_size)
    b = s["behaviour"]
    ie = b["injection_effect"]
    print(f"injection layer {s['config']['injection_layer']}, strength {a.strength:g}: intent log-odds "
          f"none {b['intent_logodds_none'].mean:+.3f}, matched {b['intent_logodds_matched'].mean:+.3f}, "
          f"effect {ie}")
    if "injection_effect_other_concept" in b:
        io = b["injection_effect_other_concept"]
        print(f"  other-concept control: effect {io}")
    for f in FEATURES:
        print(f"{f} (matched − none [95% CI]; other − none):")
        for d in s["features"][f]["top"]:
            o = d.get("other_change")
            print(f"  L{d['layer']}H{d['head']} {d['mean_change']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
                  + (f"; {o['mean']:+.4f} [{o['lo']:+.4f}, {o['hi']:+.4f}]" if o else ""))
    print(f"hypothesis: top-{a.k} heads by {FEATURE_TITLES[s['config']['rank_feature']]} "
          f"({s['config']['rank_feature']}): {s['hypothesis_heads']}; interventions from token "
          f"{s['config']['ablation_start']} (the sentence) on")
    for interv, c in s["causal"].items():
        for name, r in c["results"].items():
            print(f"{interv} {name}: effect {r['effect']:+.3f} (null: {r['null_kind']}, median {r['null_median']:+.3f}, "
                  f"mean {r['null_mean']:+.3f} ± {r['null_sd']:.3f}; {format_p(r['p_value'], r['min_p'], r['n_null'])})")
    print(f"wrote {a.out}/concordance_summary.json in {s['seconds']:.0f} s")
    return 0
