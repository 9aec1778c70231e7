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

Usage: introspect-mech calibrate [--task exp1|exp3-intent] [--grader rules|hf:M|openai:M] [--data PATH]
[--split test|dev|all] [--out report.json] [--store]; `python -m introspect_mech.grading.calibrate` is an alias.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError, IntrospectError, MissingFileError
from ..stats import Confusion, kappa_interval
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


def json_objects(path: Path, bad: Callable[[int, str], Exception]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a labelled JSONL file; a line that is not a JSON
    object raises ``bad(line_number, what)`` (each data set words its own fix)."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise bad(n, f"not valid JSON ({exc.msg})") from None
            if not isinstance(d, dict):
                raise bad(n, f"a JSON {type(d).__name__}, not an object")
            yield n, d


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
    for n, d in json_objects(p, lambda n, what: _bad(p, n, what)):
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
    kappa_lo: float = math.nan  # 95 % percentile bootstrap over the rated rows (stats.kappa_interval)
    kappa_hi: float = math.nan


def agreement(label: str, pairs: Sequence[tuple[bool | None, bool | None]]) -> LabelAgreement:
    kept = [(o, g) for o, g in pairs if o is not None and g is not None]
    c = Confusion.of([o for o, _ in kept], [g for _, g in kept])
    n = c.n
    lo, hi = kappa_interval(c.tp, c.fp, c.fn, c.tn)
    return LabelAgreement(
        kappa_lo=lo, kappa_hi=hi,
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
                "| label | n | agree | precision | recall | kappa [95 % CI] | ref + rate | grader + rate | TP | FP | FN | TN |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        lines = [
            f"| {la.label} | {la.n} | {_fmt(la.agreement)} | {_fmt(la.precision)} | {_fmt(la.recall)} | "
            f"{_fmt(la.kappa)} [{_fmt(la.kappa_lo)}, {_fmt(la.kappa_hi)}] | {_fmt(la.reference_positive_rate)} | "
            f"{_fmt(la.grader_positive_rate)} | "
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
        report.labels.append(agreement(label, pairs))
    return report


TASKS = ("exp1", "exp3-intent")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``introspect-mech calibrate`` (and of its alias ``python -m introspect_mech.grading.calibrate``)."""
    p.add_argument("--task", default="exp1", choices=TASKS,
                   help="exp1: the shared externally graded Exp 1 set; exp3-intent: the packaged Exp 3 labels")
    p.add_argument("--grader", default="rules",
                   help="'rules' (offline; exp1: 'rules-literal' without the related-concept step), or a judge: "
                        "'hf:MODEL' or 'openai:MODEL'")
    p.add_argument("--judge-url", default=None, help="base URL of an OpenAI-compatible endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the judge's API key")
    p.add_argument("--cache", type=Path, default=None, help="judge verdict cache (JSONL)")
    p.add_argument("--data", type=Path, default=None,
                   help=f"labelled JSONL (default: the task's own set; exp1: ../{DATA_RELATIVE} or ${DATA_ENV})")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--store", action="store_true",
                   help="exp1: also record recall/precision in the package (grading/data/grader_calibration.json), "
                        "where the Exp 1 report reads them")


def run(args: argparse.Namespace) -> int:
    """Score the chosen grader on the task's labelled set and print (and optionally write) the report."""
    from ..store import atomic_write_json
    from .factory import check_grader_name, make_grader, make_judge

    check_grader_name(args.grader, literal=args.task == "exp1")
    judge = dict(base_url=args.judge_url, cache_path=args.cache, api_key_env=args.api_key_env)
    if args.task == "exp3-intent":
        from . import calibrate_intent as ci

        if args.store:
            raise ConfigError("--store records the Exp 1 grader's quality; drop it for --task exp3-intent")
        if args.grader == "rules-literal":
            raise ConfigError("'rules-literal' is an Exp 1 grader; use --grader rules for --task exp3-intent")
        if args.grader == "rules":
            rep = ci.calibrate_intent(ci.offline_verdicts, "rules (grading/intent.py)", args.data, args.split)
        else:
            rep = ci.calibrate_intent(make_judge(args.grader, **judge).intended, args.grader, args.data, args.split,
                                      binary=True)
        agree = ci.annotator_agreement(args.data)
        print(rep.to_markdown())
        if agree["n"]:  # only sets with two annotators' labels (label_a, label_b) have this
            print(f"Annotator agreement before adjudication (all {agree['n']} rows): {agree['agreement']:.3f}, "
                  f"3-way kappa {agree['kappa_3way']:.3f}, intent kappa {agree['kappa_intent']:.3f}")
        if args.out:
            atomic_write_json(args.out, {**rep.to_dict(), "annotator_agreement": agree})
        return 0
    report = calibrate(make_grader(args.grader, **judge), args.data, split=args.split,
                       progress=lambda m: print(m, file=sys.stderr))
    print(report.to_markdown())
    if args.out:
        atomic_write_json(args.out, report.to_dict())
    if args.store:
        from . import calibration_store

        print(f"stored in {calibration_store.store(report)}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m introspect_mech.grading.calibrate``: an alias of ``introspect-mech calibrate`` (same options)."""
    ap = argparse.ArgumentParser(prog="python -m introspect_mech.grading.calibrate",
                                 description=__doc__.split("\n")[0] + " (same as `introspect-mech calibrate`)")
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except IntrospectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
