"""``introspect-mech report RUN``: grade, summarise and plot a stored run.

Dispatches on the experiment named in the run's manifest; every number and figure is
recomputed from ``results.jsonl``, so a report can be regenerated with another grader
at any time without touching the sweep.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .errors import ArtifactError, ConfigError, MissingFileError
from .grading.factory import check_grader_name, make_grader, make_intent_judge, make_word_chooser
from .store import ResultStore, atomic_write_json, atomic_write_text, check_out_dir


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """Read a run without modifying it: the manifest and every complete record, checked field by field."""
    from .records import check_manifest, check_records

    run = Path(run_dir)
    mpath = run / "manifest.json"
    if not mpath.exists():
        raise MissingFileError(f"{run} has no manifest.json: it is not a run folder (create one with `introspect-mech run`)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath} is corrupt ({exc.__class__.__name__}); restore it from the run") from None
    exp = check_manifest(manifest, str(mpath))
    records = ResultStore(run / "results.jsonl").records()
    check_records(records, exp, str(run / "results.jsonl"))
    return manifest, records


def _report_dir(run: Path, figures_dir: str | Path | None) -> Path:
    """Where summary.*, report.html and the judge cache go: the run folder, or --figures-dir if it is read-only."""
    if os.access(run, os.W_OK):
        return run
    if figures_dir is None:
        raise ConfigError(f"{run} is read-only; pass --figures-dir DIR to write the report, summary and figures there")
    return check_out_dir(figures_dir, "--figures-dir")


def write_report(run_dir: str | Path, *, grader: str = "rules", figures_dir: str | Path | None = None,
                 png: bool = True, judge_url: str | None = None, compare: Sequence[str | Path] = ()) -> dict:
    run = Path(run_dir)
    check_grader_name(grader)
    if judge_url is not None:
        from .grading.llm_judge import check_judge_url

        check_judge_url(judge_url)
    manifest, records = load_run(run)
    if not records:
        raise ArtifactError(f"{run}/results.jsonl holds no trials yet; run (or resume) the sweep first")
    exp = manifest["experiment"]
    if figures_dir is not None:
        check_out_dir(figures_dir, "--figures-dir")
    out_dir = _report_dir(run, figures_dir)
    fig_dir = Path(figures_dir) if figures_dir else run / "figures"
    n_layers = manifest.get("model", {}).get("n_layers")
    g = None
    if exp == "injected_thoughts":
        g = make_grader(grader, base_url=judge_url, cache_path=out_dir / "judge_cache.jsonl")
        from .experiments import injected_thoughts_report as rep

        from .grading import calibration_store

        grades = rep.grade_records(records, g)
        summary = rep.summarize(records, grades, n_layers, grader_name=g.name, calibration=calibration_store.load(g.name))
        table = rep.markdown_table(summary)
        written = rep.figures(records, grades, summary, fig_dir, png=png)
    elif exp == "thoughts_vs_text":
        from .experiments import thoughts_vs_text_report as rep

        chooser = make_word_chooser(grader, base_url=judge_url, cache_path=out_dir / "judge_cache.jsonl")
        grades = rep.grade(records, chooser)
        summary = rep.summarize(records, grades, n_layers, manifest["config"].get("n_choices", 10))
        table = rep.markdown_table(summary)
        written = rep.figures(summary, fig_dir, png=png)
        g = chooser
    elif exp == "prefill_intent":
        from .experiments import prefill_intent_report as rep

        g = make_intent_judge(grader, base_url=judge_url, cache_path=out_dir / "judge_cache.jsonl")
        grades = rep.grade(records, g)
        summary = rep.summarize(records, grades, n_layers)
        table = rep.markdown_table(summary)
        written = rep.figures(summary, fig_dir, png=png)
    elif exp == "intentional_control":
        from .experiments import intentional_control_report as rep

        summary = rep.summarize(records)
        name = manifest.get("model", {}).get("name", "model")
        table = rep.markdown_table(summary, name)
        summaries = {name: summary}
        for other in compare:
            m2, r2 = load_run(other)
            if not r2:
                raise ArtifactError(f"--compare {other}: its results.jsonl holds no trials yet")
            if m2["experiment"] != exp:
                raise ArtifactError(f"--compare {other} is a {m2['experiment']} run, not {exp}")
            s2 = rep.summarize(r2)
            n2 = m2.get("model", {}).get("name", str(other))
            summaries[n2] = s2
            table += "\n\n" + rep.markdown_table(s2, n2)
        written = rep.figure(summaries, fig_dir, png=png)
    else:
        raise ArtifactError(f"no report for experiment {exp!r}")
    summary.update({"experiment": exp, "grader": getattr(g, "name", grader if g is not None else None), "model": manifest.get("model"),
                    "run": str(run), "figures": written})
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", table + "\n")
    from .html_report import write_html_report

    extra = {}
    tpage = written.get("transcripts", {}).get("html") if isinstance(written.get("transcripts"), dict) else None
    if tpage and Path(tpage).exists():
        extra["Example transcripts by outcome"] = Path(tpage).read_text()
    html_path = write_html_report(run, manifest, table, written, extra, grader=summary.get("grader"), out_dir=out_dir)
    return {"summary": summary, "table": table, "figures": written, "html": str(html_path)}
