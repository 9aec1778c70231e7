"""Experiment 3 report: apology rate per condition vs layer, the paper's largest-drop metric, the
transcription check and the logit measure.

The apology rate is the paper's estimand for every grader: 1 − P(the reply claims it intended the
word), over *all* replies. The paper's judge is binary (intent: YES/NO), so a reply that neither
claims intent nor apologises counts as "not intent" there, and it does here: the offline
classifier's three-way verdict (intent / apology / neither) is collapsed the same way for the
primary rate, and the three-way split is shown beside it. Dropping "neither" replies from the
denominator (apology / (apology + intent)) would be another quantity, and one whose missingness
can depend on the condition.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from ...grading.intent import classify_intent
from ...stats import Rate, difference_interval, format_difference, format_mean, format_rate, mean_interval
from ..spec import Headline, Point, RunMeta, Series, depth_of, series_of
from ..thoughts_vs_text.report import repeat_ok

TRANSCRIPTION = ("transcription", "transcription_clean")


def grade(records: Sequence[dict], judge: Any = None) -> list[dict]:
    """Offline classifier by default; with ``judge`` (an ``LLMJudge``) the paper's intended_prefill prompt.

    Per reply: ``intended`` (True / False / None = neither, offline only; the judge has no "unclear"),
    ``apology`` = the paper's "not a claim of intent" (``not intended``; None only without a reply) and
    ``verdict`` ("intent" / "apology" / "neither"). Transcription-check records get ``transcribed``."""
    out: list[dict] = [{} for _ in records]
    idx = []
    for i, r in enumerate(records):
        if r.get("condition") in TRANSCRIPTION:
            if r.get("response") is not None:
                out[i] = {"transcribed": repeat_ok(r)}
        elif r.get("response") is not None:
            idx.append(i)
    if judge is not None:
        verdicts = judge.intended([records[i]["prefilled_word"] for i in idx], [records[i]["response"] for i in idx])
    else:
        verdicts = [classify_intent(records[i]["response"]).intended for i in idx]
    for i, v in zip(idx, verdicts):
        if v is None and judge is not None:  # the judge's own answer was unreadable: a grading failure
            out[i] = {"intended": None, "apology": None, "verdict": "ungraded"}
        else:
            out[i] = {"intended": v, "apology": not bool(v),
                      "verdict": "intent" if v else ("apology" if v is False else "neither")}
    return out


def summarize(records: Sequence[dict], grades: Sequence[dict], n_layers: int | None) -> dict:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r["condition"], r.get("layer"), r.get("strength"))].append(i)
    rows, transcription = [], []
    for (cond, layer, strength), idx in groups.items():
        row = {"condition": cond, "layer": layer, "strength": strength,
               "depth": depth_of(layer, n_layers), "n": len(idx)}
        if cond in TRANSCRIPTION:
            row["transcribed"] = Rate.from_bools(grades[i].get("transcribed") for i in idx)
            transcription.append(row)
            continue
        if any(records[i].get("response") is not None for i in idx):
            verdicts = [grades[i].get("verdict") for i in idx if grades[i].get("verdict") is not None]
            # primary: 1 − P(intent claim) over every reply (the paper's estimand, any grader)
            row["apology"] = Rate.from_bools(grades[i].get("apology") for i in idx)
            row["split"] = {v: verdicts.count(v) for v in ("intent", "apology", "neither", "ungraded")}
            row["unclear"] = row["split"]["neither"]
        lo = [records[i]["intent_logodds"] for i in idx if records[i].get("intent_logodds") is not None]
        if lo:
            row["intent_logodds"] = mean_interval(lo)
        rows.append(row)
    key = lambda r: (r["condition"], r["layer"] if r["layer"] is not None else -1, r["strength"] or 0)  # noqa: E731
    rows.sort(key=key)
    transcription.sort(key=key)
    by = {(r["condition"], r["layer"], r["strength"]): r for r in rows}
    base = by.get(("no_injection", None, None))
    drops = []
    for r in rows:
        if r["condition"] != "matching_concept" or "apology" not in r or r["apology"].n == 0:
            continue
        rnd = by.get(("random_other_concept", r["layer"], r["strength"]))
        refs = [x for x in (base, rnd) if x and "apology" in x and x["apology"].n]
        if not refs:
            continue
        ref = min(refs, key=lambda x: x["apology"].rate)  # the paper: drop vs min(no-injection, random)
        d = difference_interval(ref["apology"].k, ref["apology"].n, r["apology"].k, r["apology"].n)
        drops.append({"layer": r["layer"], "strength": r["strength"], "reference": ref["condition"], "drop": d,
                      "depth": r["depth"]})
    best = max(drops, key=lambda d: d["drop"].estimate, default=None)
    return {"cells": rows, "drops": drops, "largest_drop": best, "logit_effects": logit_effects(records),
            "transcription": transcription,
            "apology_estimand": "1 - P(intent claim), over all replies (the paper's binary judge question)"}


def logit_effects(records: Sequence[dict]) -> list[dict]:
    """Paired effect of the matching concept on the intent log-odds, per layer and strength.

    For each sentence/word pair: matching − random other concept (same layer, strength, window)
    and matching − no injection; mean over pairs with a normal interval. Pairing removes the
    pair-to-pair spread that dominates the per-condition intervals."""
    val: dict[tuple, float] = {}
    for r in records:
        if r.get("intent_logodds") is None:
            continue
        pair = (r.get("extra") or {}).get("pair")
        val[(r["condition"], r.get("layer"), r.get("strength"), pair)] = r["intent_logodds"]
    cells = sorted({(k[1], k[2]) for k in val if k[0] == "matching_concept"}, key=lambda c: (c[0], c[1]))
    out = []
    for layer, strength in cells:
        pairs = [k[3] for k in val if k[:3] == ("matching_concept", layer, strength)]
        for vs, key in (("random_other_concept", lambda p: ("random_other_concept", layer, strength, p)),
                        ("no_injection", lambda p: ("no_injection", None, None, p))):
            diffs = [val[("matching_concept", layer, strength, p)] - val[key(p)] for p in pairs if key(p) in val]
            if diffs:
                out.append({"layer": layer, "strength": strength, "vs": vs, "effect": mean_interval(diffs)})
    return out


_fmt, _fmt_m = format_rate, format_mean


def markdown_table(summary: dict) -> str:
    lines = ["| condition | layer (depth) | strength | apology rate = 1 − P(intent claim), all replies | "
             "split intent / apology / neither | intent log-odds |",
             "|---|---|---|---|---|---|"]
    for r in summary["cells"]:
        depth = f"{r['layer']} ({r['depth']:.2f})" if r["layer"] is not None else "–"
        sp = r.get("split")
        split = (f"{sp['intent']} / {sp['apology']} / {sp['neither']}"
                 + (f" (+{sp['ungraded']} ungraded)" if sp.get("ungraded") else "")) if sp else "–"
        lines.append(f"| {r['condition']} | {depth} | {r['strength'] if r['strength'] is not None else '–'} | "
                     f"{_fmt(r.get('apology'))} | {split} | {_fmt_m(r.get('intent_logodds'))} |")
    tr = summary.get("transcription") or []
    if tr:
        clean = next((r for r in tr if r["condition"] == "transcription_clean"), None)
        lines += ["", "Transcription check (the paper's: Exp 2's repeat prompt, the matching concept injected on the "
                  "sentence at the same cell; correct = the sentence appears verbatim in the reply):", "",
                  "| layer (depth) | strength | transcribed (injected) | transcribed (no injection) |", "|---|---|---|---|"]
        for r in (x for x in tr if x["condition"] == "transcription"):
            lines.append(f"| {r['layer']} ({r['depth']:.2f}) | {r['strength']:g} | {_fmt(r['transcribed'])} | "
                         f"{_fmt(clean['transcribed']) if clean else '–'} |")
    eff = [e for e in summary.get("logit_effects", []) if e["vs"] == "random_other_concept" and e["effect"].n]
    if eff:
        top = max(eff, key=lambda e: e["effect"].mean)
        above = [e for e in eff if e["effect"].lo is not None and e["effect"].lo > 0]
        lines.append("")
        lines.append(f"Paired logit effect (matching − random concept, per pair): {len(above)} of {len(eff)} "
                     f"layer × strength cells have a 95% interval above 0; the largest is "
                     f"{_fmt_m(top['effect'])} at layer {top['layer']}, strength {top['strength']:g} "
                     "(intervals not corrected for the number of cells).")
    b = summary.get("largest_drop")
    if b:
        d = b["drop"]
        lines.append("")
        lines.append(f"Largest drop in apology rate (matching concept vs min(no injection, random concept)): "
                     f"{format_difference(d)} at layer {b['layer']}, strength "
                     f"{b['strength']:g} (reference: {b['reference']}). Selected as the maximum over cells: "
                     "an optimistic, in-sample number.")
    return "\n".join(lines)


def figures(summary: dict, out_dir: Path, png: bool = True) -> dict:
    from ... import plots

    rows = [r for r in summary["cells"] if r["layer"] is not None]
    base = next((r for r in summary["cells"] if r["condition"] == "no_injection"), None)
    written = {}
    if any("apology" in r for r in rows):
        written["apology"] = plots.save_figure(plots.facets_vs_layer(
            [r for r in rows if "apology" in r], facet="strength", metric="apology", group="condition",
            facet_label="strength", title="Exp 3: apology rate = 1 − P(intent claim), all replies, by condition vs "
                                          "layer (95% CI)",
            baseline=base.get("apology") if base else None, baseline_label="no injection"),
            out_dir / "exp3_apology_vs_layer", png=png, width=1400)
    tr = [r for r in summary.get("transcription") or [] if r["condition"] == "transcription"]
    if tr:
        clean = next((r for r in summary["transcription"] if r["condition"] == "transcription_clean"), None)
        written["transcription"] = plots.save_figure(plots.facets_vs_layer(
            tr, facet="strength", metric="transcribed", group="condition", facet_label="strength",
            title="Exp 3 transcription check: sentence repeated verbatim under the matching injection (95% CI)",
            baseline=clean["transcribed"] if clean else None, baseline_label="no injection"),
            out_dir / "exp3_transcription_vs_layer", png=png, width=1400)
    lo_rows = [r for r in rows if "intent_logodds" in r]
    if lo_rows:
        fig = _mean_lines(lo_rows, group="condition", metric="intent_logodds", name=lambda g, s: f"{g} s={s:g}")
        if base and "intent_logodds" in base:
            fig.add_hline(y=base["intent_logodds"].mean, line_dash="dot", annotation_text="no injection")
        fig.update_layout(title="Exp 3 (no generation): log-odds of an intent reply vs an apology reply",
                          xaxis_title="layer", yaxis_title="log P(intent) − log P(apology)", template="plotly_white")
        written["logodds"] = plots.save_figure(fig, out_dir / "exp3_intent_logodds_vs_layer", png=png)
    eff = [e for e in summary.get("logit_effects", []) if e["effect"].n and e["layer"] is not None]
    if eff:
        fig = _mean_lines(eff, group="vs", metric="effect",
                          name=lambda g, s: f"matching − {g.replace('_', ' ')}, s={s:g}")
        fig.add_hline(y=0, line_color="grey")
        fig.update_layout(title="Exp 3: paired effect of the matching concept on intent log-odds (mean over pairs, 95% CI)",
                          xaxis_title="layer", yaxis_title="Δ log-odds (intent − apology)", template="plotly_white")
        written["logit_effect"] = plots.save_figure(fig, out_dir / "exp3_logit_effect_vs_layer", png=png)
    return written


def _mean_lines(rows: Sequence[dict], *, group: str, metric: str, name: Any) -> Any:
    """One line per (group, strength) of ``row[metric]['mean']`` vs layer, with asymmetric CI error bars."""
    import plotly.graph_objects as go

    from ... import plots

    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    for i, g in enumerate(sorted({r[group] for r in rows})):
        for j, s in enumerate(sorted({r["strength"] for r in rows})):
            pts = sorted((r for r in rows if r[group] == g and r["strength"] == s), key=lambda r: r["layer"])
            m = [r[metric] for r in pts]
            fig.add_trace(go.Scatter(
                x=[r["layer"] for r in pts], y=[x.mean for x in m], mode="lines+markers", name=name(g, s),
                line=dict(color=plots.PALETTE[i % len(plots.PALETTE)], dash=dashes[j % len(dashes)]),
                error_y=dict(type="data", symmetric=False, array=[x.hi - x.mean for x in m],
                             arrayminus=[x.mean - x.lo for x in m])))
    return fig


def headline(summary: dict) -> Headline:
    """Apology rates per condition, their paired drop, the transcription check and the logit measure's
    paired effect, by layer and strength: what ``report --compare`` shows of an Exp 3 run."""
    rows = [r for r in summary["cells"] if r["layer"] is not None]
    by = {(r["condition"], r["layer"], r["strength"]): r for r in summary["cells"]}
    base = by.get(("no_injection", None, None))
    series = []
    for cond in ("matching_concept", "random_other_concept", "question_turn"):
        sel = [r for r in rows if r["condition"] == cond and "apology" in r]
        if sel:
            series.append(series_of(f"apology rate: {cond.replace('_', ' ')}", sel, "apology",
                                    baseline=base.get("apology") if base else None, baseline_label="no injection"))
    drops = summary.get("drops") or []
    if drops:
        series.append(Series("apology drop: matching vs min(no injection, random)",
                             tuple(Point(d["layer"], d["strength"], d["drop"], d.get("depth")) for d in drops),
                             "difference"))
    tr = [r for r in summary.get("transcription") or [] if r["condition"] == "transcription"]
    if tr:
        clean = next((r for r in summary["transcription"] if r["condition"] == "transcription_clean"), None)
        series.append(series_of("transcription check: sentence repeated", tr, "transcribed",
                                baseline=clean["transcribed"] if clean else None, baseline_label="no injection"))
    for cond in ("matching_concept", "random_other_concept"):
        sel = [r for r in rows if r["condition"] == cond and "intent_logodds" in r]
        if sel:
            series.append(series_of(f"intent log-odds: {cond.replace('_', ' ')}", sel, "intent_logodds", kind="mean",
                                    baseline=base.get("intent_logodds") if base else None,
                                    baseline_label="no injection"))
    eff = [e for e in summary.get("logit_effects") or [] if e["vs"] == "random_other_concept" and e["layer"] is not None]
    if eff:
        series.append(Series("paired logit effect: matching − random concept",
                             tuple(Point(e["layer"], e["strength"], e["effect"], e.get("depth")) for e in eff), "mean"))
    scalars: list[tuple[str, Any]] = []
    if base is not None:
        scalars += [("no injection: apology rate", base.get("apology")),
                    ("no injection: intent log-odds", base.get("intent_logodds"))]
    if summary.get("largest_drop"):
        scalars.append(("largest apology drop (in-sample maximum)", summary["largest_drop"]["drop"]))
    return Headline(tuple(series), tuple((k, v) for k, v in scalars if v is not None))


class PrefillIntentReport:
    """Exp 3's report (``spec.ExperimentReport``)."""

    def make_grader(self, name: str, *, judge_url: str | None, cache_path: Path) -> Any:
        from ...grading.factory import make_intent_judge

        return make_intent_judge(name, base_url=judge_url, cache_path=cache_path)

    def grade(self, records: Sequence[dict], grader: Any) -> list[dict]:
        return grade(records, grader)

    def summarize(self, records: Sequence[dict], grades: Sequence[dict], meta: RunMeta) -> dict:
        return summarize(records, grades, meta.n_layers)

    def table(self, summary: dict) -> str:
        return markdown_table(summary)

    def figures(self, summary: dict, out_dir: Path, png: bool) -> dict:
        return figures(summary, out_dir, png)

    def headline(self, summary: dict) -> Headline:
        return headline(summary)
