"""Measure a grader against labelled responses (per-label agreement, precision, recall, kappa).

Why: any grader (rules, a local judge, an API judge) is only as good as its agreement with a
reference; this makes that agreement a number reported next to every result. The shared data
set is Claude Sonnet 4's grading of 1,310 Llama responses (one judge's opinion, not ground
truth) -- see shared/eval/grading/README.md.

Split: a fixed split by the SHA-256 of the response text (odd first byte -> "test"), so
duplicate responses (968 unique of 1,310) always fall on the same side. The rule grader was
tuned on "dev" only; "test" is the held-out figure to report.

Label mapping (the source's `correct_id` is NOT conditional on `affirmative`):
- correct_id: source correct_id vs our unconditional identification (`raw["identifies_word"]`,
  or `thinking_about_word` for graders without it).
- correct_id|affirmative: source (affirmative AND correct_id) vs our `correct_id`, which is the
  paper's affirmative_correct_id. A missing source correct_id counts as False when the source
  affirmative is False (the conjunction is then False regardless), and is skipped otherwise.
- correct_id|affirmative,before_mention: source (affirmative AND before_mention AND correct_id)
  vs our `correct_id` -- the closest reference to the paper's rule, which also requires the
  detection claim to come no later than the word.

Usage: python -m introspect_mech.grading.calibrate [--data PATH] [--split test|dev|all] [--out report.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MissingFileError
from ..stats import Confusion
from .base import Grader, GradeRequest, Grades

DATA_ENV = "INTROSPECT_GRADING_DATA"
DATA_RELATIVE = Path("shared/eval/grading/allied_llama31_claude-sonnet-4.jsonl")
DEFAULT_LABELS = ("coherent", "affirmative", "correct_id", "correct_id|affirmative",
                  "correct_id|affirmative,before_mention", "before_mention")
SPLITS = ("test", "dev", "all")


def split_of(response: str) -> str:
    """'dev' or 'test' by the first byte of sha256(response): duplicates share a side."""
    return "test" if hashlib.sha256(response.encode("utf-8")).digest()[0] % 2 else "dev"


def default_data_path() -> Path:
    """The shared calibration file: $INTROSPECT_GRADING_DATA, else ../shared/... next to the repo."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    candidates = [repo_root.parent / DATA_RELATIVE, repo_root / DATA_RELATIVE,
                  Path.cwd().parent / DATA_RELATIVE, Path.cwd() / DATA_RELATIVE]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


@dataclass(frozen=True)
class LabelledRow:
    id: str
    request: GradeRequest
    labels: dict[str, bool]


def load_labelled(path: str | Path, split: str = "all") -> list[LabelledRow]:
    """Read the labelled JSONL (fields: id, prompt, response, concept, labels)."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(
            f"calibration data not found at {p}. Pass --data PATH (or set ${DATA_ENV}); the "
            f"shared copy lives at <workspace>/{DATA_RELATIVE}, beside the repository."
        )
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rows = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            d = json.loads(line)
            response = d.get("response") or ""
            if split != "all" and split_of(response) != split:
                continue
            concept = d.get("concept")
            req = GradeRequest(prompt=d.get("prompt") or "", response=response,
                               word=concept.lower() if concept else None)
            labels = {k: bool(v) for k, v in (d.get("labels") or {}).items() if v is not None}
            rows.append(LabelledRow(id=str(d.get("id", i)), request=req, labels=labels))
    return rows


def _gold(label: str, labels: dict[str, bool]) -> bool | None:
    if label.startswith("correct_id|"):
        # A conjunction: False as soon as one known conjunct is False, unknown if one is missing.
        conjuncts = [labels.get(c) for c in label.split("|", 1)[1].split(",")] + [labels.get("correct_id")]
        if any(c is False for c in conjuncts):
            return False
        if any(c is None for c in conjuncts):
            return None
        return True
    return labels.get(label)


def _ours(label: str, g: Grades) -> bool | None:
    if label == "correct_id":
        return g.raw.get("identifies_word", g.thinking_about_word)
    if label.startswith("correct_id|"):
        return g.correct_id
    if label == "refusal":
        return g.raw.get("denial")
    return getattr(g, label)


@dataclass(frozen=True)
class LabelAgreement:
    """Agreement of the grader with the reference on one label."""

    label: str
    n: int
    skipped: int
    tp: int
    fp: int
    fn: int
    tn: int
    agreement: float
    precision: float
    recall: float
    kappa: float
    reference_positive_rate: float
    grader_positive_rate: float


def _agreement(label: str, pairs: Sequence[tuple[bool | None, bool | None]]) -> LabelAgreement:
    kept = [(o, g) for o, g in pairs if o is not None and g is not None]
    c = Confusion.of([o for o, _ in kept], [g for _, g in kept])
    n = c.n
    return LabelAgreement(
        label=label, n=n, skipped=len(pairs) - n, tp=c.tp, fp=c.fp, fn=c.fn, tn=c.tn,
        agreement=c.agreement, precision=c.precision, recall=c.recall, kappa=c.kappa,
        reference_positive_rate=(c.tp + c.fn) / n if n else math.nan,
        grader_positive_rate=(c.tp + c.fp) / n if n else math.nan,
    )


def _fmt(x: float) -> str:
    return "—" if isinstance(x, float) and math.isnan(x) else f"{x:.3f}"


@dataclass
class CalibrationReport:
    grader: str
    data: str
    split: str
    n_rows: int
    labels: list[LabelAgreement] = field(default_factory=list)

    def __getitem__(self, label: str) -> LabelAgreement:
        for la in self.labels:
            if la.label == label:
                return la
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no NaN: write null.
        for la in d["labels"]:
            for k, v in la.items():
                if isinstance(v, float) and math.isnan(v):
                    la[k] = None
        return d

    def title(self) -> str:
        return f"Grader `{self.grader}` vs reference labels, split `{self.split}` ({self.n_rows} rows)"

    def to_markdown(self) -> str:
        head = (f"{self.title()}\n\n"
                "| label | n | agree | precision | recall | kappa | ref + rate | grader + rate | TP | FP | FN | TN |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        lines = [
            f"| {la.label} | {la.n} | {_fmt(la.agreement)} | {_fmt(la.precision)} | {_fmt(la.recall)} | "
            f"{_fmt(la.kappa)} | {_fmt(la.reference_positive_rate)} | {_fmt(la.grader_positive_rate)} | "
            f"{la.tp} | {la.fp} | {la.fn} | {la.tn} |"
            for la in self.labels
        ]
        return head + "\n".join(lines) + "\n"


def calibrate(
    grader: Grader,
    labelled_jsonl_path: str | Path | None = None,
    labels: Sequence[str] = DEFAULT_LABELS,
    split: str = "all",
    progress: Callable[[str], None] | None = None,
) -> CalibrationReport:
    """Grade every labelled row once (in one batch) and compare per label."""
    path = Path(labelled_jsonl_path) if labelled_jsonl_path else default_data_path()
    rows = load_labelled(path, split)
    if progress:
        progress(f"grading {len(rows)} rows with {grader.name}")
    grades = grader.grade_many([r.request for r in rows])
    report = CalibrationReport(grader=grader.name, data=str(path), split=split, n_rows=len(rows))
    for label in labels:
        pairs = [(_ours(label, g), _gold(label, r.labels)) for r, g in zip(rows, grades, strict=True)]
        report.labels.append(_agreement(label, pairs))
    return report


def _make_grader(args: argparse.Namespace) -> Grader:
    if args.grader == "rules":
        from .rules import RuleGrader

        return RuleGrader()
    from .llm_judge import LLMJudge, OpenAIBackend

    if not (args.base_url and args.model):
        raise SystemExit("--grader openai needs --base-url and --model")
    return LLMJudge(OpenAIBackend(args.base_url, args.model, api_key_env=args.api_key_env),
                    cache_path=args.cache)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m introspect_mech.grading.calibrate",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help=f"labelled JSONL (default: ../{DATA_RELATIVE})")
    ap.add_argument("--split", choices=SPLITS, default="test")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    ap.add_argument("--grader", choices=("rules", "openai"), default="rules")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--cache", type=Path, default=None, help="judge verdict cache (JSONL)")
    args = ap.parse_args(argv)
    try:
        report = calibrate(_make_grader(args), args.data, split=args.split,
                           progress=lambda m: print(m, file=sys.stderr))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.to_markdown())
    if args.out:
        args.out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
