"""Experiment 4 report: cosine-by-layer curves per template with the control-word baseline band, gaps, decay index."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from ..stats import mean_interval


def _mean_ci(xs: list[float]) -> tuple[float, float, float]:
    d = mean_interval(xs)
    return d["mean"], d["lo"], d["hi"]


def summarize(records: Sequence[dict]) -> dict:
    by_t: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_t[r["condition"]].append(r)
    n_layers = len(records[0]["cos_target"]) if records else 0
    curves = {}
    for t, recs in by_t.items():
        cols = list(zip(*[r["cos_target"] for r in recs]))
        base = list(zip(*[r["cos_control_mean"] for r in recs]))
        curves[t] = {"n": len(recs), "mean": [], "lo": [], "hi": [], "baseline": [], "baseline_lo": [],
                     "baseline_hi": []}
        for L in range(n_layers):
            m, lo, hi = _mean_ci(list(cols[L]))
            b, blo, bhi = _mean_ci(list(base[L]))
            for k, v in (("mean", m), ("lo", lo), ("hi", hi), ("baseline", b), ("baseline_lo", blo), ("baseline_hi", bhi)):
                curves[t][k].append(v)
    out = {"n_layers": n_layers, "curves": curves}
    if "think" in curves and "dont_think" in curves:
        # paired by sentence/word: per-pair difference, then mean and CI per layer
        th = {r["extra"]["pair"]: r for r in by_t["think"]}
        dt = {r["extra"]["pair"]: r for r in by_t["dont_think"]}
        pairs = sorted(set(th) & set(dt))
        gap, gap_lo, gap_hi, over = [], [], [], []
        for L in range(n_layers):
            m, lo, hi = _mean_ci([th[p]["cos_target"][L] - dt[p]["cos_target"][L] for p in pairs])
            gap.append(m)
            gap_lo.append(lo)
            gap_hi.append(hi)
            over.append(curves["dont_think"]["mean"][L] - curves["dont_think"]["baseline"][L])
        peak = max(range(n_layers), key=lambda L: gap[L])
        out["gap"] = {"mean": gap, "lo": gap_lo, "hi": gap_hi, "n_pairs": len(pairs), "peak_layer": peak,
                      "peak": gap[peak], "final": gap[-1],
                      "silent_decay_index": (gap[-1] / gap[peak]) if gap[peak] > 0 else None}
        out["dont_think_over_baseline"] = over
        out["think_over_baseline"] = [curves["think"]["mean"][L] - curves["think"]["baseline"][L]
                                      for L in range(n_layers)]
    return out


def markdown_table(summary: dict, model_name: str = "") -> str:
    g = summary.get("gap")
    if not g:
        return "(think / don't-think templates not both present)"
    n = summary["n_layers"]
    picks = sorted({0, n // 3, n // 2, (2 * n) // 3, g["peak_layer"], n - 1})
    lines = [f"| layer | think cos | don't-think cos | baseline (control words) | gap think − don't [95% CI] |",
             "|---|---|---|---|---|"]
    c = summary["curves"]
    for L in picks:
        lines.append(f"| {L} | {c['think']['mean'][L]:.3f} | {c['dont_think']['mean'][L]:.3f} | "
                     f"{c['think']['baseline'][L]:.3f} | {g['mean'][L]:+.3f} [{g['lo'][L]:+.3f}, {g['hi'][L]:+.3f}] |")
    sdi = g["silent_decay_index"]
    lines.append("")
    lines.append(f"{model_name}: peak gap {g['peak']:+.3f} at layer {g['peak_layer']}, final-layer gap {g['final']:+.3f}; "
                 f"silent-decay index (final / peak) = {sdi:.2f}" if sdi is not None else
                 f"{model_name}: no positive gap at any layer (decay index undefined)")
    return "\n".join(lines)


def figure(summaries: dict[str, dict], out_dir: Path, png: bool = True, name: str = "exp4_cosine_vs_layer") -> dict:
    """One panel per model (side by side): think / don't think / other templates with the baseline band."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from .. import plots

    models = list(summaries)
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    colors = {"think": plots.PALETTE[0], "dont_think": plots.PALETTE[1]}
    for j, m in enumerate(models):
        s = summaries[m]
        n = s["n_layers"]
        xs = list(range(n))
        c = s["curves"]
        ref = c.get("think") or next(iter(c.values()))
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=ref["baseline_hi"] + ref["baseline_lo"][::-1], fill="toself",
                                 fillcolor="rgba(120,120,120,0.25)", mode="lines", line=dict(width=0), name="baseline (control words)",
                                 showlegend=(j == 0), legendgroup="base"), row=1, col=j + 1)
        fig.add_trace(go.Scatter(x=xs, y=ref["baseline"], mode="lines", line=dict(color="gray", dash="dot"), showlegend=False,
                                 legendgroup="base"), row=1, col=j + 1)
        for i, (t, cur) in enumerate(sorted(c.items(), key=lambda kv: (kv[0] not in colors, kv[0]))):
            is_main = t in colors
            color = colors.get(t, plots.PALETTE[(i + 2) % len(plots.PALETTE)])
            if is_main:
                fig.add_trace(go.Scatter(x=xs + xs[::-1], y=cur["hi"] + cur["lo"][::-1], fill="toself",
                                         fillcolor=plots._rgba(color, 0.2), mode="lines", line=dict(width=0), showlegend=False,
                                         legendgroup=t, hoverinfo="skip"), row=1, col=j + 1)
            fig.add_trace(go.Scatter(x=xs, y=cur["mean"], name=t, mode="lines", line=dict(color=color, width=3 if is_main else 1),
                                     opacity=1 if is_main else 0.45, legendgroup=t, showlegend=(j == 0)),
                          row=1, col=j + 1)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="cosine(sentence residual, concept vector)", col=1)
    fig.update_layout(title="Exp 4: 'think about X' vs 'don't think about X' — cosine with X's vector by layer",
                      template="plotly_white")
    return {"cosine_vs_layer": plots.save_figure(fig, out_dir / name, png=png, width=600 * len(models) + 200)}
