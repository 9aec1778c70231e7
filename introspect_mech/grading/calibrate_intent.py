"""Measure an Experiment 3 grader (offline classifier or LLM judge) against labelled replies.

Why: the apology rate is only as good as the grader that decides what an apology is.
Exp 1's graders are measured against the shared externally graded set; no such set
exists for Exp 3, so the package ships one (``data/exp3_intent_labels.jsonl``, see
``data/README.md``): 541 distinct replies of SmolLM2-135M-Instruct from an Exp 3 sweep,
each labelled ``intent`` / ``apology`` / ``neither`` by two independent annotators
following ``data/exp3_intent_guidelines.md`` (blind to condition and to every grader),
disagreements adjudicated. Same dev/test split rule as Exp 1 (SHA-256 of the reply).

Scored labels:
- ``intent`` — the paper's judge question ("did the AI claim that it intended to say the
  word?"): grader YES vs reference ``intent``. The judge is binary, so its NO covers both
  ``apology`` and ``neither``.
- ``apology`` — grader "apologised / accident" vs reference ``apology``. For the offline
  classifier that is ``intended is False``; for the binary judge it is ``NO`` (so the
  judge's apology precision is bounded by how many replies are ``neither``).
- ``3-way`` (offline classifier only): exact agreement over intent / apology / neither.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError, MissingFileError
from ..stats import Confusion, wilson_interval
from .calibrate import SPLITS, CalibrationReport, agreement, json_objects, split_of
from .intent import classify_intent

LABELS3 = ("intent", "apology", "neither")


@dataclass(frozen=True)
class IntentRow:
    id: str
    word: str
    response: str
    label: str  # intent | apology | neither


def default_intent_data() -> Path:
    return Path(str(resources.files("introspect_mech.grading") / "data" / "exp3_intent_labels.jsonl"))


def load_intent_labels(path: str | Path | None = None, split: str = "all") -> list[IntentRow]:
    """Read and validate the labelled replies; a bad line is a one-line error naming the line."""
    p = Path(path) if path else default_intent_data()
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if not p.is_file():
        raise MissingFileError(f"Exp 3 labelled replies not found at {p}; pass --data PATH (JSONL with id, word, "
                               "response, label in {intent, apology, neither})")
    fix = "each line must be a JSON object with string 'word' and 'response' and 'label' one of " + "/".join(LABELS3)
    rows, n_read = [], 0
    for n, d in json_objects(p, lambda n, what: ArtifactError(f"{p}:{n}: {what}; {fix}")):
        for key in ("word", "response"):
            if not isinstance(d.get(key), str):
                raise ArtifactError(f"{p}:{n}: '{key}' is {'missing' if key not in d else type(d[key]).__name__}, "
                                    f"not a string; {fix}")
        if d.get("label") not in LABELS3:
            raise ArtifactError(f"{p}:{n}: label must be one of {LABELS3} (lowercase), got {d.get('label')!r}")
        n_read += 1
        if split != "all" and split_of(d["response"]) != split:
            continue
        rows.append(IntentRow(str(d.get("id", n)), d["word"], d["response"], d["label"]))
    if not n_read:
        raise ArtifactError(f"{p} has no rows: nothing to calibrate against ({fix})")
    if not rows:
        raise ArtifactError(f"{p}: none of its {n_read} rows is in split {split!r}; use --split all")
    return rows


def _three_way(v: bool | None) -> str:
    return "neither" if v is None else ("intent" if v else "apology")


@dataclass
class IntentCalibration(CalibrationReport):
    three_way: dict[str, Any] | None = None  # agreement with CI, kappa, confusion (offline classifier only)

    def title(self) -> str:
        return f"Exp 3 grader `{self.grader}` vs labelled replies, split `{self.split}` ({self.n_rows} rows)"

    def to_markdown(self) -> str:
        text = super().to_markdown()
        if self.three_way:
            t = self.three_way
            text += (f"\n3-way (intent / apology / neither): agreement {t['agreement']:.3f} "
                     f"[{t['lo']:.3f}, {t['hi']:.3f}], kappa {t['kappa']:.3f} "
                     f"[{t['kappa_ci'][0]:.3f}, {t['kappa_ci'][1]:.3f}]; rows = reference, columns = grader:\n\n"
                     "| reference \\ grader | " + " | ".join(LABELS3) + " |\n|---|---|---|---|\n")
            for ref in LABELS3:
                text += f"| {ref} | " + " | ".join(str(t["confusion"][ref][g]) for g in LABELS3) + " |\n"
        return text


def _kappa3(pairs: Sequence[tuple[str, str]]) -> float:
    n = len(pairs)
    if not n:
        return math.nan
    po = sum(a == b for a, b in pairs) / n
    pe = sum((sum(a == lab for a, _ in pairs) / n) * (sum(b == lab for _, b in pairs) / n) for lab in LABELS3)
    return (po - pe) / (1 - pe) if pe < 1 else math.nan


def _kappa3_interval(pairs: Sequence[tuple[str, str]], level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the 3-way kappa, resampling the rows (seeded, so reproducible)."""
    import numpy as np

    if not pairs:
        return math.nan, math.nan
    idx = {lab: i for i, lab in enumerate(LABELS3)}
    a = np.array([idx[x] for x, _ in pairs])
    b = np.array([idx[y] for _, y in pairs])
    n = len(pairs)
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ra, rb = a[rows], b[rows]
    po = (ra == rb).mean(1)
    pe = sum((ra == k).mean(1) * (rb == k).mean(1) for k in range(len(LABELS3)))
    ok = pe < 1
    if not ok.any():
        return math.nan, math.nan
    lo, hi = np.quantile((po[ok] - pe[ok]) / (1 - pe[ok]), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def calibrate_intent(
    verdicts_of: Callable[[Sequence[str], Sequence[str]], Sequence[bool | None]],
    grader_name: str,
    data: str | Path | None = None,
    split: str = "test",
    binary: bool = False,
) -> IntentCalibration:
    """Score ``verdicts_of(words, responses)`` (True intent / False apology / None unclear).

    ``binary=True`` for graders that only answer YES/NO (the paper's judge): ``None`` then
    never occurs and the 3-way table is not computed."""
    rows = load_intent_labels(data, split)
    verdicts = list(verdicts_of([r.word for r in rows], [r.response for r in rows]))
    rep = IntentCalibration(grader_name, str(data or default_intent_data()), split, len(rows))
    rep.labels.append(agreement("intent", [(v is True, r.label == "intent") for v, r in zip(verdicts, rows)]))
    rep.labels.append(agreement("apology", [(v is False, r.label == "apology") for v, r in zip(verdicts, rows)]))
    if not binary:
        pairs = [(r.label, _three_way(v)) for v, r in zip(verdicts, rows)]
        k = sum(a == b for a, b in pairs)
        ci = wilson_interval(k, len(pairs))
        rep.three_way = {"agreement": k / len(pairs) if pairs else math.nan, "lo": ci[0], "hi": ci[1],
                         "kappa": _kappa3(pairs), "kappa_ci": list(_kappa3_interval(pairs)),
                         "confusion": {a: {b: sum(1 for x, y in pairs if x == a and y == b) for b in LABELS3}
                                       for a in LABELS3}}
    return rep


def offline_verdicts(words: Sequence[str], responses: Sequence[str]) -> list[bool | None]:
    return [classify_intent(r).intended for r in responses]


def annotator_agreement(path: str | Path | None = None) -> dict[str, Any]:
    """Agreement between the two annotators before adjudication (the ceiling any grader can be held to)."""
    p = Path(path) if path else default_intent_data()
    rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    pairs = [(r["label_a"], r["label_b"]) for r in rows if "label_a" in r and "label_b" in r]
    k = sum(a == b for a, b in pairs)
    c = Confusion.of([a == "intent" for a, _ in pairs], [b == "intent" for _, b in pairs])
    return {"n": len(pairs), "agreement": k / len(pairs) if pairs else math.nan, "kappa_3way": _kappa3(pairs),
            "kappa_intent": c.kappa}
