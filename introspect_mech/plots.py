"""Plotly figures (interactive HTML + static PNG) shared by every experiment's report.

Every figure here is drawn from summary rows that ``report`` recomputes from the
results store; nothing is drawn from hand-entered numbers. PNG export goes through
kaleido, which drives a Chromium; we point it at the system Chromium (Debian package
``chromium``) when one is installed. Without a browser the HTML is still written and
the PNG is skipped with a warning that says how to get it.
"""

from __future__ import annotations

import html
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import plotly.graph_objects as go

from .store import atomic_write_text, atomic_write_with

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def browser_path() -> str | None:
    """A Chromium for kaleido: ``$BROWSER_PATH``, else the system chromium/chrome."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def save_figure(fig: go.Figure, out_base: str | Path, *, png: bool = True, width: int = 900, height: int = 520) -> dict:
    """Write ``out_base.html`` and, if possible, ``out_base.png``.

    The HTML loads ``plotly.min.js`` from its own folder (written once per folder), so a
    folder of figures works offline without repeating the 4.6 MB library in every file.
    """
    base = Path(out_base)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = {}
    html_path = base.with_suffix(".html")
    atomic_write_text(html_path, fig.to_html(include_plotlyjs="directory", full_html=True))
    js = base.parent / "plotly.min.js"
    if not js.exists():
        from plotly.offline import get_plotlyjs

        atomic_write_text(js, get_plotlyjs())
    written["html"] = str(html_path)
    json_path = base.with_suffix(".json")  # the figure spec, embedded by the per-run HTML report
    atomic_write_text(json_path, fig.to_json())
    written["json"] = str(json_path)
    if png:
        bp = browser_path()
        if bp is None:
            warnings.warn("no Chromium found: PNG export skipped (install Debian's `chromium` or set BROWSER_PATH)")
        else:
            os.environ.setdefault("BROWSER_PATH", bp)
            png_path = base.with_suffix(".png")
            atomic_write_with(png_path, lambda p: fig.write_image(str(p), width=width, height=height, scale=1))
            written["png"] = str(png_path)
    return written


def rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def rate_vs_layer(
    rows: Sequence[dict],
    *,
    metric: str,
    group: str = "strength",
    title: str,
    x: str = "layer",
    baseline: dict | None = None,
    baseline_label: str = "control",
    chance: float | None = None,
    y_title: str = "rate",
    group_label: str | None = None,
    fig: go.Figure | None = None,
    subplot: dict | None = None,
    show_legend: bool = True,
) -> go.Figure:
    """Lines of ``row[metric].rate`` vs ``row[x]``, one per value of ``row[group]``, with Wilson CI bands.

    ``row[metric]`` and ``baseline`` are ``stats.Rate``s; the baseline is drawn as a horizontal band,
    e.g. the false-positive rate on control trials; ``chance`` as a dashed line.
    """
    fig = fig if fig is not None else go.Figure()
    sub = subplot or {}
    label = group if group_label is None else group_label
    groups = sorted({r[group] for r in rows}, key=lambda v: (v is None, str(v)))
    for i, gval in enumerate(groups):
        pts = sorted((r for r in rows if r[group] == gval and r.get(metric) and r[metric].n > 0),
                     key=lambda r: r[x])
        if not pts:
            continue
        c = PALETTE[i % len(PALETTE)]
        xs = [r[x] for r in pts]
        ys = [r[metric].rate for r in pts]
        lo = [r[metric].lo for r in pts]
        hi = [r[metric].hi for r in pts]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor=rgba(c, 0.15),
                                 mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False,
                                 legendgroup=str(gval)), **sub)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=f"{label} {gval}".strip(), line=dict(color=c),
            legendgroup=str(gval), showlegend=show_legend,
            customdata=[[r[metric].k, r[metric].n, r[metric].lo, r[metric].hi] for r in pts],
            hovertemplate="%{x}: %{y:.2f} (%{customdata[0]}/%{customdata[1]}, 95% CI %{customdata[2]:.2f}–%{customdata[3]:.2f})<extra></extra>"),
            **sub)
    if baseline is not None and baseline.n > 0:
        fig.add_hrect(y0=baseline.lo, y1=baseline.hi, fillcolor="rgba(120,120,120,0.15)", line_width=0, **sub)
        fig.add_hline(y=baseline.rate, line_dash="dot", line_color="gray",
                      annotation_text=f"{baseline_label} {baseline.rate:.2f} ({baseline.k}/{baseline.n})",
                      annotation_position="top left", **sub)
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dash", line_color="black", annotation_text=f"chance {chance:.2f}", **sub)
    if subplot is None:
        fig.update_layout(title=title, xaxis_title=x, yaxis_title=y_title, yaxis_range=[-0.02, 1.02],
                          template="plotly_white", legend_title=label)
    return fig


def facets_vs_layer(rows: Sequence[dict], *, facet: str, metric: str, group: str, title: str, x: str = "layer",
                    baseline: dict | None = None, baseline_label: str = "control", chance: float | None = None,
                    facet_label: str | None = None) -> go.Figure:
    """``rate_vs_layer`` in one panel per value of ``facet`` (e.g. one panel per strength)."""
    from plotly.subplots import make_subplots

    values = sorted({r[facet] for r in rows}, key=lambda v: (v is None, v))
    values = values or [None]
    flabel = facet if facet_label is None else facet_label
    fig = make_subplots(rows=1, cols=len(values), shared_yaxes=True,
                        subplot_titles=[f"{flabel} {v:g}" if isinstance(v, float) else f"{flabel} {v}" for v in values])
    for j, v in enumerate(values):
        rate_vs_layer([r for r in rows if r[facet] == v], metric=metric, group=group, title=title, x=x,
                      baseline=baseline, baseline_label=baseline_label, chance=chance, group_label="", fig=fig,
                      subplot=dict(row=1, col=j + 1), show_legend=(j == 0))
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_xaxes(title_text=x)
    fig.update_layout(title=title, template="plotly_white", yaxis_title="rate")
    return fig


def heatmap(rows: Sequence[dict], *, metric: str, title: str, x: str = "layer", y: str = "strength") -> go.Figure:
    """``row[metric].rate`` (a ``stats.Rate``) over ``x`` × ``y``, each cell labelled with its interval."""
    xs = sorted({r[x] for r in rows})
    ys = sorted({r[y] for r in rows})
    z, text = [], []
    for yv in ys:
        zr, tr = [], []
        for xv in xs:
            r = next((r for r in rows if r[x] == xv and r[y] == yv), None)
            m = r.get(metric) if r else None
            if m is None or m.n == 0:
                zr.append(None)
                tr.append("")
            else:
                zr.append(m.rate)
                tr.append(f"{m.rate:.2f}<br>[{m.lo:.2f}, {m.hi:.2f}]")
        z.append(zr)
        text.append(tr)
    fig = go.Figure(go.Heatmap(z=z, x=[str(v) for v in xs], y=[str(v) for v in ys], text=text,
                               texttemplate="%{text}", colorscale="Viridis", zmin=min(0, *(v for r in z for v in r if v is not None)) if any(v is not None for r in z for v in r) else 0, zmax=1))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white")
    return fig


def bars_with_ci(rows: Sequence[dict], *, label: str, metric: str, title: str, y_title: str = "rate",
                 series: str | None = None) -> go.Figure:
    """Bars of ``row[metric].rate`` (a ``stats.Rate``) per ``row[label]``, with Wilson error bars."""
    fig = go.Figure()
    keys = sorted({r[series] for r in rows}) if series else [None]
    for i, s in enumerate(keys):
        pts = [r for r in rows if (series is None or r[series] == s) and r.get(metric)]
        fig.add_trace(go.Bar(
            x=[str(r[label]) for r in pts], y=[r[metric].rate for r in pts], name=str(s) if s else metric,
            marker_color=PALETTE[i % len(PALETTE)],
            error_y=dict(type="data", symmetric=False, array=[r[metric].hi - r[metric].rate for r in pts],
                         arrayminus=[r[metric].rate - r[metric].lo for r in pts]),
            customdata=[[r[metric].k, r[metric].n] for r in pts],
            hovertemplate="%{x}: %{y:.2f} (%{customdata[0]}/%{customdata[1]})<extra></extra>"))
    fig.update_layout(title=title, yaxis_title=y_title, yaxis_range=[0, 1.02], template="plotly_white",
                      barmode="group")
    return fig


def transcripts_page(groups: dict[str, list[dict]], *, title: str, fields: Iterable[str], per_group: int = 6,
                     counts: dict[str, int] | None = None) -> str:
    """A self-contained HTML page of example transcripts, one section per outcome (``counts``: how many
    trials each outcome has when ``groups`` holds only examples)."""
    css = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
           "section{margin-bottom:2em}.t{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.6em 0}"
           ".meta{color:#666;font-size:.85em}.resp{white-space:pre-wrap;font-family:ui-monospace,monospace}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    for name, recs in groups.items():
        n = len(recs) if counts is None else counts.get(name, len(recs))
        parts.append(f"<section><h2>{html.escape(name)} <small>({n} trials)</small></h2>")
        if not recs:
            parts.append("<p class='meta'>no trials in this outcome</p>")
        for r in recs[:per_group]:
            meta = " · ".join(f"{f}={html.escape(str(r.get(f)))}" for f in fields if r.get(f) is not None)
            parts.append(f"<div class='t'><div class='meta'>{meta}</div>"
                         f"<div class='resp'>{html.escape(str(r.get('response') or ''))}</div></div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)
