"""``introspect-mech report RUN [--compare RUN…]``: grade, summarise and plot a stored run.

The experiment named in the run's manifest is looked up in the registry
(``experiments.registry``); its report (``spec.ExperimentReport``) grades, summarises, tabulates and
draws. Every number and figure is recomputed from ``results.jsonl``, so a report can be regenerated
with another grader at any time without touching the sweep. ``--compare`` puts other runs of the same
experiment (other models, adapters) beside it (``experiments.compare``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from .errors import ArtifactError, ConfigError, MissingFileError
from .grading.factory import check_grader_name
from .store import ResultStore, atomic_write_json, atomic_write_text, check_out_dir


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """Read a run without modifying it: the manifest and every complete record, checked field by field
    against its experiment's declared record."""
    from .experiments import registry
    from .records import check_manifest, check_records

    run = Path(run_dir)
    mpath = run / "manifest.json"
    if not mpath.exists():
        raise MissingFileError(f"{run} has no manifest.json: it is not a run folder (create one with `introspect-mech run`)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath} is corrupt ({exc.__class__.__name__}); restore it from the run") from None
    exp = check_manifest(manifest, str(mpath), [s.name for s in registry.specs()])
    records = ResultStore(run / "results.jsonl").records()
    check_records(records, registry.get(exp).record, exp, str(run / "results.jsonl"))
    return manifest, records


def _report_dir(run: Path, figures_dir: str | Path | None) -> Path:
    """Where summary.*, report.html and the judge cache go: the run folder, or --figures-dir if it is read-only."""
    if os.access(run, os.W_OK):
        return run
    if figures_dir is None:
        raise ConfigError(f"{run} is read-only; pass --figures-dir DIR to write the report, summary and figures there")
    return check_out_dir(figures_dir, "--figures-dir")


def _graded_summary(report: Any, manifest: dict, records: Sequence[dict], grader: Any) -> dict:
    from .experiments.spec import RunMeta

    model = manifest.get("model") or {}
    meta = RunMeta(n_layers=model.get("n_layers"), model_name=model.get("name", "model"),
                   config=manifest.get("config") or {}, grader=getattr(grader, "name", None))
    return report.summarize(records, report.grade(records, grader), meta)


def write_report(run_dir: str | Path, *, grader: str = "rules", figures_dir: str | Path | None = None,
                 png: bool = True, judge_url: str | None = None, compare: Sequence[str | Path] = ()) -> dict:
    from .experiments import registry

    run = Path(run_dir)
    check_grader_name(grader)
    if judge_url is not None:
        from .grading.llm_judge import check_judge_url

        check_judge_url(judge_url)
    manifest, records = load_run(run)
    if not records:
        raise ArtifactError(f"{run}/results.jsonl holds no trials yet; run (or resume) the sweep first")
    exp = manifest["experiment"]
    others = []
    seen = {run.resolve(): "the run being reported"}
    for other in compare:  # every compared run is read and checked before anything is written
        where = Path(other).resolve()
        if where in seen:
            raise ConfigError(f"--compare {other} is {seen[where]} already; list each run once")
        seen[where] = "listed"
        if not (Path(other) / "manifest.json").exists():
            raise MissingFileError(f"--compare {other} is not a run folder (no manifest.json); pass a folder made by "
                                   "`introspect-mech run`")
        m2, r2 = load_run(other)
        if m2["experiment"] != exp:
            raise ArtifactError(f"--compare {other} is a {m2['experiment']} run, not {exp}")
        if not r2:
            raise ArtifactError(f"--compare {other}: its results.jsonl holds no trials yet")
        others.append((Path(other), m2, r2))
    if figures_dir is not None:
        check_out_dir(figures_dir, "--figures-dir")
    out_dir = _report_dir(run, figures_dir)
    fig_dir = Path(figures_dir) if figures_dir else run / "figures"
    spec = registry.get(exp)
    report = spec.make_report()
    g = report.make_grader(grader, judge_url=judge_url, cache_path=out_dir / "judge_cache.jsonl")
    summary = _graded_summary(report, manifest, records, g)
    table = report.table(summary)
    written = report.figures(summary, fig_dir, png)
    compared = None
    if others:
        compared = _compare(spec, report, g, (run, manifest, summary), others, fig_dir, png, written)
        table += "\n\n" + compared.pop("table")
    summary.update({"experiment": exp, "grader": getattr(g, "name", grader if g is not None else None),
                    "model": manifest.get("model"), "run": str(run), "figures": written,
                    **({"compare": compared} if compared else {})})
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", table + "\n")
    from .html_report import write_html_report

    pages = report.pages(summary) if hasattr(report, "pages") else {}
    html_path = write_html_report(run, manifest, table, written, pages, grader=summary.get("grader"), out_dir=out_dir)
    return {"summary": summary, "table": table, "figures": written, "html": str(html_path)}


def _compare(spec: Any, report: Any, grader: Any, main: tuple, others: list, fig_dir: Path, png: bool,
             written: dict) -> dict:
    """Summaries of the compared runs (same grader), their headlines side by side, and the figures."""
    from .experiments.compare import compare_figures, compare_table, unique_labels

    runs = [main] + [(path, m, _graded_summary(report, m, r, grader)) for path, m, r in others]
    labels = unique_labels([(m.get("model") or {}).get("name", "model") for _, m, _ in runs], [p for p, _, _ in runs])
    summaries = {lab: s for lab, (_, _, s) in zip(labels, runs)}
    headlines = {lab: report.headline(s) for lab, s in summaries.items()}
    if hasattr(report, "compare_figures"):  # the experiment's own side-by-side figures (replace its single-run ones)
        written.update(report.compare_figures(summaries, fig_dir, png))
    prefix = (spec.figures.rsplit("/", 1)[-1] or spec.name) if spec.figures else spec.name
    written.update(compare_figures(prefix, headlines, fig_dir, png))
    tables = [compare_table(spec.title, headlines)]
    for lab, (path, _, s) in list(zip(labels, runs))[1:]:
        tables.append(f"Compared run `{lab}` ({path}):\n\n" + report.table(s))
    return {"table": "\n\n".join(tables),
            "runs": [{"label": lab, "run": str(p), "model": m.get("model")} for lab, (p, m, _) in zip(labels, runs)],
            "headlines": headlines}
