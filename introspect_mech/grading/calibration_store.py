"""The grader's measured recall and precision, stored with the package and read by the reports.

Why: a success rate of 0/18 means little if the grader finds one success in ten; every rate a
report prints must carry the recall and precision of the grader that produced it. Those numbers
come from `calibrate` (never typed by hand): ``introspect-mech calibrate --split test --store``
grades the labelled set and writes ``grading/data/grader_calibration.json``, keyed by the
grader's name, with the split, the data file's SHA-256, and the git commit (and whether the
working tree had uncommitted changes) the numbers came from. A report made with a grader that
has no stored calibration says so instead of printing numbers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..stats import Rate, format_rate
from .calibrate import CalibrationReport

# Which calibration row stands behind which reported quantity.
SUCCESS_LABEL = "correct_id|affirmative,before_mention"  # the paper's rule on both sides
SUCCESS_ANY_ORDER_LABEL = "correct_id|affirmative"  # our success vs the reference's order-free conjunction
AFFIRMATIVE_LABEL = "affirmative"
BEFORE_MENTION_LABEL = "before_mention"  # the claim is not preceded by the word (Exp 1's internality criterion)


def store_path() -> Path:
    return Path(str(resources.files("introspect_mech.grading") / "data" / "grader_calibration.json"))


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """The commit the grader code came from, and whether the working tree differed from it."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return {"commit": commit, "dirty": None}
    changed = [ln for ln in status.splitlines() if not ln.endswith(store_path().name)]  # this file itself
    return {"commit": commit, "dirty": bool(changed)}


def entry_of(report: CalibrationReport) -> dict[str, Any]:
    data = Path(report.data)
    sha = hashlib.sha256(data.read_bytes()).hexdigest() if data.is_file() else None
    return {
        "grader": report.grader, "split": report.split, "n_rows": report.n_rows,
        "data": data.name, "data_sha256": sha, **provenance(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": {la.label: {"n": la.n, "tp": la.tp, "fp": la.fp, "fn": la.fn, "tn": la.tn,
                              "kappa": None if la.kappa != la.kappa else round(la.kappa, 4)}
                   for la in report.labels},
    }


def store(report: CalibrationReport, path: str | Path | None = None) -> Path:
    """Add (or replace) this grader's entry in the calibration file; other graders' entries stay."""
    p = Path(path) if path else store_path()
    table = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    table[report.grader] = entry_of(report)
    p.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return p


def load(grader: str | None, path: str | Path | None = None) -> dict[str, Any] | None:
    """The stored calibration of this grader (by name), or None when it was never calibrated."""
    p = Path(path) if path else store_path()
    if grader is None or not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8")).get(grader)


@dataclass(frozen=True)
class Quality:
    """Recall and precision of one grader output against one reference label, with Wilson intervals."""

    label: str
    recall: Rate
    precision: Rate
    kappa: float | None

    @classmethod
    def of(cls, entry: dict[str, Any], label: str) -> Quality | None:
        c = (entry.get("labels") or {}).get(label)
        if not c:
            return None
        return cls(label, Rate.of(c["tp"], c["tp"] + c["fn"]), Rate.of(c["tp"], c["tp"] + c["fp"]), c.get("kappa"))

    def short(self) -> str:
        return f"recall {format_rate(self.recall)}, precision {format_rate(self.precision)}"


def describe(entry: dict[str, Any]) -> str:
    """Where the numbers come from, in one phrase."""
    commit = (entry.get("commit") or "unknown")[:10] + (" + uncommitted changes" if entry.get("dirty") else "")
    return f"{entry['data']} split '{entry['split']}' ({entry['n_rows']} rows), commit {commit}"
