"""``report RUN --compare RUN…``: runs of one experiment from different models or adapters, side by side.

Generic over the registry: each experiment's report declares its headline (``spec.Headline``: series by
layer and strength, and single numbers such as controls); this module lays the runs' headlines out as
Markdown tables (one column per run) and draws each series with one line per run and its interval band.

Runs of models with different depths are aligned by depth (layer / last layer) when their layers differ,
so a 30-layer and an 18-layer model's sweeps at the same depth fractions share rows and x positions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ..stats import Difference, MeanCI, Rate, format_difference, format_mean, format_rate
from .spec import Headline, Series


def unique_labels(names: Sequence[str], runs: Sequence[str | Path]) -> list[str]:
    """One label per run: its model's name, with the run folder's name where two runs share a model."""
    out = []
    for name, run in zip(names, runs):
        label = name if names.count(name) == 1 else f"{name} ({Path(run).name})"
        while label in out:
            label += "'"
        out.append(label)
    return out


def triple(value: Any) -> tuple[float, float, float] | None:
    """(estimate, lo, hi) of a Rate, Difference or MeanCI; None when there is no estimate."""
    if isinstance(value, Rate):
        return None if value.n == 0 else (value.rate, value.lo, value.hi)
    if isinstance(value, Difference):
        return None if value.estimate != value.estimate else (value.estimate, value.lo, value.hi)
    if isinstance(value, MeanCI):
        return None if not value.n or value.mean is None else (value.mean, value.lo, value.hi)
    if isinstance(value, (int, float)):
        return (float(value), float(value), float(value))
    return None


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, Rate):
        return format_rate(value)
    if isinstance(value, Difference):
        return format_difference(value)
    if isinstance(value, MeanCI):
        return format_mean(value, "+.3f")
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _by_depth(series: dict[str, Series]) -> bool:
    """Align by depth: every point has one, and the runs do not all sweep the same layers."""
    layer_sets = {tuple(sorted({p.layer for p in s.points})) for s in series.values()}
    return len(layer_sets) > 1 and all(p.depth is not None for s in series.values() for p in s.points)


def _key(p: Any, depth: bool) -> tuple:
    x = round(p.depth, 2) if depth else p.layer
    return (x is None, x if x is not None else 0, p.strength is None, p.strength or 0)


def series_table(name: str, series: dict[str, Series]) -> str:
    """One Markdown table of a series: a row per (layer or depth, strength), a column per run."""
    labels = list(series)
    depth = _by_depth(series)
    rows: dict[tuple, dict[str, Any]] = {}
    layers: dict[tuple, dict[str, Any]] = {}
    for label, s in series.items():
        for p in s.points:
            k = _key(p, depth)
            rows.setdefault(k, {})[label] = p.value
            layers.setdefault(k, {})[label] = p.layer
    has_strength = any(not k[2] for k in rows)
    head = ["depth (layer per run)" if depth else "layer"] + (["strength"] if has_strength else []) + labels
    lines = [f"**{name}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in sorted(rows):
        if depth:
            first = f"{k[1]:.2f} ({' / '.join(str(layers[k].get(lab, '–')) for lab in labels)})"
        else:
            first = "–" if k[0] else str(k[1])
        cells = [first] + ([("–" if k[2] else f"{k[3]:g}")] if has_strength else [])
        lines.append("| " + " | ".join(cells + [fmt(rows[k].get(lab)) for lab in labels]) + " |")
    base = {lab: s.baseline for lab, s in series.items() if s.baseline is not None}
    if base:
        label = next(s.baseline_label for s in series.values() if s.baseline is not None) or "baseline"
        lines.append("| " + " | ".join([label] + ([""] if has_strength else []) + [fmt(base.get(lab)) for lab in labels])
                     + " |")
    return "\n".join(lines)


def _series_names(headlines: dict[str, Headline]) -> list[str]:
    names: list[str] = []
    for h in headlines.values():
        for s in h.series:
            if s.name not in names:
                names.append(s.name)
    return names


def compare_table(title: str, headlines: dict[str, Headline]) -> str:
    """Every headline series and number of the runs, one column per run."""
    labels = list(headlines)
    parts = [f"Compared runs ({title}): " + ", ".join(f"`{lab}`" for lab in labels) + ". Intervals: 95% (Wilson for "
             "rates, Newcombe for differences of rates, Student t or bootstrap for means)."]
    for name in _series_names(headlines):
        parts.append(series_table(name, {lab: s for lab, h in headlines.items() for s in h.series if s.name == name}))
    scalar_names: list[str] = []
    for h in headlines.values():
        for k, _ in h.scalars:
            if k not in scalar_names:
                scalar_names.append(k)
    if scalar_names:
        vals = {lab: dict(h.scalars) for lab, h in headlines.items()}
        lines = ["**controls and single numbers**", "", "| | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
        for k in scalar_names:
            lines.append(f"| {k} | " + " | ".join(fmt(vals[lab].get(k)) for lab in labels) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48]


def compare_figures(prefix: str, headlines: dict[str, Headline], out_dir: Path, png: bool = True) -> dict:
    """One figure per headline series: a line per run (with its interval band) vs layer or depth, one panel
    per strength; each run's baseline as a dotted line in its colour."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .. import plots

    written = {}
    labels = list(headlines)
    for i, name in enumerate(_series_names(headlines)):
        series = {lab: s for lab, h in headlines.items() for s in h.series if s.name == name}
        depth = _by_depth(series)
        strengths = sorted({p.strength for s in series.values() for p in s.points}, key=lambda v: (v is None, v or 0))
        fig = make_subplots(rows=1, cols=len(strengths), shared_yaxes=True,
                            subplot_titles=[("" if v is None else f"strength {v:g}") for v in strengths])
        for j, lab in enumerate(labels):
            s = series.get(lab)
            if s is None:
                continue
            color = plots.PALETTE[j % len(plots.PALETTE)]
            for c, strength in enumerate(strengths, start=1):
                pts = sorted((p for p in s.points if p.strength == strength and triple(p.value) is not None),
                             key=lambda p: (p.depth if depth else p.layer) or 0)
                if not pts:
                    continue
                xs = [p.depth if depth else p.layer for p in pts]
                t = [triple(p.value) for p in pts]
                lo = [v[1] if v[1] == v[1] else v[0] for v in t]
                hi = [v[2] if v[2] == v[2] else v[0] for v in t]
                fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", mode="lines",
                                         fillcolor=plots.rgba(color, 0.15),
                                         line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=lab),
                              row=1, col=c)
                fig.add_trace(go.Scatter(x=xs, y=[v[0] for v in t], mode="lines+markers", name=lab,
                                         line=dict(color=color), legendgroup=lab, showlegend=(c == 1),
                                         text=[fmt(p.value) for p in pts], hovertemplate="%{x}: %{text}<extra>" + lab
                                         + "</extra>"), row=1, col=c)
                b = triple(s.baseline)
                if b is not None:
                    fig.add_hline(y=b[0], line=dict(color=color, dash="dot", width=1), row=1, col=c)
        kind = next(iter(series.values())).kind
        fig.update_xaxes(title_text="depth (layer / last layer)" if depth else "layer")
        fig.update_yaxes(title_text={"rate": "rate", "difference": "difference of rates"}.get(kind, "mean"), col=1)
        if kind == "rate":
            fig.update_yaxes(range=[-0.02, 1.02])
        base_label = next((s.baseline_label for s in series.values() if s.baseline is not None), "")
        fig.update_layout(title=f"{name} — runs compared (95% CI)" + (f"; dotted: {base_label}" if base_label else ""),
                          template="plotly_white")
        key = f"compare_{_slug(name)}"
        written[key] = plots.save_figure(fig, out_dir / f"{prefix}_compare_{i:02d}_{_slug(name)}", png=png,
                                         width=max(700, 420 * len(strengths) + 200))
    return written
