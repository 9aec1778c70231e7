"""Silent thought control: where does the "think about X" representation appear, and where is it suppressed?

From Experiment 4 (stored runs, or computed here): the think − don't-think gap in the
cosine between the sentence-token residuals and X's concept vector, per layer; the
silent-decay index (final-layer gap / peak gap, with a bootstrap interval over pairs).
The two models compared by default (SmolLM2-135M-Instruct, Gemma-3-270m base) differ in
family, size, data and norm placement as well as in post-training: a two-model comparison,
not an instruct-vs-base contrast.

Where: the residual at layer L is the residual at L−1 plus the attention block's and the
MLP's writes. All layers are projected on **one fixed unit direction** per pair — X's
concept vector at ``direction_layer`` (default: the last layer) — so the per-layer writes
telescope: summed over any range of layers, attention + MLP equals the change of the
projection gap over that range (projecting each layer on its own direction would not add
up). Taking think − don't-think splits the growth of the gap into an attention part and an
MLP part; a negative part in the last layers is what "suppression" means operationally here.

Post-norm blocks (Gemma 2/3, OLMo-2): the residual change is ``post_attention_norm(attn_out) +
post_ffn_norm(mlp_out)``, so the writes are the post-norms' outputs, which is what
``RecordSpec(components=True)`` records there (``Architecture.attn_write`` / ``mlp_write``); block
layouts the toolkit has not checked are refused. Every run also checks the identity
attention + MLP = residual change per pair and layer; if it fails, the split is not reported or drawn.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from introspect_mech.execution import forward
from introspect_mech.experiments.intentional_control.protocol import IntentionalControl
from introspect_mech.experiments.intentional_control.config import IntentionalControlConfig
from introspect_mech.model_options import add_model_args, models_from_args
from introspect_mech.record import RecordSpec
from introspect_mech.stats import MeanCI, bootstrap_interval, mean_interval
from introspect_mech.store import atomic_write_json

if TYPE_CHECKING:
    from introspect_mech.models import Model

IDENTITY_TOL = 1e-3  # relative: max |attn + mlp − Δ| / max |Δ| over pairs and layers


@dataclass
class Contributions:
    """Per layer, mean over pairs of think − don't-think projections on one fixed unit direction per pair."""

    residual: list[MeanCI]  # projection of the residual
    attention: list[MeanCI]  # the attention block's write (after its post-norm, if any)
    mlp: list[MeanCI]  # the MLP's write (after its post-norm, if any)
    delta: list[MeanCI]  # projection of residual_L − residual_{L−1} (layer 0: residual_0)
    own_direction: list[MeanCI]  # the residual projected on each layer's own concept direction (descriptive)
    identity_error: float  # max |attn + mlp − delta| / max |delta| over pairs and layers ≥ 1
    per_pair_residual: dict[int, list[float]]  # think − don't per pair and layer (for bootstrap intervals)


def contributions(model: Model, n_pairs: int = 20, batch_size: int = 16,
                  direction_layer: int | float | str = -1) -> tuple[Contributions, dict]:
    """One forward per batch with residual, attention and MLP outputs recorded at every layer."""
    model.arch.require_additive_blocks("the thought-control decomposition")
    exp = IntentionalControl(model, IntentionalControlConfig(n_pairs=n_pairs, templates=("think", "dont_think"),
                                                             control_formats=False))
    exp.prepare(model)
    L_all = list(range(model.arch.n_layers))
    L_dir = model.arch.resolve_layer(direction_layer)
    keys = ("res", "attn", "mlp", "delta", "own")
    per = {k: {t: [] for t in ("think", "dont_think")} for k in keys}
    items = [(t, i) for i in range(len(exp.sentences)) for t in ("think", "dont_think")]
    err_num = err_den = 0.0
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        built = [exp.prompt(t, i) for t, i in chunk]
        rec = forward(model, [b[0] for b in built],
                      record=RecordSpec(layers=None, residual=True, components=True, logits=False))
        for r, ((t, i), (rp, (a, b))) in enumerate(zip(chunk, built)):
            word = exp.pair_words[i]
            u = exp.vectors.get(word, L_dir).float()
            u = u / u.norm()
            vals = {k: [] for k in keys}
            prev = None
            for L in L_all:
                h = rec.row(rec.residual[L][r], r)[a:b].float()
                # the recorded components are the block's writes (post-norm outputs on post-norm blocks)
                attn = rec.row(rec.attn_out[L][r], r)[a:b].float()
                mlp = rec.row(rec.mlp_out[L][r], r)[a:b].float()
                res = float((h @ u).mean())
                vals["res"].append(res)
                vals["attn"].append(float((attn @ u).mean()))
                vals["mlp"].append(float((mlp @ u).mean()))
                vals["delta"].append(res - (prev if prev is not None else 0.0))
                uL = exp.vectors.get(word, L).float()
                vals["own"].append(float((h @ (uL / uL.norm())).mean()))
                if prev is not None:
                    err_num = max(err_num, abs(vals["attn"][-1] + vals["mlp"][-1] - vals["delta"][-1]))
                    err_den = max(err_den, abs(vals["delta"][-1]))
                prev = res
            for key in keys:
                per[key][t].append((i, vals[key]))
    out, per_pair = {}, {}
    for key in keys:
        th = dict(per[key]["think"])
        dt = dict(per[key]["dont_think"])
        pairs = sorted(set(th) & set(dt))
        diffs = {p: [th[p][L] - dt[p][L] for L in L_all] for p in pairs}
        out[key] = [mean_interval([diffs[p][L] for p in pairs]) for L in L_all]
        if key == "res":
            per_pair = diffs
    err = err_num / err_den if err_den > 0 else 0.0
    return (Contributions(out["res"], out["attn"], out["mlp"], out["delta"], out["own"], err, per_pair),
            {"n_pairs": n_pairs, "words": exp.pair_words, "direction_layer": L_dir,
             "system_prompt": exp.prompt("think", 0)[0].system,
             "direction": f"each pair word's unit concept vector at layer {L_dir}, the same at every layer"})


def _decay(curves: Sequence[Sequence[float]]) -> float | None:
    n = len(curves[0]) if curves else 0
    mean = [sum(c[L] for c in curves) / len(curves) for L in range(n)]
    peak = max(mean) if mean else 0.0
    return mean[-1] / peak if peak > 0 else None


def summarize_model(c: Contributions, meta: dict, n_layers: int) -> dict:
    res = [x.mean for x in c.residual]
    peak = max(range(n_layers), key=lambda L: res[L])
    q0 = int(0.75 * n_layers)
    last_quarter = range(q0, n_layers)
    valid = c.identity_error < IDENTITY_TOL
    boot = bootstrap_interval([c.per_pair_residual[p] for p in sorted(c.per_pair_residual)], _decay)
    own = [x.mean for x in c.own_direction]
    own_peak = max(own) if own else 0.0
    return {
        **meta, "n_layers": n_layers,
        "projection_gap": c.residual, "residual_change": c.delta, "projection_gap_own_direction": c.own_direction,
        "decomposition_identity_error": c.identity_error, "decomposition_valid": valid,
        "attention_contribution": c.attention if valid else None, "mlp_contribution": c.mlp if valid else None,
        "peak_layer": peak, "peak_gap": res[peak], "final_gap": res[-1],
        "projection_decay_index": boot["estimate"], "projection_decay_index_lo": boot["lo"],
        "projection_decay_index_hi": boot["hi"],
        "own_direction_decay_index": (own[-1] / own_peak) if own_peak > 0 else None,
        "last_quarter_first_layer": q0,
        "last_quarter_gap_growth": res[-1] - res[q0 - 1] if q0 >= 1 else res[-1],
        "last_quarter_attention_sum": sum(c.attention[L].mean for L in last_quarter) if valid else None,
        "last_quarter_mlp_sum": sum(c.mlp[L].mean for L in last_quarter) if valid else None,
    }


def gap_from_runs(run_dirs: Sequence[str | Path]) -> dict[str, dict]:
    from introspect_mech.experiments.intentional_control import report as rep
    from introspect_mech.report import load_run

    out = {}
    for d in run_dirs:
        manifest, records = load_run(d)
        if manifest["experiment"] != "intentional_control":
            raise ValueError(f"{d} is a {manifest['experiment']} run, not intentional_control")
        out[manifest["model"]["name"]] = rep.summarize(records)
    return out


def run(models: Sequence[Model], *, runs: Sequence[str | Path] = (), n_pairs: int = 20,
        out_dir: str | Path = "figures/thought_control", png: bool = True,
        direction_layer: int | float | str = -1) -> dict:
    t0 = time.perf_counter()
    for m in models:  # refuse a block layout before any model's (long) pass, not after the first one
        m.arch.require_additive_blocks("the thought-control decomposition")
    out = Path(out_dir)
    summary: dict = {"models": {}, "runs": [str(r) for r in runs]}
    for m in models:
        c, meta = contributions(m, n_pairs, direction_layer=direction_layer)
        summary["models"][m.name] = summarize_model(c, meta, m.arch.n_layers)
    if runs:
        gaps = gap_from_runs(runs)
        summary["cosine_gap_from_runs"] = {k: {kk: v.get(kk) for kk in ("gap", "n_layers", "think_over_baseline_curve")}
                                           for k, v in gaps.items()}
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
            if not s.get(key):  # the identity check failed: the split is not valid, so it is not drawn
                continue
            fig.add_trace(go.Bar(x=xs, y=[v.mean for v in s[key]], name=label, marker_color=color,
                                 error_y=dict(type="data", symmetric=False,
                                              array=[v.hi - v.mean for v in s[key]],
                                              arrayminus=[v.mean - v.lo for v in s[key]]),
                                 showlegend=(j == 0), legendgroup=label), row=1, col=j + 1)
        fig.add_trace(go.Scatter(x=xs, y=[v.mean for v in s["projection_gap"]], name="residual gap",
                                 line=dict(color="black"), showlegend=(j == 0), legendgroup="res"), row=1, col=j + 1)
        if not s.get("decomposition_valid", True):
            fig.add_annotation(text=f"attention / MLP split not drawn: writes do not add up to the residual change "
                                    f"(relative error {s['decomposition_identity_error']:.2g})",
                               xref=f"x{j + 1 if j else ''} domain", yref=f"y{j + 1 if j else ''} domain", x=0.02,
                               y=0.98, showarrow=False, font=dict(size=10))
    fig.update_layout(barmode="relative", template="plotly_white",
                      title="Think − don't-think: projection on X's concept direction (one fixed direction per pair: "
                            "the last layer's), and each layer's attention / MLP writes along it")
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
                                      fillcolor=plots.rgba(c, 0.2), mode="lines", line=dict(width=0), showlegend=False))
            sdi = gap.get("silent_decay_index")
            ci = (f" [{gap['decay_index_lo']:.2f}, {gap['decay_index_hi']:.2f}]"
                  if gap.get("decay_index_lo") is not None else "")
            fig2.add_trace(go.Scatter(x=xs, y=gap["mean"], line=dict(color=c),
                                      name=f"{name} (decay index {sdi:.2f}{ci})" if sdi is not None else name))
        fig2.add_hline(y=0, line_dash="dot")
        fig2.update_layout(title="Exp 4: think − don't-think cosine gap vs depth (95% CI over pairs)",
                           xaxis_title="depth (layer / last layer)", yaxis_title="cosine gap", template="plotly_white")
        written["gap"] = plots.save_figure(fig2, out / "thought_control_gap_vs_depth", png=png)
    return written


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="introspect-mech analyze thought-control", description=__doc__.splitlines()[0])
    # the default pair differs in family and size, not only in post-training
    add_model_args(ap, several=True, default="smollm2-135m-instruct,gemma-3-270m")
    ap.add_argument("--runs", nargs="*", default=[], help="stored Exp 4 runs for the cosine-gap curves")
    ap.add_argument("--n-pairs", type=int, default=20)
    ap.add_argument("--direction-layer", default="-1",
                    help="layer of the concept vector every layer is projected on (index or depth; default: last)")
    ap.add_argument("--out", default="figures/thought_control")
    ap.add_argument("--no-png", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    models = models_from_args(a)
    s = run(models, runs=a.runs, n_pairs=a.n_pairs, out_dir=a.out, png=not a.no_png, direction_layer=a.direction_layer)
    for name, m in s["models"].items():
        di = m["projection_decay_index"]
        print(f"{name}: projection gap (on layer {m['direction_layer']}'s direction) peaks at layer {m['peak_layer']} "
              f"({m['peak_gap']:+.2f}), final {m['final_gap']:+.2f}"
              + (f", decay index {di:.2f} [{m['projection_decay_index_lo']:.2f}, {m['projection_decay_index_hi']:.2f}]"
                 if di is not None else ", no positive peak"))
        if m["decomposition_valid"]:
            print(f"  layers {m['last_quarter_first_layer']}-{m['n_layers'] - 1}: gap grows by "
                  f"{m['last_quarter_gap_growth']:+.2f} = attention writes {m['last_quarter_attention_sum']:+.2f} + "
                  f"MLP writes {m['last_quarter_mlp_sum']:+.2f} (think − don't; identity error "
                  f"{m['decomposition_identity_error']:.1e})")
        else:
            print(f"  attention / MLP split not valid (identity error {m['decomposition_identity_error']:.2g}); "
                  "not reported")
    print(f"wrote {a.out}/thought_control_summary.json in {s['seconds']:.0f} s")
    return 0
