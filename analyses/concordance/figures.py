"""Figures of the concordance analysis: per-head change heatmaps, the top heads, the causal test vs its null."""

from __future__ import annotations

import numpy as np

from .features import FEATURE_TITLES, AttentionFeatures


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
        text = [[f"L{L} H{h}<br>change {m[L, h]:+.4f}<br>95% CI [{ch['lo'][L, h]:+.4f}, {ch['hi'][L, h]:+.4f}]"
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
                                          array=[d["hi"] - d["mean_change"] for d in t],
                                          arrayminus=[d["mean_change"] - d["lo"] for d in t])), row=1, col=c)
        if t and "other_change" in t[0]:
            o = [d["other_change"] for d in t]
            fig.add_trace(go.Bar(x=x, y=[d["mean"] for d in o], marker_color="#ff7f0e",
                                 name="other concept − none (control)", showlegend=(c == 1), legendgroup="o",
                                 error_y=dict(type="data", symmetric=False,
                                              array=[d["hi"] - d["mean"] for d in o],
                                              arrayminus=[d["mean"] - d["lo"] for d in o])), row=1, col=c)
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
