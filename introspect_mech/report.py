"""``introspect-mech report RUN``: grade, summarise and plot a stored run.

Dispatches on the experiment named in the run's manifest; every number and figure is
recomputed from ``results.jsonl``, so a report can be regenerated with another grader
at any time without touching the sweep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ArtifactError, MissingFileError
from .store import ResultStore, atomic_write_json, atomic_write_text


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    run = Path(run_dir)
    mpath = run / "manifest.json"
    if not mpath.exists():
        raise MissingFileError(f"{run} has no manifest.json: it is not a run folder (create one with `introspect-mech run`)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{mpath} is corrupt ({exc.msg})") from None
    records = ResultStore(run / "results.jsonl", create=False).records()
    return manifest, records


def make_grader(name: str, **kwargs: Any):
    if name == "rules":
        from .grading.rules import RuleGrader

        return RuleGrader()
    if name.startswith("openai:"):
        from .grading.llm_judge import LLMJudge, OpenAIBackend

        _, model = name.split(":", 1)
        base = kwargs.get("base_url") or "https://api.openai.com/v1"
        return LLMJudge(OpenAIBackend(base, model), cache_path=kwargs.get("cache_path"))
    raise ValueError(f"unknown grader {name!r}; use 'rules' or 'openai:MODEL' (OpenAI-compatible endpoint, "
                     "key in OPENAI_API_KEY, --judge-url for another base URL)")


def write_report(run_dir: str | Path, *, grader: str = "rules", figures_dir: str | Path | None = None,
                 png: bool = True, judge_url: str | None = None) -> dict:
    run = Path(run_dir)
    manifest, records = load_run(run)
    if not records:
        raise ArtifactError(f"{run}/results.jsonl holds no trials yet; run (or resume) the sweep first")
    exp = manifest["experiment"]
    fig_dir = Path(figures_dir) if figures_dir else run / "figures"
    g = make_grader(grader, base_url=judge_url, cache_path=run / "judge_cache.jsonl")
    n_layers = manifest.get("model", {}).get("n_layers")
    if exp == "injected_thoughts":
        from .experiments import injected_thoughts_report as rep

        grades = rep.grade_records(records, g)
        summary = rep.summarize(records, grades, n_layers)
        table = rep.markdown_table(summary)
        written = rep.figures(records, grades, summary, fig_dir, png=png)
    else:
        raise ArtifactError(f"no report for experiment {exp!r}")
    summary.update({"experiment": exp, "grader": getattr(g, "name", grader), "model": manifest.get("model"),
                    "run": str(run), "figures": written})
    atomic_write_json(run / "summary.json", summary)
    atomic_write_text(run / "summary.md", table + "\n")
    return {"summary": summary, "table": table, "figures": written}
