"""Experiment 2 report: word accuracy (10-way forced choice), repeat accuracy and both, per layer and strength."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from ...stats import Rate, format_rate
from ..spec import Headline, RunMeta, depth_of, series_of


def repeat_ok(rec: dict) -> bool:
    """The paper's rule: the lowercased sentence is a substring of the lowercased response."""
    return rec["sentence"].lower() in (rec.get("response") or "").lower()


def grade(records: Sequence[dict], chooser: Any) -> list[dict]:
    """Per record: ``correct`` (word task: the chosen candidate is the injected word; repeat task: repeat_ok)."""
    out = []
    for r in records:
        if r["task"] == "repeat":
            out.append({"correct": repeat_ok(r)})
        else:
            ch = chooser.choose(r.get("response") or "", r["candidates"])
            out.append({"correct": ch.word.lower() == r["concept"].lower(), "choice": ch.word, "method": ch.method})
    return out


def summarize(records: Sequence[dict], grades: Sequence[dict], n_layers: int | None, n_choices: int = 10) -> dict:
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    pair: dict[tuple, dict[str, bool]] = defaultdict(dict)
    methods: dict[str, int] = defaultdict(int)
    for r, g in zip(records, grades):
        key = (r["condition"], r.get("layer"), r.get("strength"))
        cells[key][r["task"]].append(bool(g["correct"]))
        pair[key + (r["extra"]["sentence_index"],)][r["task"]] = bool(g["correct"])
        if "method" in g:
            methods[g["method"]] += 1
    rows = []
    for key, tasks in cells.items():
        both = [p["word"] and p["repeat"] for k, p in pair.items() if k[:3] == key and len(p) == 2]
        cond, layer, strength = key
        rows.append({"condition": cond, "layer": layer, "strength": strength,
                     "depth": depth_of(layer, n_layers),
                     "word": Rate.from_bools(tasks.get("word", [])),
                     "repeat": Rate.from_bools(tasks.get("repeat", [])),
                     "both": Rate.from_bools(both)})
    rows.sort(key=lambda r: (r["condition"], r["layer"] or -1, r["strength"] or 0))
    return {"cells": rows, "chance": 1.0 / n_choices, "choice_methods": dict(methods),
            "clean": next((r for r in rows if r["condition"] == "clean"), None)}


_fmt = format_rate


def markdown_table(summary: dict) -> str:
    lines = ["| condition | layer (depth) | strength | word acc. (chance %.2f) | repeat acc. | both |" % summary["chance"],
             "|---|---|---|---|---|---|"]
    for r in summary["cells"]:
        depth = f"{r['layer']} ({r['depth']:.2f})" if r["layer"] is not None else "–"
        lines.append(f"| {r['condition']} | {depth} | {r['strength'] if r['strength'] is not None else '–'} | "
                     f"{_fmt(r['word'])} | {_fmt(r['repeat'])} | {_fmt(r['both'])} |")
    m = summary["choice_methods"]
    lines.append("")
    lines.append(f"Offline word choice: {m.get('exact', 0)} answers named exactly one candidate, "
                 f"{m.get('embedding', 0)} were decided by embedding similarity, {m.get('empty', 0)} were empty.")
    return "\n".join(lines)


def figures(summary: dict, out_dir: Path, png: bool = True) -> dict:
    from ... import plots

    inj = [r for r in summary["cells"] if r["condition"] == "injected"]
    clean = summary["clean"]
    written = {}
    for metric, title in (("word", "Exp 2: injected word identified (10-way choice) vs layer"),
                          ("repeat", "Exp 2: sentence repeated correctly vs layer"),
                          ("both", "Exp 2: word identified AND sentence repeated vs layer")):
        written[metric] = plots.save_figure(plots.rate_vs_layer(
            inj, metric=metric, title=title, chance=summary["chance"] if metric != "repeat" else None,
            baseline=clean[metric] if clean and metric == "repeat" else None, baseline_label="no injection"),
            out_dir / f"exp2_{metric}_vs_layer", png=png)
    return written


def headline(summary: dict) -> Headline:
    inj = [r for r in summary["cells"] if r["condition"] == "injected"]
    clean = summary["clean"]
    series = (series_of("word identified (10-way choice)", inj, "word", baseline=clean["word"] if clean else None,
                        baseline_label="no injection"),
              series_of("sentence repeated", inj, "repeat", baseline=clean["repeat"] if clean else None,
                        baseline_label="no injection"),
              series_of("word identified and sentence repeated", inj, "both"))
    scalars = (("chance (word choice)", summary["chance"]),) + (
        tuple((f"no injection: {m}", clean[m]) for m in ("word", "repeat", "both")) if clean else ())
    return Headline(series, scalars)


class ThoughtsVsTextReport:
    """Exp 2's report (``spec.ExperimentReport``)."""

    def make_grader(self, name: str, *, judge_url: str | None, cache_path: Path) -> Any:
        from ...grading.factory import make_word_chooser

        return make_word_chooser(name, base_url=judge_url, cache_path=cache_path)

    def grade(self, records: Sequence[dict], grader: Any) -> list[dict]:
        return grade(records, grader)

    def summarize(self, records: Sequence[dict], grades: Sequence[dict], meta: RunMeta) -> dict:
        return summarize(records, grades, meta.n_layers, meta.config.get("n_choices", 10))

    def table(self, summary: dict) -> str:
        return markdown_table(summary)

    def figures(self, summary: dict, out_dir: Path, png: bool) -> dict:
        return figures(summary, out_dir, png)

    def headline(self, summary: dict) -> Headline:
        return headline(summary)
