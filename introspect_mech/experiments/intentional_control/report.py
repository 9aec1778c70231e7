"""Experiment 4 report: cosine-by-layer curves per template against the spread of the control words,
per-pair percentile ranks, paired gaps for every template pair, and decay indices with bootstrap
intervals.

Why a spread and not a standard error: "above baseline" should mean "above what an unrelated word's
vector gets", and the cosines of the 100 control words scatter with an SD of about 0.06-0.09 per pair,
while the standard error of their mean is about 0.002 and shrinks with n. The band is therefore the
5-95 % range of the control words' cosines (mean over pairs; mean ± SD for runs that did not store
quantiles), and each pair's target is ranked among its own control words.

Template pairs (each ``positive − negative``, paired by sentence/word): think / don't think, the
incentives (rewarded / punished, happy / sad, charity / terrorist), and the four control formats of
the paper ("There is [no] such thing as {word}", ...), which test whether affirmative vs negative
phrasing alone moves the representation.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from ...stats import MeanCI, Rate, bootstrap_interval, mean_interval
from ..spec import Headline, Point, RunMeta, Series

TEMPLATE_PAIRS = (("think", "dont_think"), ("rewarded", "punished"), ("happy", "sad"), ("charity", "terrorist"),
                  ("format_0", "format_1"), ("format_2", "format_3"), ("format_4", "format_5"),
                  ("format_6", "format_7"))
N_BOOT = 2000


def _mean_ci(xs: list[float]) -> tuple[float, float, float]:
    d = mean_interval(xs)
    return d.mean, d.lo, d.hi


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _by_pair(recs: Sequence[dict]) -> dict[int, dict]:
    return {r["extra"]["pair"]: r for r in recs}


def decay_index(curves: Sequence[Sequence[float]]) -> float | None:
    """final / peak of the mean curve over ``curves`` (one per pair, per layer); None if the peak is not > 0."""
    if not curves:
        return None
    n_layers = len(curves[0])
    mean = [_mean([c[L] for c in curves]) for L in range(n_layers)]
    peak = max(mean)
    return mean[-1] / peak if peak > 0 else None


def curve_summary(per_pair: dict[int, list[float]], n_layers: int, seed: int = 0) -> dict:
    """Mean per layer with t intervals over pairs, peak, final, and the decay index with a bootstrap
    interval over pairs (the peak layer is re-chosen in every resample)."""
    pairs = sorted(per_pair)
    curves = [per_pair[p] for p in pairs]
    mean, lo, hi = [], [], []
    for L in range(n_layers):
        m, a, b = _mean_ci([c[L] for c in curves])
        mean.append(m)
        lo.append(a)
        hi.append(b)
    peak = max(range(n_layers), key=lambda L: mean[L]) if curves else 0
    boot = bootstrap_interval(curves, decay_index, n_boot=N_BOOT, seed=seed)
    return {"mean": mean, "lo": lo, "hi": hi, "n_pairs": len(pairs), "peak_layer": peak,
            "peak": mean[peak] if curves else None, "final": mean[-1] if curves else None,
            "decay_index": boot["estimate"], "decay_index_lo": boot["lo"], "decay_index_hi": boot["hi"],
            "decay_index_undefined_resamples": boot["n_undefined"], "decay_index_n_boot": boot["n_boot"]}


def paired_gap(by_t: dict[str, list[dict]], pos: str, neg: str, n_layers: int) -> dict | None:
    """``pos − neg`` target cosine per pair (same sentence and word), summarised per layer."""
    a, b = _by_pair(by_t.get(pos, [])), _by_pair(by_t.get(neg, []))
    pairs = sorted(set(a) & set(b))
    if not pairs:
        return None
    diffs = {p: [a[p]["cos_target"][L] - b[p]["cos_target"][L] for L in range(n_layers)] for p in pairs}
    return {"positive": pos, "negative": neg, **curve_summary(diffs, n_layers)}


def summarize(records: Sequence[dict]) -> dict:
    by_t: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_t[r["condition"]].append(r)
    n_layers = len(records[0]["cos_target"]) if records else 0
    curves = {}
    for t, recs in by_t.items():
        has_q = all(r.get("cos_control_q05") is not None for r in recs)
        has_pct = all(r.get("target_percentile") is not None for r in recs)
        c = {"n": len(recs), "mean": [], "lo": [], "hi": [], "baseline": [], "baseline_sd": [], "baseline_lo": [],
             "baseline_hi": [], "band": ("5-95 % of the control words' cosines (mean over pairs)" if has_q else
                                         "mean ± SD of the control words' cosines (mean over pairs)")}
        if has_pct:
            c.update({"percentile": [], "percentile_lo": [], "percentile_hi": [], "above_q95": []})
        for L in range(n_layers):
            m, lo, hi = _mean_ci([r["cos_target"][L] for r in recs])
            base = _mean([r["cos_control_mean"][L] for r in recs])
            sd = _mean([r["cos_control_sd"][L] for r in recs])
            if has_q:
                blo, bhi = _mean([r["cos_control_q05"][L] for r in recs]), _mean([r["cos_control_q95"][L] for r in recs])
            else:
                blo, bhi = base - sd, base + sd
            for k, v in (("mean", m), ("lo", lo), ("hi", hi), ("baseline", base), ("baseline_sd", sd),
                         ("baseline_lo", blo), ("baseline_hi", bhi)):
                c[k].append(v)
            if has_pct:
                pm, plo, phi = _mean_ci([r["target_percentile"][L] for r in recs])
                c["percentile"].append(pm)  # a mean of values in [0, 1]: its interval is clipped to [0, 1]
                c["percentile_lo"].append(max(0.0, plo) if plo == plo else plo)
                c["percentile_hi"].append(min(1.0, phi) if phi == phi else phi)
                if has_q:
                    c["above_q95"].append(Rate.from_bools(r["cos_target"][L] > r["cos_control_q95"][L]
                                                          for r in recs))
        curves[t] = c
    out: dict = {"n_layers": n_layers, "curves": curves, "template_gaps": {}}
    for pos, neg in TEMPLATE_PAIRS:
        g = paired_gap(by_t, pos, neg, n_layers)
        if g is not None:
            out["template_gaps"][f"{pos} − {neg}"] = g
    g = out["template_gaps"].get("think − dont_think")
    if g is not None:
        # kept under its old name (analyses.thought_control and older summaries read it)
        out["gap"] = dict(g, silent_decay_index=g["decay_index"])
        th = _by_pair(by_t["think"])
        over = {p: [r["cos_target"][L] - r["cos_control_mean"][L] for L in range(n_layers)] for p, r in th.items()}
        out["think_over_baseline_curve"] = curve_summary(over, n_layers)
        out["think_over_baseline"] = out["think_over_baseline_curve"]["mean"]
        out["dont_think_over_baseline"] = [curves["dont_think"]["mean"][L] - curves["dont_think"]["baseline"][L]
                                           for L in range(n_layers)]
    return out


def _ci(m: float, lo: float, hi: float, fmt: str = "+.3f") -> str:
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def _decay(g: dict) -> str:
    d = g.get("decay_index")
    if d is None:
        return "undefined (no positive peak)"
    return f"{d:.2f} [{g['decay_index_lo']:.2f}, {g['decay_index_hi']:.2f}]"


def markdown_table(summary: dict, model_name: str = "") -> str:
    g = summary.get("gap")
    if not g:
        return "(think / don't-think templates not both present)"
    n = summary["n_layers"]
    picks = sorted({0, n // 3, n // 2, (2 * n) // 3, g["peak_layer"], n - 1})
    c = summary["curves"]
    th = c["think"]
    pct = "percentile" in th
    lines = ["| layer | think cos | don't-think cos | baseline: control words, mean (band) | "
             + ("think percentile among control words [95% CI] | " if pct else "")
             + "gap think − don't [95% CI] |",
             "|---|---|---|---|" + ("---|" if pct else "") + "---|"]
    for L in picks:
        lines.append(f"| {L} | {th['mean'][L]:.3f} | {c['dont_think']['mean'][L]:.3f} | "
                     f"{th['baseline'][L]:.3f} ({th['baseline_lo'][L]:.3f} – {th['baseline_hi'][L]:.3f}) | "
                     + (f"{_ci(th['percentile'][L], th['percentile_lo'][L], th['percentile_hi'][L], '.2f')} | "
                        if pct else "")
                     + f"{_ci(g['mean'][L], g['lo'][L], g['hi'][L])} |")
    lines.append("")
    lines.append(f"Band: {th['band']}.")
    tg = summary.get("template_gaps") or {}
    if tg:
        lines += ["", "| template pair (positive − negative) | pairs | peak gap (layer) [95% CI] | final-layer gap "
                  "[95% CI] | decay index final/peak [95% bootstrap CI] |", "|---|---|---|---|---|"]
        for name, t in tg.items():
            P = t["peak_layer"]
            lines.append(f"| {name} | {t['n_pairs']} | {_ci(t['mean'][P], t['lo'][P], t['hi'][P])} ({P}) | "
                         f"{_ci(t['mean'][-1], t['lo'][-1], t['hi'][-1])} | {_decay(t)} |")
    lines.append("")
    tob = summary.get("think_over_baseline_curve")
    lines.append(f"{model_name}: think − don't-think gap peaks at {g['peak']:+.3f} (layer {g['peak_layer']}), "
                 f"final {g['final']:+.3f}; silent-decay index (final / peak) {_decay(g)}"
                 + (f"; think over baseline: peak {tob['peak']:+.3f} (layer {tob['peak_layer']}), final "
                    f"{tob['final']:+.3f}, index {_decay(tob)}" if tob else "")
                 + f" (bootstrap over pairs, {N_BOOT} resamples; the peak is re-chosen in each).")
    return "\n".join(lines)


def figure(summaries: dict[str, dict], out_dir: Path, png: bool = True, name: str = "exp4_cosine_vs_layer") -> dict:
    """One panel per model (side by side): think / don't think / other templates with the baseline band."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from ... import plots

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
                                 fillcolor="rgba(120,120,120,0.25)", mode="lines", line=dict(width=0),
                                 name=f"baseline: {ref.get('band', 'control words')}",
                                 showlegend=(j == 0), legendgroup="base"), row=1, col=j + 1)
        fig.add_trace(go.Scatter(x=xs, y=ref["baseline"], mode="lines", line=dict(color="gray", dash="dot"), showlegend=False,
                                 legendgroup="base"), row=1, col=j + 1)
        for i, (t, cur) in enumerate(sorted(c.items(), key=lambda kv: (kv[0] not in colors, kv[0]))):
            is_main = t in colors
            color = colors.get(t, plots.PALETTE[(i + 2) % len(plots.PALETTE)])
            if is_main:
                fig.add_trace(go.Scatter(x=xs + xs[::-1], y=cur["hi"] + cur["lo"][::-1], fill="toself",
                                         fillcolor=plots.rgba(color, 0.2), mode="lines", line=dict(width=0), showlegend=False,
                                         legendgroup=t, hoverinfo="skip"), row=1, col=j + 1)
            fig.add_trace(go.Scatter(x=xs, y=cur["mean"], name=t, mode="lines", line=dict(color=color, width=3 if is_main else 1),
                                     opacity=1 if is_main else 0.45, legendgroup=t, showlegend=(j == 0)),
                          row=1, col=j + 1)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="cosine(sentence residual, concept vector)", col=1)
    fig.update_layout(title="Exp 4: 'think about X' vs 'don't think about X' — cosine with X's vector by layer",
                      template="plotly_white")
    written = {"cosine_vs_layer": plots.save_figure(fig, out_dir / name, png=png, width=600 * len(models) + 200)}
    if any(s.get("template_gaps") for s in summaries.values()):
        fig2 = make_subplots(rows=1, cols=len(models), subplot_titles=models)
        for j, m in enumerate(models):
            xs = list(range(summaries[m]["n_layers"]))
            for i, (pair, g) in enumerate((summaries[m].get("template_gaps") or {}).items()):
                color = plots.PALETTE[i % len(plots.PALETTE)]
                fmt_pair = pair.startswith("format_")
                fig2.add_trace(go.Scatter(x=xs + xs[::-1], y=g["hi"] + g["lo"][::-1], fill="toself",
                                          fillcolor=plots.rgba(color, 0.12), mode="lines", line=dict(width=0),
                                          showlegend=False, legendgroup=pair, hoverinfo="skip"), row=1, col=j + 1)
                fig2.add_trace(go.Scatter(x=xs, y=g["mean"], name=pair, mode="lines", legendgroup=pair,
                                          line=dict(color=color, dash="dot" if fmt_pair else "solid"),
                                          showlegend=(j == 0)), row=1, col=j + 1)
            fig2.add_hline(y=0, line=dict(color="gray", width=1), row=1, col=j + 1)
        fig2.update_xaxes(title_text="layer")
        fig2.update_yaxes(title_text="paired gap in cosine (positive − negative)", col=1)
        fig2.update_layout(title="Exp 4: paired gaps per template pair (mean over pairs, 95% t CI); dotted: the "
                                 "paper's control formats", template="plotly_white")
        written["template_gaps"] = plots.save_figure(fig2, out_dir / f"{name}_template_gaps", png=png,
                                                     width=600 * len(models) + 300)
    return written


def _curve(name: str, c: dict, n_layers: int, n: int) -> Series:
    """A per-layer curve of the summary (``mean``/``lo``/``hi`` lists) as a series of t intervals."""
    return Series(name, tuple(Point(L, None, MeanCI(c["mean"][L], c["lo"][L], c["hi"][L], n),
                                    L / (n_layers - 1) if n_layers > 1 else None) for L in range(n_layers)), "mean")


def headline(summary: dict) -> Headline:
    """The think / don't-think cosines and their paired gap by layer (compared by depth across models of
    different sizes), and the peak, final and decay index of every template pair."""
    n = summary["n_layers"]
    c = summary["curves"]
    series = [_curve(f"cosine with X's vector: {t.replace('_', ' ')}", c[t], n, c[t]["n"])
              for t in ("think", "dont_think") if t in c]
    g = summary.get("gap")
    if g:
        series.insert(0, _curve("think − don't-think gap (paired)", g, n, g["n_pairs"]))
    scalars: list[tuple[str, Any]] = []
    for pair, t in (summary.get("template_gaps") or {}).items():
        P = t["peak_layer"]
        scalars += [(f"{pair}: peak gap (layer {P})", MeanCI(t["mean"][P], t["lo"][P], t["hi"][P], t["n_pairs"])),
                    (f"{pair}: final-layer gap", MeanCI(t["mean"][-1], t["lo"][-1], t["hi"][-1], t["n_pairs"])),
                    (f"{pair}: decay index final/peak (bootstrap)",
                     None if t["decay_index"] is None else
                     MeanCI(t["decay_index"], t["decay_index_lo"], t["decay_index_hi"], t["n_pairs"]))]
    return Headline(tuple(series), tuple((k, v) for k, v in scalars if v is not None))


class IntentionalControlReport:
    """Exp 4's report (``spec.ExperimentReport``): nothing is graded; cosines are summarised."""

    def make_grader(self, name: str, *, judge_url: str | None, cache_path: Path) -> None:
        return None

    def grade(self, records: Sequence[dict], grader: None) -> list[None]:
        return [None] * len(records)

    def summarize(self, records: Sequence[dict], grades: Sequence[None], meta: RunMeta) -> dict:
        return {**summarize(records), "model_name": meta.model_name}

    def table(self, summary: dict) -> str:
        return markdown_table(summary, summary.get("model_name", ""))

    def figures(self, summary: dict, out_dir: Path, png: bool) -> dict:
        return figure({summary.get("model_name", "model"): summary}, out_dir, png)

    def compare_figures(self, summaries: dict[str, dict], out_dir: Path, png: bool) -> dict:
        """With ``--compare``: the same figures with one panel per run, side by side."""
        return figure(summaries, out_dir, png)

    def headline(self, summary: dict) -> Headline:
        return headline(summary)
