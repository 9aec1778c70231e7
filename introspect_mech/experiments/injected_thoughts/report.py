"""Experiment 1 report: grade stored responses, compute rates with CIs, pick the best cell honestly, draw figures.

Everything is recomputed from ``results.jsonl``: change the grader and re-run the
report, the sweep is not touched.

Headline number without selection bias: concepts are split in two halves by a hash of
the word; the best (layer, strength) is chosen by net detection on one half and its
success rate is read on the *other* half (and vice versa); the two held-out readings
are pooled into one rate with a Wilson interval.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...grading.base import GradeRequest, Grader, Grades
from ...stats import Rate, difference_interval, format_difference, format_rate, net_detection
from ..spec import Headline, RunMeta, series_of

INJECTED_LIKE = ("injected", "random_vector", "random_vector_fixed", "negated", "scaling")
YES_RE = re.compile(r"^\W*(?:\w+\W+){0,4}?(yes|yeah|yep|correct|true|absolutely|indeed)\b", re.I)
NO_RE = re.compile(r"^\W*(?:\w+\W+){0,4}?(no|nope|not|false|incorrect|never|cannot|can't)\b", re.I)


def says_yes(text: str) -> bool | None:
    """Yes/no of a yes-bias answer from its first five words (whichever comes first); None if neither."""
    y, n = YES_RE.search(text), NO_RE.search(text)
    if y and (not n or y.start(1) < n.start(1)):
        return True
    if n:
        return False
    return None


def _question(rec: dict) -> str:
    return "open_question" if rec["condition"] == "alt_prompt" else "injected_thoughts"


def grade_records(records: Sequence[dict], grader: Grader) -> list[Grades]:
    """Grade every record blind to its condition: the grader sees the prompt, the response and a word."""
    reqs = [GradeRequest(prompt=r["prompt"], response=r["response"], word=(r.get("concept") or None),
                         question=_question(r)) for r in records]
    return grader.grade_many(reqs)


def outcome(rec: dict, g: Grades) -> str:
    """The paper's qualitative outcomes, for the transcript pages."""
    if g.coherent is False:
        return "incoherent ('brain damage')"
    if g.correct_id:
        return "success (detected and identified)"
    identifies = bool(g.raw.get("identifies_word")) or bool(g.thinking_about_word)
    if g.affirmative and identifies and g.before_mention is False:
        return "delayed detection (word first, claim after)"
    if g.affirmative:
        return "detected, not identified"
    if g.thinking_about_word:
        return "unconscious influence (word, no detection)"
    return "not detected"


def _key(rec: dict) -> tuple:
    return (rec["condition"], rec.get("layer"), rec.get("strength"))


def heldout_fold(word: str | None) -> int:
    """The half (0 or 1) a concept word falls in for held-out cell selection: a hash of the word, so the split
    is the same in every run, model and module that selects a cell on one half and reads it on the other."""
    return hashlib.sha256((word or "").lower().encode()).digest()[0] % 2


def _rate(vals) -> Rate:
    return Rate.from_bools(vals)


@dataclass(frozen=True)
class AnswerRate(Rate):
    """The "yes" rate of yes-bias answers; ``unparsed`` answers (neither yes nor no) are left out of k and n."""

    unparsed: int = 0
    asked: int = 0

    @classmethod
    def of_answers(cls, answers: Sequence[bool | None]) -> AnswerRate:
        r = Rate.from_bools(answers)
        return cls(r.k, r.n, r.rate, r.lo, r.hi, sum(a is None for a in answers), len(answers))


def _cell_rows(records: Sequence[dict], grades: Sequence[Grades], n_layers: int | None, by_category: bool = False):
    cells: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        k = _key(r) + ((r.get("category"),) if by_category else ())
        cells[k].append(i)
    rows = []
    for k, idx in cells.items():
        recs = [records[i] for i in idx]
        gs = [grades[i] for i in idx]
        cond, layer, strength = k[:3]
        q = "open_question" if cond == "alt_prompt" else "injected_thoughts"
        doses = [r["dose"] for r in recs if r.get("dose") is not None]
        row = {
            "condition": cond, "layer": layer, "strength": strength,
            "depth": (layer / (n_layers - 1)) if (layer is not None and n_layers) else None,
            "n": len(idx),
            "success": _rate(g.success_for(q) for g in gs),
            "affirmative": _rate(g.affirmative for g in gs),
            "coherent": _rate(g.coherent for g in gs),
            "thinking_about_word": _rate(g.thinking_about_word for g in gs),
            "mean_dose": (sum(doses) / len(doses)) if doses else None,
            **internality(gs),
        }
        if by_category:
            row["category"] = k[3]
        if cond.startswith("yes_bias"):
            answers = [says_yes(r["response"]) for r in recs]
            row["says_yes"] = Rate.from_bools(answers)
            row["yes_unparsed"] = sum(a is None for a in answers)
        rows.append(row)
    rows.sort(key=lambda r: (r["condition"], r["layer"] is None, r["layer"] or 0, r["strength"] or 0,
                             r.get("category") or ""))
    return rows


def identified_any_order(g: Grades) -> bool | None:
    """Claims detection and identifies the word, in either order (None when the grader does not judge it)."""
    v = g.raw.get("detects_and_identifies")
    return None if v is None else bool(v)


def internality(grades: Sequence[Grades]) -> dict[str, Rate]:
    """The paper's internality criterion, "detect before mention": of the trials that claim detection and
    identify the word in *any* order, the share whose claim comes before (or with) the first mention of
    the word or a related concept. A model that says the word first and then "notices" it could have read
    the thought off its own output; the paper counts only the detection that precedes the mention. The
    success rate already requires it; this rate says how much of the any-order identification it removes.

    Graders that do not judge the order (an LLM judge) leave both rates empty (n = 0)."""
    any_order = [identified_any_order(g) for g in grades]
    first = [bool(g.correct_id) for g, a in zip(grades, any_order) if a]
    return {"identified_any_order": Rate.from_bools(any_order), "detect_before_mention": Rate.from_bools(first)}


def _question_index(rec: dict) -> int:
    return int(str(rec["prompt_key"]).split(":")[1])


def yes_bias_comparison(records: Sequence[dict]) -> dict:
    """Each injected cell's 'yes' rate next to the clean 'yes' rate on *the same* questions.

    A cell asks all 20 questions or a per-cell subset (``injected_thoughts.yes_bias_questions``); its
    reference is the clean answers to exactly those questions, so the comparison is not confounded
    by which questions were asked (the 10 factual ones draw other answers than the 10 about the
    model). Answers that open with neither yes nor no are unparseable: counted on both sides, left
    out of both rates. The difference has a Newcombe interval, which treats the two sides as
    independent (conservative when answers to the same question agree)."""
    clean: dict[int, list[bool | None]] = defaultdict(list)
    for r in records:
        if r["condition"] == "yes_bias_clean":
            clean[_question_index(r)].append(says_yes(r.get("response") or ""))
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["condition"] == "yes_bias":
            cells[(r.get("layer"), r.get("strength"))].append(r)

    side = AnswerRate.of_answers
    rows, all_inj, all_ref = [], [], []
    for (layer, strength), recs in sorted(cells.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0)):
        qs = sorted({_question_index(r) for r in recs})
        inj = [says_yes(r.get("response") or "") for r in recs]
        ref = [a for q in qs for a in clean.get(q, [])]
        all_inj += inj
        all_ref += ref
        a, b = side(inj), side(ref)
        rows.append({"layer": layer, "strength": strength, "questions": qs, "injected": a, "clean_same_questions": b,
                     "difference": difference_interval(a.k, a.n, b.k, b.n),
                     "missing_clean_questions": [q for q in qs if q not in clean]})
    pooled = None
    if rows:
        a, b = side(all_inj), side(all_ref)
        pooled = {"injected": a, "clean_same_questions": b, "difference": difference_interval(a.k, a.n, b.k, b.n)}
    return {"cells": rows, "pooled": pooled, "clean_all": side([a for v in clean.values() for a in v])}


def held_out(records: Sequence[dict], grades: Sequence[Grades], fp: Rate) -> dict:
    """Choose the best (layer, strength) on one half of the concepts, read success on the other half."""
    per: dict[tuple, list[list[bool]]] = defaultdict(lambda: [[], []])
    aff: dict[tuple, list[list[bool]]] = defaultdict(lambda: [[], []])
    for r, g in zip(records, grades):
        if r["condition"] == "injected" and g.success is not None:
            per[(r["layer"], r["strength"])][heldout_fold(r["concept"])].append(bool(g.success))
        if r["condition"] == "injected" and g.affirmative is not None:
            aff[(r["layer"], r["strength"])][heldout_fold(r["concept"])].append(bool(g.affirmative))
    if not per:
        return {}
    folds = []
    pooled_k = pooled_n = aff_k = aff_n = 0
    for sel in (0, 1):
        ev = 1 - sel

        def net(cell):
            v = per[cell][sel]
            return (sum(v) / len(v) - fp.rate) if v else -math.inf

        best = max(sorted(per), key=net)
        vals = per[best][ev]
        rate = Rate.from_bools(vals)
        pooled_k += rate.k
        pooled_n += rate.n
        held_aff = Rate.from_bools(aff[best][ev])
        aff_k += held_aff.k
        aff_n += held_aff.n
        folds.append({"selected_on_fold": sel, "best_layer": best[0], "best_strength": best[1],
                      "selection_success": Rate.from_bools(per[best][sel]), "held_out_success": rate})
    pooled = Rate.of(pooled_k, pooled_n)
    pooled_aff = Rate.of(aff_k, aff_n)
    return {"folds": folds, "pooled_held_out_success": pooled,
            "pooled_net_detection": net_detection(pooled, fp) if fp.n else None,
            # detection claims alone (no identification), net of the same false positives: the
            # number that does not depend on the grader's weak identification step
            "pooled_held_out_affirmative": pooled_aff,
            "pooled_net_affirmative": net_detection(pooled_aff, fp) if fp.n and aff_n else None}


def grader_quality(grader_name: str | None, calibration: dict | None) -> dict:
    """Recall and precision of the grader behind the success and affirmative rates (from the stored
    calibration; see grading/calibration_store.py), and whether it is the offline rule grader."""
    from ...grading import calibration_store as cs

    out: dict[str, Any] = {"grader": grader_name, "offline": bool(grader_name and grader_name.startswith("rules")),
                           "calibrated": calibration is not None}
    if calibration is not None:
        out["source"] = cs.describe(calibration)
        for key, label in (("success", cs.SUCCESS_LABEL), ("success_any_order", cs.SUCCESS_ANY_ORDER_LABEL),
                           ("affirmative", cs.AFFIRMATIVE_LABEL), ("before_mention", cs.BEFORE_MENTION_LABEL)):
            q = cs.Quality.of(calibration, label)
            out[key] = None if q is None else {"label": label, "recall": q.recall, "precision": q.precision,
                                               "kappa": q.kappa, "text": q.short()}
    return out


def summarize(records: Sequence[dict], grades: Sequence[Grades], n_layers: int | None,
              grader_name: str | None = None, calibration: dict | None = None) -> dict:
    """Every rate of Exp 1, with the grader's measured recall and precision beside them.

    `calibration` is the grader's stored calibration entry (`calibration_store.load(name)`), or
    None when the grader was never calibrated (the summary then says so)."""
    rows = _cell_rows(records, grades, n_layers)
    control = [g for r, g in zip(records, grades) if r["condition"] == "control"]
    fp = Rate.from_bools(g.affirmative for g in control)
    control_summary = {"false_positive": fp, "n": len(control),
                       "coherent": _rate(g.coherent for g in control),
                       "success_vs_assigned_word": _rate(g.success for g in control)}
    for row in rows:
        if row["condition"] == "injected" and fp.n:
            row["net_detection"] = net_detection(row["success"], fp)
            row["net_affirmative"] = net_detection(row["affirmative"], fp)
    injected = [r for r in rows if r["condition"] == "injected"]
    best_in_sample = max(injected, key=lambda r: (r["success"].rate if r["success"].n else -1), default=None)
    inj_pairs = [(r, g) for r, g in zip(records, grades) if r["condition"] == "injected"]
    return {
        "n_records": len(records),
        "conditions": sorted({r["condition"] for r in records}),
        "control": control_summary,
        "cells": rows,
        "by_category": _cell_rows([r for r in records if r["condition"] == "injected"],
                                  [g for r, g in zip(records, grades) if r["condition"] == "injected"],
                                  n_layers, by_category=True),
        "category_totals": category_totals(inj_pairs),
        "held_out": held_out(records, grades, fp),
        "internality": internality([g for _, g in inj_pairs]),
        "yes_bias": yes_bias_comparison(records),
        "best_in_sample": ({k: best_in_sample[k] for k in ("layer", "strength", "depth", "success")}
                           if best_in_sample else None),
        "grader_quality": grader_quality(grader_name, calibration),
        "outcomes": outcomes(inj_pairs),
    }


def category_totals(pairs: Sequence[tuple[dict, Grades]]) -> list[dict]:
    """Success and affirmative rates per concept category over all injected cells (layers and strengths pooled)."""
    rows = []
    for cat in sorted({r.get("category") for r, _ in pairs if r.get("category") is not None}):
        gs = [g for r, g in pairs if r.get("category") == cat]
        rows.append({"category": cat, "success": _rate(g.success for g in gs),
                     "affirmative": _rate(g.affirmative for g in gs)})
    return rows


OUTCOMES = ("success (detected and identified)", "delayed detection (word first, claim after)",
            "detected, not identified", "unconscious influence (word, no detection)", "not detected",
            "incoherent ('brain damage')")
TRANSCRIPT_FIELDS = ("concept", "layer", "strength", "dose", "trial_id")
EXAMPLES_PER_OUTCOME = 6


def outcomes(pairs: Sequence[tuple[dict, Grades]]) -> dict[str, dict]:
    """Injected trials by the paper's qualitative outcome: how many, and the first few as examples."""
    groups: dict[str, list[dict]] = {k: [] for k in OUTCOMES}
    for rec, g in pairs:
        groups[outcome(rec, g)].append(rec)
    return {k: {"n": len(v), "examples": [{f: r.get(f) for f in (*TRANSCRIPT_FIELDS, "response")}
                                          for r in v[:EXAMPLES_PER_OUTCOME]]} for k, v in groups.items()}


_fmt, _diff = format_rate, format_difference


def quality_lines(q: dict | None) -> list[str]:
    """The grader's measured recall and precision, and a warning when the offline grader makes a success rate."""
    if not q:
        return []
    if not q.get("calibrated"):
        lines = [f"Grader `{q.get('grader')}` has no stored calibration: the recall and precision of these rates "
                 "are unmeasured (run `introspect-mech calibrate --split test --store`)."]
    else:
        lines = [f"Grader `{q['grader']}`, measured against reference labels ({q['source']}): "
                 f"success {q['success']['text'] if q.get('success') else '–'} "
                 f"(reference: affirmative ∧ detection before the word ∧ correct id); "
                 f"affirmative {q['affirmative']['text'] if q.get('affirmative') else '–'}."]
    if q.get("offline"):
        rec = (q.get("success") or {}).get("recall")
        anyo = (q.get("success_any_order") or {}).get("recall")
        lines.append(
            "WARNING: the success rates below come from the offline rule grader"
            + (f", whose measured recall for the paper's success label is {rec.k}/{rec.n}"
               f" ({anyo.k}/{anyo.n} against the reference's success in any order)" if rec and anyo else
               ", whose recall for the paper's success label is unmeasured")
            + ": a low success rate is weak evidence that the model does not identify the thought. "
            "Read net detection (affirmative − false positives), or grade with the paper's judge "
            "(--grader hf:MODEL / openai:MODEL).")
    return lines


def markdown_table(summary: dict) -> str:
    """The README table: injected cells next to their controls, with the grader's measured quality."""
    cells = summary["cells"]
    by = {(r["condition"], r["layer"], r["strength"]): r for r in cells}
    yb_cells = {(c["layer"], c["strength"]): c for c in (summary.get("yes_bias") or {}).get("cells", [])}
    fixed = {r["layer"]: r for r in cells if r["condition"] == "random_vector_fixed"}
    s_fixed = next(iter(fixed.values()))["strength"] if fixed else None
    fixed_label = f"s={s_fixed:g}, paper" if fixed else "fixed strength"
    lines = quality_lines(summary.get("grader_quality"))
    if lines:
        lines.append("")
    lines += ["| layer (depth) | strength | dose | success | affirmative | net affirm. (− FP) | "
              "detect before mention (of identified, any order) | coherent | random vec. (cell strength) "
              f"affirm. | random vec. ({fixed_label}) affirm. | negated affirm. | scaling affirm. | "
              "yes-bias 'yes': injected vs clean, same questions (unparsed) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (c for c in cells if c["condition"] == "injected"):
        k = (r["layer"], r["strength"])
        def other(cond, metric="affirmative"):
            o = by.get((cond,) + k)
            return _fmt(o[metric]) if o else "–"
        yb = yb_cells.get(k)
        yb_txt = (f"{_fmt(yb['injected'])} ({yb['injected'].unparsed}) vs {_fmt(yb['clean_same_questions'])} "
                  f"({yb['clean_same_questions'].unparsed})" if yb else "–")
        fx = fixed.get(r["layer"])
        lines.append(
            f"| {r['layer']} ({r['depth']:.2f}) | {r['strength']:g} | "
            f"{(r['mean_dose'] or 0):.2f} | {_fmt(r['success'])} | {_fmt(r['affirmative'])} | "
            f"{_diff(r.get('net_affirmative'))} | {_fmt(r.get('detect_before_mention'))} | {_fmt(r['coherent'])} | "
            f"{other('random_vector')} | {_fmt(fx['affirmative']) if fx else '–'} | {other('negated')} | "
            f"{other('scaling')} | {yb_txt} |")
    c = summary["control"]
    lines.append("")
    it = summary.get("internality")
    if it:
        q = (summary.get("grader_quality") or {}).get("before_mention")
        lines.append(
            "Detect before mention (the paper's internality criterion), all injected trials: "
            f"{it['identified_any_order'].k} of {it['identified_any_order'].n} claim detection and identify the word in "
            f"any order; of those, the claim comes first in {_fmt(it['detect_before_mention'])} (only these count as "
            "success; the rest are delayed detections, word first)"
            + (f"; grader on the before-mention label: {q['text']}." if q else "."))
    lines.append(f"No-injection control trials: false-positive (affirmative) rate {_fmt(c['false_positive'])}, "
                 f"coherent {_fmt(c['coherent'])}.")
    yb = next((r for r in cells if r["condition"] == "yes_bias_clean"), None)
    if yb:
        lines.append(f"Yes-bias questions without injection: 'yes' rate {_fmt(yb['says_yes'])}; "
                     f"{yb['yes_unparsed']} of {yb['n']} answers open with neither yes nor no (unparsed, left out).")
    pooled = (summary.get("yes_bias") or {}).get("pooled")
    if pooled:
        d = pooled["difference"]
        diff = "–" if d.estimate != d.estimate else _diff(d)
        inj, cln = pooled["injected"], pooled["clean_same_questions"]
        lines.append(f"Yes-bias, all injected cells pooled vs the clean answers to the same questions: "
                     f"{_fmt(inj)} vs {_fmt(cln)}, difference {diff}; unparsed "
                     f"{inj.unparsed}/{inj.asked} injected, {cln.unparsed}/{cln.asked} clean.")
    ho = summary.get("held_out") or {}
    if ho:
        f = ho["folds"]
        lines.append(
            f"Held-out headline: best cell chosen on one half of the concepts "
            f"(layer {f[0]['best_layer']}/strength {f[0]['best_strength']:g} and layer {f[1]['best_layer']}/"
            f"strength {f[1]['best_strength']:g}); success on the other half, pooled: "
            f"{_fmt(ho['pooled_held_out_success'])}"
            + (f"; net of false positives: {_diff(ho['pooled_net_detection'])}" if ho.get("pooled_net_detection") else "")
            + (f". Net detection on the same held-out trials: affirmative {_fmt(ho['pooled_held_out_affirmative'])}"
               f" − false positives = {_diff(ho['pooled_net_affirmative'])}." if ho.get("pooled_net_affirmative") else "."))
        q = summary.get("grader_quality") or {}
        if q.get("success"):
            lines.append(f"Success grader quality: {q['success']['text']}.")
    return "\n".join(lines)


def figure_note(q: dict | None) -> dict[str, str]:
    """A second title line per metric: the grader's measured recall and precision (or that it is unmeasured)."""
    out = {"success": "", "affirmative": ""}
    if not q:
        return out
    for key in out:
        m = q.get(key)
        out[key] = (f"<br><sup>grader {q['grader']}: {m['text']}</sup>" if m else
                    f"<br><sup>grader {q['grader']}: recall and precision not measured</sup>")
    return out


def figures(summary: dict, out_dir: Path, png: bool = True) -> dict:
    from ... import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    cells = summary["cells"]
    inj = [r for r in cells if r["condition"] == "injected"]
    fp = summary["control"]["false_positive"]
    written = {}
    quality = figure_note(summary.get("grader_quality"))
    written["success_vs_layer"] = plots.save_figure(plots.rate_vs_layer(
        inj, metric="success", title="Exp 1: detected and correctly identified (coherent) vs layer" + quality["success"],
        baseline=fp, baseline_label="false positives (control)"), out_dir / "exp1_success_vs_layer", png=png)
    written["affirmative_vs_layer"] = plots.save_figure(plots.rate_vs_layer(
        inj, metric="affirmative", title="Exp 1: claims to detect an injected thought vs layer" + quality["affirmative"],
        baseline=fp, baseline_label="false positives (control)"), out_dir / "exp1_affirmative_vs_layer", png=png)
    ctl = [r for r in cells if r["condition"] in INJECTED_LIKE]
    written["controls_vs_layer"] = plots.save_figure(plots.facets_vs_layer(
        ctl, facet="strength", metric="affirmative", group="condition", facet_label="strength",
        title="Exp 1 controls: affirmative rate vs layer — concept vs random / negated / scaling (95% CI)",
        baseline=fp, baseline_label="no injection"), out_dir / "exp1_controls_vs_layer", png=png, width=1200)
    written["heatmap"] = plots.save_figure(plots.heatmap(
        inj, metric="success", title="Exp 1: success rate, layer × strength (95% CI)" + quality["success"]),
        out_dir / "exp1_success_heatmap", png=png)
    cat_rows = summary["category_totals"]
    fig = plots.bars_with_ci(cat_rows, label="category", metric="success",
                             title="Exp 1: success by concept category (all layers and strengths)" + quality["success"])
    fig.add_trace(plots.go.Bar(x=[r["category"] for r in cat_rows], y=[r["affirmative"].rate for r in cat_rows],
                               name="affirmative", marker_color=plots.PALETTE[1]))
    written["by_category"] = plots.save_figure(fig, out_dir / "exp1_by_category", png=png)
    from ...store import atomic_write_text

    atomic_write_text(out_dir / "exp1_transcripts.html", transcripts_page(summary))
    written["transcripts"] = {"html": str(out_dir / "exp1_transcripts.html")}
    return written


def transcripts_page(summary: dict) -> str:
    """Example transcripts of the injected trials, one section per outcome (HTML)."""
    from ... import plots

    oc = summary["outcomes"]
    return plots.transcripts_page({k: v["examples"] for k, v in oc.items()}, title="Exp 1 example transcripts by outcome",
                                  fields=TRANSCRIPT_FIELDS, counts={k: v["n"] for k, v in oc.items()})


def headline(summary: dict) -> Headline:
    """Success, detection claims and their net of false positives by layer and strength, the controls, and
    the held-out and yes-bias numbers: what ``report --compare`` shows of an Exp 1 run."""
    cells = summary["cells"]
    inj = [r for r in cells if r["condition"] == "injected"]
    fp = summary["control"]["false_positive"]
    series = [series_of("success (detected and identified)", inj, "success"),
              series_of("affirmative (claims detection)", inj, "affirmative", baseline=fp,
                        baseline_label="false positives"),
              series_of("net affirmative (affirmative − false positives)", inj, "net_affirmative", kind="difference"),
              series_of("detect before mention (of trials identified in any order)", inj, "detect_before_mention")]
    for cond, label in (("random_vector", "control: random vector (cell strength), affirmative"),
                        ("negated", "control: negated vector, affirmative"),
                        ("scaling", "control: activation scaling, affirmative")):
        rows = [r for r in cells if r["condition"] == cond]
        if rows:
            series.append(series_of(label, rows, "affirmative", baseline=fp, baseline_label="false positives"))
    ho, yb = summary.get("held_out") or {}, (summary.get("yes_bias") or {}).get("pooled")
    it = summary.get("internality") or {}
    scalars = [("false positives (no injection), affirmative", fp),
               ("coherent (no injection)", summary["control"]["coherent"])]
    if ho:
        scalars += [("held-out success (best cell chosen on the other half of the concepts)",
                     ho["pooled_held_out_success"]),
                    ("held-out net affirmative", ho.get("pooled_net_affirmative"))]
    if it:
        scalars += [("identified in any order (all injected trials)", it["identified_any_order"]),
                    ("detect before mention, of those identified", it["detect_before_mention"])]
    if yb:
        scalars += [("yes-bias 'yes', injected − clean (same questions)", yb["difference"])]
    return Headline(tuple(series), tuple(scalars))


class InjectedThoughtsReport:
    """Exp 1's report (``spec.ExperimentReport``): the paper's four criteria, rates with intervals beside
    the grader's measured quality, the held-out headline, and figures."""

    def make_grader(self, name: str, *, judge_url: str | None, cache_path: Path) -> Grader:
        from ...grading.factory import make_grader

        return make_grader(name, base_url=judge_url, cache_path=cache_path)

    def grade(self, records: Sequence[dict], grader: Grader) -> list[Grades]:
        return grade_records(records, grader)

    def summarize(self, records: Sequence[dict], grades: Sequence[Grades], meta: RunMeta) -> dict:
        from ...grading import calibration_store

        cal = calibration_store.load(meta.grader) if meta.grader else None
        return summarize(records, grades, meta.n_layers, grader_name=meta.grader, calibration=cal)

    def table(self, summary: dict) -> str:
        return markdown_table(summary)

    def figures(self, summary: dict, out_dir: Path, png: bool) -> dict:
        return figures(summary, out_dir, png)

    def pages(self, summary: dict) -> dict[str, str]:
        """Pages embedded in the run's HTML report."""
        return {"Example transcripts by outcome": transcripts_page(summary)}

    def headline(self, summary: dict) -> Headline:
        return headline(summary)
