"""Silent thought control: where does the "think about X" representation appear, and where is it suppressed?

From Experiment 4 (stored runs, or computed here): the think − don't-think gap in the
cosine between the sentence-token residuals and X's concept vector, per layer; the
silent-decay index (final-layer gap / peak gap); instruct vs base model side by side.

Where: the residual at layer L is the residual at L−1 plus the attention block's and
the MLP's writes. Projecting each write on X's (unit) concept direction at layer L,
and taking think − don't-think, splits the change of the gap at every layer into an
attention part and an MLP part. A negative MLP (or attention) part in the last layers
is what "suppression" means operationally here. The projections are of raw writes
(not cosines), so their sum per layer equals the change in the projection of the
residual *along that layer's direction* (``delta``; exact on every block layout the toolkit
has checked: the recorded writes are the post-norm outputs on Gemma 2/3 and OLMo-2; others are refused).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from introspect_mech.execution import forward
from introspect_mech.experiments.intentional_control import IntentionalControl, IntentionalControlConfig
from introspect_mech.record import RecordSpec
from introspect_mech.stats import mean_interval
from introspect_mech.store import atomic_write_json


@dataclass
class Contributions:
    """Per layer, mean over pairs of think − don't-think projections on X's unit concept direction."""

    residual: list[dict]
    attention: list[dict]
    mlp: list[dict]
    delta: list[dict]  # projection of (residual_L − residual_{L−1}) on layer L's direction (layer 0: residual_0)


def contributions(model: Any, n_pairs: int = 20, batch_size: int = 16) -> tuple[Contributions, dict]:
    """One forward per batch with residual, attention and MLP outputs recorded at every layer."""
    model.arch.require_additive_blocks("the thought-control decomposition")
    exp = IntentionalControl(model, IntentionalControlConfig(n_pairs=n_pairs, templates=("think", "dont_think"),
                                                             control_formats=False))
    exp.prepare(model)
    L_all = list(range(model.arch.n_layers))
    per = {k: {t: [] for t in ("think", "dont_think")} for k in ("res", "attn", "mlp", "delta")}
    items = [(t, i) for i in range(len(exp.sentences)) for t in ("think", "dont_think")]
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        built = [exp.prompt(model, t, i) for t, i in chunk]
        rec = forward(model, [b[0] for b in built],
                      record=RecordSpec(layers=None, residual=True, components=True, logits=False))
        for r, ((t, i), (rp, (a, b))) in enumerate(zip(chunk, built)):
            word = exp.pair_words[i]
            vals = {"res": [], "attn": [], "mlp": [], "delta": []}
            for L in L_all:
                u = exp.vectors.get(word, L).float()
                u = u / u.norm()
                for key, store in (("res", rec.residual), ("attn", rec.attn_out), ("mlp", rec.mlp_out)):
                    x = rec.row(store[L][r], r)[a:b].float()
                    vals[key].append(float((x @ u).mean()))
                prev = rec.row(rec.residual[L - 1][r], r)[a:b].float() @ u if L else 0.0
                vals["delta"].append(vals["res"][-1] - float(torch.as_tensor(prev).mean()))
            for key in vals:
                per[key][t].append((i, vals[key]))
    out = {}
    for key in ("res", "attn", "mlp", "delta"):
        th = dict(per[key]["think"])
        dt = dict(per[key]["dont_think"])
        pairs = sorted(set(th) & set(dt))
        out[key] = [mean_interval([th[p][L] - dt[p][L] for p in pairs]) for L in L_all]
    return Contributions(out["res"], out["attn"], out["mlp"], out["delta"]), {"n_pairs": n_pairs, "words": exp.pair_words}


def gap_from_runs(run_dirs: Sequence[str | Path]) -> dict[str, dict]:
    from introspect_mech.experiments import intentional_control_report as rep
    from introspect_mech.report import load_run

    out = {}
    for d in run_dirs:
        manifest, records = load_run(d)
        if manifest["experiment"] != "intentional_control":
            raise ValueError(f"{d} is a {manifest['experiment']} run, not intentional_control")
        out[manifest["model"]["name"]] = rep.summarize(records)
    return out


def run(models: Sequence[Any], *, runs: Sequence[str | Path] = (), n_pairs: int = 20, out_dir: str | Path = "figures/thought_control",
        png: bool = True) -> dict:
    t0 = time.perf_counter()
    for m in models:  # refuse a block layout before any model's (long) pass, not after the first one
        m.arch.require_additive_blocks("the thought-control decomposition")
    out = Path(out_dir)
    summary: dict = {"models": {}, "runs": [str(r) for r in runs]}
    contribs = {}
    for m in models:
        c, meta = contributions(m, n_pairs)
        contribs[m.name] = c
        n = m.arch.n_layers
        res = [x["mean"] for x in c.residual]
        peak = max(range(n), key=lambda L: res[L])
        last_quarter = range(int(0.75 * n), n)
        summary["models"][m.name] = {
            **meta, "n_layers": n,
            "projection_gap": c.residual, "attention_contribution": c.attention, "mlp_contribution": c.mlp,
            "residual_change": c.delta,
            "peak_layer": peak, "peak_gap": res[peak], "final_gap": res[-1],
            "projection_decay_index": (res[-1] / res[peak]) if res[peak] > 0 else None,
            "last_quarter_attention_sum": sum(c.attention[L]["mean"] for L in last_quarter),
            "last_quarter_mlp_sum": sum(c.mlp[L]["mean"] for L in last_quarter),
        }
    if runs:
        gaps = gap_from_runs(runs)
        summary["cosine_gap_from_runs"] = {k: {kk: v.get(kk) for kk in ("gap", "n_layers")} for k, v in gaps.items()}
    summary["figures"] = figures(summary, out, png)
    summary["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "thought_control_summary.json", summary)
    return summary


def figures(summary: dict, out: Path, png: bool) -> dict:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from introspect_mech import plots

    names = list(summary["models"])
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for j, name in enumerate(names):
        s = summary["models"][name]
        xs = list(range(s["n_layers"]))
        for key, label, color in (("attention_contribution", "attention write", plots.PALETTE[0]),
                                  ("mlp_contribution", "MLP write", plots.PALETTE[1])):
            fig.add_trace(go.Bar(x=xs, y=[v["mean"] for v in s[key]], name=label, marker_color=color,
                                 error_y=dict(type="data", symmetric=False,
                                              array=[v["hi"] - v["mean"] for v in s[key]],
                                              arrayminus=[v["mean"] - v["lo"] for v in s[key]]),
                                 showlegend=(j == 0), legendgroup=label), row=1, col=j + 1)
        fig.add_trace(go.Scatter(x=xs, y=[v["mean"] for v in s["projection_gap"]], name="residual gap",
                                 line=dict(color="black"), showlegend=(j == 0), legendgroup="res"), row=1, col=j + 1)
    fig.update_layout(barmode="relative", template="plotly_white",
                      title="Think − don't-think: projection on X's concept direction, and each layer's attention / MLP writes")
    fig.update_xaxes(title_text="layer")
    written = {"contributions": plots.save_figure(fig, out / "thought_control_contributions", png=png,
                                                  width=650 * len(names) + 150)}
    gaps = summary.get("cosine_gap_from_runs") or {}
    if gaps:
        fig2 = go.Figure()
        for i, (name, g) in enumerate(gaps.items()):
            gap = g.get("gap")
            if not gap:
                continue
            n = len(gap["mean"])
            xs = [L / (n - 1) for L in range(n)]
            c = plots.PALETTE[i % len(plots.PALETTE)]
            fig2.add_trace(go.Scatter(x=xs + xs[::-1], y=gap["hi"] + gap["lo"][::-1], fill="toself",
                                      fillcolor=plots._rgba(c, 0.2), mode="lines", line=dict(width=0), showlegend=False))
            sdi = gap.get("silent_decay_index")
            fig2.add_trace(go.Scatter(x=xs, y=gap["mean"], line=dict(color=c),
                                      name=f"{name} (decay index {sdi:.2f})" if sdi is not None else name))
        fig2.add_hline(y=0, line_dash="dot")
        fig2.update_layout(title="Exp 4: think − don't-think cosine gap vs depth (95% CI over pairs)",
                           xaxis_title="depth (layer / last layer)", yaxis_title="cosine gap", template="plotly_white")
        written["gap"] = plots.save_figure(fig2, out / "thought_control_gap_vs_depth", png=png)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="introspect-mech analyze thought-control", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m",
                    help="comma list of models (instruct and base) for the attention/MLP decomposition")
    ap.add_argument("--runs", nargs="*", default=[], help="stored Exp 4 runs for the cosine-gap curves")
    ap.add_argument("--n-pairs", type=int, default=20)
    ap.add_argument("--out", default="figures/thought_control")
    ap.add_argument("--no-png", action="store_true")
    a = ap.parse_args(argv)
    from introspect_mech.models import load_model

    models = [load_model(n.strip()) for n in a.models.split(",") if n.strip()]
    s = run(models, runs=a.runs, n_pairs=a.n_pairs, out_dir=a.out, png=not a.no_png)
    for name, m in s["models"].items():
        di = m["projection_decay_index"]
        print(f"{name}: projection gap peaks at layer {m['peak_layer']} ({m['peak_gap']:+.2f}), final {m['final_gap']:+.2f}"
              f", decay index {di:.2f}" if di is not None else f"{name}: no positive projection gap")
        print(f"  last quarter of layers: attention writes {m['last_quarter_attention_sum']:+.2f}, "
              f"MLP writes {m['last_quarter_mlp_sum']:+.2f} (think − don't, summed)")
    print(f"wrote {a.out}/thought_control_summary.json in {s['seconds']:.0f} s")
    return 0
