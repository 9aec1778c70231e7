"""What an experiment declares, once: ``ExperimentSpec`` and the interfaces behind it.

Why: adding an experiment, or changing one of its defaults, used to touch the CLI (a branch, a
choices list, defaults copied from the config), the report (another branch), the experiment and
its report module. Now an experiment's folder declares one ``ExperimentSpec``:

- ``name``: the records' and the manifest's ``experiment`` (the registry key);
- ``cli_name``: ``introspect-mech run CLI_NAME``;
- ``config``: a dataclass, the only place defaults live; CLI flags are generated from its fields
  (``options.opt`` metadata holds each flag's help);
- ``protocol``: the class the runner drives (``ExperimentProtocol``), built as ``protocol(model, cfg)``;
- ``record``: a ``TypedDict`` of what its records hold beyond the runner's ``TrialRecord``, checked
  field by field before a report reads them;
- ``report``: an ``ExperimentReport`` (grade → summarise → table → figures, and headline series for
  ``report --compare``).

``protocol`` and ``report`` may be given as ``"module:attribute"`` so that building the command line
imports neither torch nor plotly.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from ..models import Model
    from ..runner import Experiment


def _resolve(obj: Any) -> Any:
    if isinstance(obj, str):
        module, _, attr = obj.partition(":")
        return getattr(importlib.import_module(module), attr)
    return obj


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment, declared once (see the module docstring)."""

    name: str
    cli_name: str
    title: str
    help: str
    config: type
    protocol: type | str
    record: type
    report: type | str
    figures: str = ""  # the README's figure folder for this experiment (the map: paper ↔ CLI ↔ figures)
    check_given: Callable[[Mapping[str, Any]], None] | None = None
    """Refuse combinations of given options that the config alone cannot see (e.g. an option that a
    chosen mode does not use); called with the options the user gave, before the config is built."""

    def protocol_class(self) -> type:
        return _resolve(self.protocol)

    def make_protocol(self, model: Model, cfg: Any) -> Experiment:
        return self.protocol_class()(model, cfg)

    def make_report(self) -> ExperimentReport:
        return _resolve(self.report)()


@dataclass(frozen=True)
class RunMeta:
    """What a report knows about a run besides its records (read from the run's manifest)."""

    n_layers: int | None = None
    model_name: str = "model"
    config: Mapping[str, Any] = field(default_factory=dict)
    grader: str | None = None  # the name of the grader that graded the records (None: nothing graded)


@dataclass(frozen=True)
class Point:
    """One value of a headline series: a rate, a difference of rates or a mean, with its interval."""

    layer: int | None
    strength: float | None
    value: Any  # Rate | Difference | MeanCI
    depth: float | None = None  # layer / (n_layers - 1), for comparing models of different depths


@dataclass(frozen=True)
class Series:
    """A headline quantity of a run by layer (and strength), as ``report --compare`` draws it per run.

    ``baseline`` is the run's own reference for it (e.g. the false-positive rate), drawn as a dotted line."""

    name: str
    points: tuple[Point, ...]
    kind: str = "rate"  # "rate" (0-1, Wilson), "difference" (Newcombe) or "mean" (t interval)
    baseline: Any = None
    baseline_label: str = ""


@dataclass(frozen=True)
class Headline:
    """What ``report --compare`` shows of a run: series by layer and strength, and single numbers
    (controls, held-out headlines) with their intervals."""

    series: tuple[Series, ...] = ()
    scalars: tuple[tuple[str, Any], ...] = ()  # (label, Rate | Difference | MeanCI | float | None)


@runtime_checkable
class ExperimentReport(Protocol):
    """One signature for every experiment's report: grade → summarise → table → figures (+ headline)."""

    def make_grader(self, name: str, *, judge_url: str | None, cache_path: Path) -> Any:
        """The grader this experiment grades with for the grader spec ``name`` (None: nothing to grade)."""

    def grade(self, records: Sequence[dict], grader: Any) -> list:
        """One grade per record, blind to the condition."""

    def summarize(self, records: Sequence[dict], grades: Sequence[Any], meta: RunMeta) -> dict:
        """Every number of the report; ``Rate``/``Difference``/``MeanCI`` objects stay typed until JSON."""

    def table(self, summary: dict) -> str:
        """The Markdown summary (what README tables are made of)."""

    def figures(self, summary: dict, out_dir: Path, png: bool) -> dict:
        """Figure files: name → {"html", "json", "png"?}."""

    def headline(self, summary: dict) -> Headline:
        """The series and numbers ``report --compare`` draws side by side for several runs."""


def depth_of(layer: int | None, n_layers: int | None) -> float | None:
    return layer / (n_layers - 1) if (layer is not None and n_layers and n_layers > 1) else None


def series_of(name: str, rows: Sequence[dict], metric: str, *, kind: str = "rate", baseline: Any = None,
              baseline_label: str = "") -> Series:
    """A ``Series`` from summary rows that carry ``layer``, ``strength``, ``depth`` and ``row[metric]``."""
    pts = tuple(Point(r["layer"], r.get("strength"), r[metric], r.get("depth")) for r in rows
                if r.get(metric) is not None)
    return Series(name, pts, kind, baseline, baseline_label)
