"""Measure a grader against labelled responses (per-label agreement, precision, recall, kappa).

Why: any grader (rules, a local judge, an API judge) is only as good as its agreement with a
reference; this makes that agreement a number reported next to every result. The shared data
set is Claude Sonnet 4's grading of 1,310 Llama responses (one judge's opinion, not ground
truth) -- see shared/eval/grading/README.md.

Split: a fixed split by the SHA-256 of the response text (odd first byte -> "test"), so
duplicate responses (968 unique of 1,310) always fall on the same side. The rule grader was
tuned on "dev" only; "test" is the held-out figure to report.

Label mapping (the source's `correct_id` is NOT conditional on `affirmative`, and the source
judge does not apply the paper's order rule to it: "Justice." is affirmative and correct there):
- correct_id: source correct_id vs our unconditional identification (`raw["identifies_word"]`,
  or `thinking_about_word` for graders without it).
- correct_id|affirmative: source (affirmative AND correct_id) vs our `correct_id`, which is the
  paper's affirmative_correct_id (order rule included). A missing source correct_id counts as
  False when the source affirmative is False (the conjunction is then False regardless), and is
  skipped otherwise.
- correct_id|affirmative,any_order: the same reference vs our affirmative AND identification in
  any order -- the like-for-like comparison for the identification step itself.
- correct_id|affirmative,implicit: the same reference vs the grader's prediction of that
  reference label (`raw["detects_and_identifies"]`: identification with an explicit detection
  claim in any order, or an implicit one -- the reply answers with the word and names it as the
  thought). Scored on rows with a concept only (no word, no identification). This is the
  reference's success label, which is not the paper's: it has no order rule. Graders without
  that output are scored with their any-order conjunction.
- correct_id|affirmative,before_mention: source (affirmative AND before_mention AND correct_id)
  vs our `correct_id` -- the closest reference to the paper's rule, which also requires the
  detection claim to come no later than the word. This is the row behind the Exp 1 success rate.
- affirmative_correct_id: a single success label (e.g. a judge run with the paper's
  affirmative_correct_id prompt) vs our `correct_id`.
Rows whose reference has no value for a label are skipped for it; labels no row has are left out.

Which success is which. The paper's success (affirmative_correct_id) requires the detection claim
no later than the word and grades a reply that opens with the word as NO; the toolkit's reported
success rates use it (`Grades.correct_id`). The shared set's judge was asked for affirmative and
correct_id separately and was shown the injected concept, so its success (affirmative AND
correct_id) has no order rule: its correct_id|affirmative row is a different construct, and only
3 of its 1,310 rows are positive under the paper's rule (correct_id|affirmative,before_mention),
too few to measure the paper-rule grader. The row `correct_id|affirmative,implicit` scores the
rule grader's best prediction of the reference's construct. On it the reference itself is the
limit: 7 of 11 dev and 8 of 11 test positives are replies that open with the word, and the
reference calls such a reply affirmative for about one in three replies that name the right
word (7/22 dev, 8/24 test), with no rule found on dev that transfers ("The Ocean." yes twice,
"The ocean." no twice). Measured (rules grader): kappa 0.79 dev, 0.29 test.

Input: one JSON object a line with `response` (string), `labels` (an object whose values are
true, false or null -- strings such as "false" are refused, not read as True), optional
`prompt` (string) and `concept` (string with a letter or digit, or null), optional `id`.

Usage: python -m introspect_mech.grading.calibrate [--data PATH] [--split test|dev|all] [--out report.json] [--store]
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

from ..errors import ArtifactError, ConfigError, IntrospectError, MissingFileError
from ..stats import Confusion
from .base import Grader, GradeRequest, Grades

DATA_ENV = "INTROSPECT_GRADING_DATA"
DATA_RELATIVE = Path("shared/eval/grading/allied_llama31_claude-sonnet-4.jsonl")
DEFAULT_LABELS = ("coherent", "affirmative", "correct_id", "correct_id|affirmative",
                  "correct_id|affirmative,any_order", "correct_id|affirmative,implicit",
                  "correct_id|affirmative,before_mention", "before_mention",
                  "affirmative_correct_id")
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


def _bad(p: Path, n: int, what: str) -> ArtifactError:
    return ArtifactError(f"{p}:{n}: {what}. Each line must be a JSON object with a string 'response', "
                         "optional string 'prompt' and 'concept', and 'labels' mapping label names to true/false/null")


def load_labelled(path: str | Path, split: str = "all") -> list[LabelledRow]:
    """Read the labelled JSONL (fields: id, prompt, response, concept, labels), validating every line.

    Why strict: a label "false" (a string) would be truthy, and a calibration that silently reads
    it as True reports agreement with a reference that says the opposite."""
    p = Path(path)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if not p.is_file():
        raise MissingFileError(
            f"calibration data not found at {p}. Pass --data PATH (or set ${DATA_ENV}); the "
            f"shared copy lives at <workspace>/{DATA_RELATIVE}, beside the repository."
        )
    rows, n_read = [], 0
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(p, n, f"not valid JSON ({exc.msg})") from None
            if not isinstance(d, dict):
                raise _bad(p, n, f"a JSON {type(d).__name__}, not an object")
            response, prompt, concept, labels = d.get("response"), d.get("prompt"), d.get("concept"), d.get("labels")
            if not isinstance(response, str):
                raise _bad(p, n, f"'response' is {type(response).__name__}, not a string")
            if prompt is not None and not isinstance(prompt, str):
                raise _bad(p, n, f"'prompt' is {type(prompt).__name__}, not a string")
            if concept is not None and not isinstance(concept, str):
                raise _bad(p, n, f"'concept' is {type(concept).__name__}, not a string")
            if isinstance(concept, str) and not any(c.isalnum() for c in concept):
                raise _bad(p, n, f"'concept' {concept!r} has no letter or digit (no reply could name it)")
            if not isinstance(labels, dict):
                raise _bad(p, n, f"'labels' is {type(labels).__name__}, not an object")
            for k, v in labels.items():
                if v is not None and not isinstance(v, bool):
                    raise _bad(p, n, f"label {k!r} is {v!r}, not true/false/null")
            n_read += 1
            if split != "all" and split_of(response) != split:
                continue
            req = GradeRequest(prompt=prompt or "", response=response, word=concept.lower() if concept else None)
            rows.append(LabelledRow(id=str(d.get("id", n)), request=req,
                                    labels={k: v for k, v in labels.items() if v is not None}))
    if not n_read:
        raise ArtifactError(f"{p} has no rows: nothing to calibrate against (one JSON object a line)")
    if not rows:
        raise ArtifactError(f"{p}: none of its {n_read} rows is in split {split!r}; use --split all")
    return rows


ANY_ORDER = "any_order"
IMPLICIT = "implicit"
# Suffixes that choose which output of *our* grader is compared; they name no reference label.
_OURS_ONLY = (ANY_ORDER, IMPLICIT)


def _gold(label: str, labels: dict[str, bool]) -> bool | None:
    if label.startswith("correct_id|"):
        # A conjunction: False as soon as one known conjunct is False, unknown if one is missing.
        names = [c for c in label.split("|", 1)[1].split(",") if c not in _OURS_ONLY] + ["correct_id"]
        conjuncts = [labels.get(c) for c in names]
        if any(c is False for c in conjuncts):
            return False
        if any(c is None for c in conjuncts):
            return None
        return True
    return labels.get(label)


def _identifies(g: Grades) -> bool | None:
    return g.raw.get("identifies_word", g.thinking_about_word)


def _ours(label: str, g: Grades) -> bool | None:
    if label == "correct_id":
        return _identifies(g)
    if label == f"correct_id|affirmative,{IMPLICIT}":
        if "detects_and_identifies" in g.raw:
            return g.raw["detects_and_identifies"]
        label = f"correct_id|affirmative,{ANY_ORDER}"
    if label == f"correct_id|affirmative,{ANY_ORDER}":
        ident = _identifies(g)
        if g.affirmative is False or ident is False:
            return False
        return None if g.affirmative is None or ident is None else True
    if label.startswith("correct_id|") or label == "affirmative_correct_id":
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
        if all(gold is None for _, gold in pairs):
            continue  # the data have no such label (e.g. a set labelled only affirmative_correct_id)
        report.labels.append(_agreement(label, pairs))
    return report


def _make_grader(args: argparse.Namespace) -> Grader:
    if args.grader in ("rules", "rules-literal"):
        from .rules import RuleGrader

        return RuleGrader() if args.grader == "rules" else RuleGrader(related=None)
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
    ap.add_argument("--grader", choices=("rules", "rules-literal", "openai"), default="rules",
                    help="rules: the offline grader (related concepts by embedding); rules-literal: the word "
                         "and its plural only (no model)")
    ap.add_argument("--store", action="store_true",
                    help="also record the result in the package (grading/data/grader_calibration.json), "
                         "where the Exp 1 report reads the grader's recall and precision")
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--cache", type=Path, default=None, help="judge verdict cache (JSONL)")
    args = ap.parse_args(argv)
    try:
        report = calibrate(_make_grader(args), args.data, split=args.split,
                           progress=lambda m: print(m, file=sys.stderr))
    except IntrospectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.to_markdown())
    if args.out:
        args.out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if args.store:
        from . import calibration_store

        print(f"stored in {calibration_store.store(report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
