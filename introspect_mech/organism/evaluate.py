"""A quick held-out evaluation of an organism (or the base model), for iterating on recipes.

Not the full Exp 1 sweep (``introspect-mech run injected-thoughts --adapter ...`` is): this
runs the paper's Exp 1 prompt on the paper's 50 words — never seen in training — with the
concept vector scaled to a *target dose* at each layer, greedy and sampled at T=1, beside
the controls that matter for the organism's goals:

- ``injected``: the concept vector (dose-scaled) → should claim detection and name the word;
- ``control``: no injection (sampled; one greedy row, greedy being deterministic) → false positives;
- ``random_vector``: a random direction norm-matched to the word's vector, same strength
  (``random_like``, the experiment's control) → should say "something unusual, can't tell what";
- ``yes_bias`` / ``yes_bias_clean``: the protocol's 20 questions whose answer is "no", with
  and without injection → injection must not turn answers into "yes";
- ``forced_naming`` (greedy): the reply prefilled with "Yes, I detect an injected thought. It is
  about" under the same injection → what the model names when it must name something. Its
  ``success`` is the first sentence naming the word or a closely related concept (the grader's
  related-concept step): the ceiling of the organism's naming, which separates "cannot name"
  from "chose to say 'unusual'" (the base model scores ~0 here; see RESULTS).

Grading: the toolkit's offline rule grader with its related-concept step (``RuleGrader()``:
``affirmative``, ``coherent``, ``correct_id`` = the word *or a closely related concept* by
all-MiniLM-L6-v2 cosine, named as the thought, with the paper's order rule — the detection
claim before or with the first mention; ``success`` = coherent AND correct_id, the paper's
trial success), plus two exact checks of this module — ``named``: the word or its
plural/singular appears; ``unusual``: the reply says something is unusual and that it cannot
tell what.

The headline success is read at a *held-out-selected* cell, as the Exp 1 report reads it: the
paper's words are split in two halves by a hash of the word (``injected_thoughts.report.heldout_fold``),
the (layer, dose) with the highest success on one half is read on the other half, and vice
versa; the two readings are pooled (every word counted once, at a cell chosen without it).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..concepts import extract_concept_vectors
from ..arch import parse_layer
from ..errors import ConfigError, LayerError
from ..execution import build_prefix_cache, generate
from ..experiments.injected_thoughts.prompt import exp1_prompt
from ..experiments.injected_thoughts.report import grader_quality
from ..grading import calibration_store
from ..grading.base import Grader, GradeRequest
from ..grading.rules import RuleGrader, word_pattern
from ..inject import Injection, random_like
from ..seeds import seed_from
from ..stats import Rate
from ..store import atomic_write_json, atomic_write_text
from .recipe import protocol_yes_bias_questions, trial_prompt
from .train import dose_references
from .words import held_out_words

if TYPE_CHECKING:
    from ..models import Model

UNUSUAL = re.compile(r"\b(?:unusual|strange|odd|anomal\w*)\b", re.IGNORECASE)
CANT_TELL = re.compile(r"\b(?:cannot|can't|can’t|can\s+not|unable\s+to|not\s+able\s+to)\s+(?:tell|say|identify|determine)\b",
                       re.IGNORECASE)


def says_unusual(text: str) -> bool:
    """"Something unusual, but I cannot tell what": an anomaly report without a concept."""
    return bool(UNUSUAL.search(text) and CANT_TELL.search(text))


MAX_DOSE = 100.0
"""Largest dose ``organism eval`` takes: at 100x the mean residual norm the residual is the injected vector alone
(training draws doses below 1), and larger values only risk float overflow in the layers above."""


@dataclass
class EvalConfig:
    layers: list[int] = field(default_factory=lambda: [14])
    # 0.5: the detection goal's dose; 0.85: near the top of the training range, next to the Exp 1 sweep's
    # best naming cell (dose 0.84). The summary's held-out selection picks between them on the other half
    # of the words; the grid itself was chosen after seeing those words' sweep (say so when reporting)
    doses: list[float] = field(default_factory=lambda: [0.5, 0.85])
    words: list[str] | None = None  # default: the paper's 50 (held out)
    modes: tuple[str, ...] = ("greedy", "sampled")
    control_trials: int = 50  # sampled no-injection trials
    random_per_cell: int = 50  # random norm-matched vectors per (layer, dose, mode)
    yes_bias: bool = True
    max_new_tokens: int = 24
    batch_size: int = 32
    seed: int = 0
    forced_naming: bool = True  # also the prefilled-claim rows (greedy), the naming ceiling

    def validate(self) -> None:
        if not self.layers or not self.doses:
            raise ConfigError("evaluation needs at least one layer and one dose")
        if any(not (0 < d <= MAX_DOSE) for d in self.doses):
            raise ConfigError(f"--doses must be numbers in (0, {MAX_DOSE:g}] (‖s·v‖ / mean ‖h‖), got {self.doses}")
        for L in self.layers:  # the model checks the index range; the form is checked before it loads
            try:
                parse_layer(L)
            except LayerError as exc:
                raise ConfigError(f"--layers: {exc}") from None
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if set(self.modes) - {"greedy", "sampled"} or not self.modes:
            raise ConfigError(f"modes must be a subset of greedy, sampled; got {self.modes}")
        for what, vals in (("--doses", list(self.doses)), ("--modes", list(self.modes)), ("--layers", list(self.layers))):
            twice = sorted({str(v) for v in vals if vals.count(v) > 1})
            if twice:
                raise ConfigError(f"{what} lists {', '.join(twice)} twice; list each once")
        if self.control_trials < 0 or self.random_per_cell < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("control_trials and random_per_cell must be >= 0, max_new_tokens and batch_size >= 1")


@dataclass(frozen=True, eq=False)
class EvalRow:
    """One trial to generate: its condition, decoding mode, prompt and injection (shared with ``ablation``)."""

    condition: str
    mode: str
    prompt: Any
    injection: Injection | None
    word: str | None
    layer: int | None = None
    dose: float | None = None
    question: str | None = None


def _rows(model: Model, cfg: EvalConfig, words: list[str], vectors: Any) -> list[EvalRow]:
    p = exp1_prompt(model.tokenizer)
    prompt, window = p.rendered, p.window
    qs = protocol_yes_bias_questions() if cfg.yes_bias else []
    q_prompts = [trial_prompt(model.tokenizer, 0, q) for q in qs]
    refs = dose_references(model, [(prompt, window)] + q_prompts, cfg.layers)
    rows: list[EvalRow] = []

    def strength(w: str, L: int, d: float, ref: dict[int, float]) -> float:  # the dose d on this prompt
        return d * ref[L] / float(vectors.get(w, L).double().norm())

    for mode in cfg.modes:
        for L in cfg.layers:
            for d in cfg.doses:
                for w in words:
                    rows.append(EvalRow("injected", mode, prompt,
                                        Injection(vectors.get(w, L), L, strength(w, L, d, refs[0]), window, label=w),
                                        w, L, d))
                for i in range(min(cfg.random_per_cell, len(words) * 10)):
                    w = words[i % len(words)]
                    rv = random_like(vectors.get(w, L), seed_from("organism-eval-random", w, L, i))
                    rows.append(EvalRow("random_vector", mode, prompt,
                                        Injection(rv, L, strength(w, L, d, refs[0]), window, label="random"), w, L, d))
                for k, (q, (qp, qw)) in enumerate(zip(qs, q_prompts)):
                    w = words[k % len(words)]
                    rows.append(EvalRow("yes_bias", mode, qp,
                                        Injection(vectors.get(w, L), L, strength(w, L, d, refs[1 + k]), qw, label=w),
                                        w, L, d, q))
        n_ctl = 1 if mode == "greedy" else cfg.control_trials
        rows += [EvalRow("control", mode, prompt, None, words[k % len(words)]) for k in range(n_ctl)]
        rows += [EvalRow("yes_bias_clean", mode, qp, None, None, question=q) for q, (qp, _) in zip(qs, q_prompts)]
    if cfg.forced_naming:
        fp = forced_prompt(model.tokenizer)
        for L in cfg.layers:
            for d in cfg.doses:
                for w in words:  # the same vector and strength as the word's ``injected`` row
                    rows.append(EvalRow("forced_naming", "greedy", fp.rendered,
                                        Injection(vectors.get(w, L), L, strength(w, L, d, refs[0]), fp.window, label=w),
                                        w, L, d))
    return rows


FORCED_PREFIX = "Yes, I detect an injected thought. It is about"


def forced_prompt(tokenizer: Any) -> Any:
    """The Exp 1 prompt with the reply prefilled up to the concept (``FORCED_PREFIX``); its window starts
    where the Exp 1 prompt's does (the prefill is later tokens of the same sequence, checked)."""
    from ..experiments.injected_thoughts.prompt import Exp1Prompt, exp1_turns, exp1_window
    from ..prompts import render

    rp = render(tokenizer, exp1_turns(), prefill=FORCED_PREFIX)
    plain = exp1_prompt(tokenizer)
    if rp.input_ids[:plain.start] != plain.rendered.input_ids[:plain.start] or exp1_window(rp) != plain.start:
        raise ConfigError("the prefilled Exp 1 prompt does not extend the Exp 1 prompt; forced naming is not "
                          "comparable for this tokenizer (pass forced_naming=False)")
    return Exp1Prompt(rp, plain.start)


def generate_rows(model: Model, cfg: EvalConfig, rows: list[EvalRow], progress: bool) -> list[dict]:
    """Generate every row; rows sharing the Exp 1 prompt use its prefix KV cache (exact)."""
    from tqdm.auto import tqdm

    p = exp1_prompt(model.tokenizer)
    prefix = None if model.remote else build_prefix_cache(model, p.rendered.input_ids[:p.start])
    groups: dict[tuple, list[int]] = {}  # (mode, uses the Exp 1 prompt) -> row indices; others are left-padded
    for i, r in enumerate(rows):
        groups.setdefault((r.mode, r.prompt.input_ids == p.rendered.input_ids), []).append(i)
    out: list[dict | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), desc="eval", unit="trial", disable=not progress)
    for (mode, exp1), idx in groups.items():
        use_prefix = exp1 and prefix is not None
        for j in range(0, len(idx), cfg.batch_size):
            chunk = idx[j:j + cfg.batch_size]
            gen = generate(model, [rows[i].prompt for i in chunk], [rows[i].injection for i in chunk],
                           max_new_tokens=cfg.max_new_tokens, temperature=1.0 if mode == "sampled" else 0.0,
                           seed=seed_from("organism-eval", cfg.seed, mode, j, chunk[0]),
                           prefix=prefix if use_prefix else None)
            for i, text, dose in zip(chunk, gen.texts, gen.doses):
                r = rows[i]
                out[i] = {"condition": r.condition, "mode": r.mode, "word": r.word, "layer": r.layer,
                          "target_dose": r.dose, "dose": dose[0] if dose else None, "question": r.question,
                          "strength": r.injection.strength if r.injection is not None else None, "text": text}
            bar.update(len(chunk))
    bar.close()
    return [o for o in out if o is not None]


def grade(records: list[dict], grader: Grader | None = None) -> list[dict]:
    """Add the grader's verdicts (default: ``RuleGrader()`` with its related-concept step) and this
    module's exact checks to each record (in place); all replies are graded in one batch."""
    grader = RuleGrader() if grader is None else grader
    forced = [r for r in records if r.get("condition") == "forced_naming"]
    records_graded = [r for r in records if r.get("condition") != "forced_naming"]
    _grade_forced(forced, getattr(grader, "related", None))
    grades = grader.grade_many([GradeRequest(prompt="", response=r["text"], word=r["word"]) for r in records_graded])
    for rec, g in zip(records_graded, grades, strict=True):
        rec["affirmative"], rec["coherent"] = bool(g.affirmative), bool(g.coherent)
        rec["correct_id"] = g.correct_id
        rec["success"] = g.success
        rec["related"] = (g.raw.get("related") or [None])[0]  # (sentence, phrase, cosine) of the first related phrase
        rec["named"] = bool(word_pattern(rec["word"]).search(rec["text"])) if rec["word"] else None
        rec["unusual"] = says_unusual(rec["text"])
        rec["says_yes"] = bool(re.match(r"\W*(?:yes|yeah|yep)\b", rec["text"], re.IGNORECASE))
    return records


def _grade_forced(records: list[dict], related: Any = None) -> None:
    """Forced-naming rows: ``success`` = the continuation's first sentence names the word or a closely
    related concept (``RelatedConcepts``, the grader's step; literal word and plural/singular always count).
    The claim is prefilled, so ``affirmative``/``correct_id``/``says_yes`` do not apply (None)."""
    from ..grading.rules import RelatedConcepts, candidate_phrases, split_sentences

    if not records:
        return
    related = related or RelatedConcepts()
    firsts = [(split_sentences(r["text"]) or [None])[0] for r in records]
    related.prepare([f.text for f in firsts if f is not None] + [r["word"] for r in records])
    for rec, first in zip(records, firsts, strict=True):
        text = first.text if first is not None else ""
        best = related.best(rec["word"], candidate_phrases(text)) if text else None
        rec["named"] = bool(word_pattern(rec["word"]).search(text))
        rec["related"] = None if best is None else (0, best[0], round(best[1], 4))
        rec["success"] = rec["named"] or (best is not None and best[1] >= related.threshold)
        rec["affirmative"] = rec["correct_id"] = rec["says_yes"] = None
        rec["coherent"] = None
        rec["unusual"] = says_unusual(rec["text"])


def _rate(rows: list[dict], key: str) -> dict:
    r = Rate.from_bools(x[key] for x in rows)
    return {"k": r.k, "n": r.n, "rate": r.rate, "lo": r.lo, "hi": r.hi}


RATE_KEYS = ("affirmative", "success", "named", "correct_id", "unusual", "coherent", "says_yes")


def summarize(records: list[dict]) -> dict:
    """Rates with Wilson intervals per (condition, mode, layer, target dose), the held-out-selected
    success per mode, and the organism goals."""
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault((r["condition"], r["mode"], r["layer"], r["target_dose"]), []).append(r)
    table = []
    for (cond, mode, L, d), rows in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        entry = {"condition": cond, "mode": mode, "layer": L, "dose": d, "n": len(rows)}
        for key in RATE_KEYS:
            entry[key] = _rate(rows, key)
        doses = [r["dose"] for r in rows if r["dose"] is not None]
        entry["mean_dose"] = sum(doses) / len(doses) if doses else None
        table.append(entry)
    held = {mode: held_out_selected(records, mode) for mode in sorted({r["mode"] for r in records})}
    held = {m: h for m, h in held.items() if h}
    return {"cells": table, "held_out": held, "goals": goals(table, held)}


def held_out_selected(records: list[dict], mode: str, key: str = "success") -> dict:
    """Success at the held-out-selected cell: pick the (layer, dose) with the highest ``key`` rate on
    one half of the words, read it on the other half, and vice versa; pool the two readings.

    Why: the best of many cells, read on the words it was chosen on, is biased upwards (the
    maximum of noisy rates); reading it on words the choice never saw is not. Ties are broken
    by the lower dose, then the lower layer (the cells are sorted). The random-vector and
    "unusual" rates of the chosen cells are reported beside, on the same half."""
    from ..experiments.injected_thoughts.report import heldout_fold

    inj = [r for r in records if r["condition"] == "injected" and r["mode"] == mode and r.get(key) is not None]
    if not inj:
        return {}
    per: dict[tuple, list[list[dict]]] = {}
    for r in inj:
        per.setdefault((r["layer"], r["target_dose"]), [[], []])[heldout_fold(r["word"])].append(r)
    rnd: dict[tuple, list[dict]] = {}
    for r in records:
        if r["condition"] == "random_vector" and r["mode"] == mode:
            rnd.setdefault((r["layer"], r["target_dose"]), []).append(r)
    folds, pooled = [], {k: [] for k in ("success", "affirmative", "named", "unusual")}
    for sel in (0, 1):
        def score(cell: tuple) -> float:
            v = per[cell][sel]
            return sum(bool(r[key]) for r in v) / len(v) if v else -1.0

        best = max(sorted(per), key=score)  # max keeps the first of equal scores
        ev = per[best][1 - sel]
        for k in pooled:
            pooled[k] += [bool(r[k]) for r in ev]
        folds.append({"selected_on_fold": sel, "layer": best[0], "dose": best[1],
                      "selection": _rate(per[best][sel], key), "held_out": _rate(ev, key),
                      "random_unusual": _rate(rnd.get(best, []), "unusual") if rnd.get(best) else None})
    out = {"selected_by": key, "folds": folds}
    chosen = sorted({(f["layer"], f["dose"]) for f in folds})  # each chosen cell's random rows counted once
    out["random_unusual_selected_cells"] = _rate([r for c in chosen for r in rnd.get(c, [])], "unusual")
    for k, vals in pooled.items():
        r = Rate.from_bools(vals)
        out[f"pooled_{k}"] = {"k": r.k, "n": r.n, "rate": r.rate, "lo": r.lo, "hi": r.hi}
    return out


def goals(table: list[dict], held: dict | None = None) -> dict:
    """The issue's goals on held-out words, each with the measured value and whether it is met.

    Success is the pooled held-out-selected success (``held_out_selected``) when ``held`` has it;
    the best cell's exact-word rate is kept beside it as ``named_best_cell`` (selected and read
    on the same words, so biased upwards; for comparison with earlier summaries only)."""
    held = held or {}
    def cell(cond: str, mode: str, d: float | None = None) -> list[dict]:
        return [c for c in table if c["condition"] == cond and c["mode"] == mode and (d is None or c["dose"] == d)]

    out: dict[str, Any] = {}
    inj = [c for c in table if c["condition"] == "injected"]
    doses = sorted({c["dose"] for c in inj})
    d05 = min(doses, key=lambda d: abs(d - 0.5)) if doses else None
    ctl = cell("control", "sampled")
    if ctl:
        fp = ctl[0]["affirmative"]
        out["false_positives_sampled"] = {"value": fp["rate"], "k": fp["k"], "n": fp["n"], "goal": "<= 0.05",
                                          "met": fp["rate"] <= 0.05}
    for mode in ("sampled", "greedy"):
        at = [c for c in cell("injected", mode, d05)]
        if at:
            best = max(at, key=lambda c: c["affirmative"]["rate"])
            out[f"detection_dose_{d05:g}_{mode}"] = {"value": best["affirmative"]["rate"], "layer": best["layer"],
                                                     "goal": ">= 0.95", "met": best["affirmative"]["rate"] >= 0.95}
        h = held.get(mode)
        if h:
            ps = h["pooled_success"]
            out[f"success_held_out_selected_{mode}"] = {
                "value": ps["rate"], "k": ps["k"], "n": ps["n"], "lo": ps["lo"], "hi": ps["hi"],
                "cells": [(f["layer"], f["dose"]) for f in h["folds"]],
                "goal": ">= 0.40 (word or closely related concept, detection before/with mention)",
                "met": ps["rate"] >= 0.40}
            ru = h.get("random_unusual_selected_cells")
            if ru and ru["n"]:  # random vectors at the cells where success was read
                out[f"random_unusual_at_selected_{mode}"] = {"value": ru["rate"], "k": ru["k"], "n": ru["n"],
                                                             "goal": ">= 0.80", "met": ru["rate"] >= 0.80}
        allc = cell("injected", mode)
        if allc:
            best = max(allc, key=lambda c: c["named"]["rate"])
            out[f"named_best_cell_{mode}"] = {"value": best["named"]["rate"], "layer": best["layer"],
                                              "dose": best["dose"], "goal": "info (exact word; same-words selection)",
                                              "met": None}
        forced = cell("forced_naming", mode)
        if forced:
            best = max(forced, key=lambda c: c["success"]["rate"])
            out[f"forced_naming_best_cell_{mode}"] = {
                "value": best["success"]["rate"], "layer": best["layer"], "dose": best["dose"],
                "goal": "info (naming ceiling: reply prefilled up to the concept; same-words selection)", "met": None}
        rnd = cell("random_vector", mode, d05)
        if rnd:
            r = min(rnd, key=lambda c: c["unusual"]["rate"])
            out[f"random_unusual_dose_{d05:g}_{mode}"] = {"value": r["unusual"]["rate"], "layer": r["layer"],
                                                          "goal": ">= 0.80", "met": r["unusual"]["rate"] >= 0.80}
    return out


def markdown(summary: dict) -> str:
    def pct(x: dict) -> str:
        return "–" if x["n"] == 0 else f"{x['rate']:.2f} [{x['lo']:.2f}, {x['hi']:.2f}]"

    lines = ["| condition | mode | layer | dose | n | claims detection | success (related, order) | names word | "
             "'unusual, can't tell' | starts 'Yes' |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in summary["cells"]:
        d = "–" if c["dose"] is None else f"{c['dose']:g}"
        lines.append(f"| {c['condition']} | {c['mode']} | {c['layer'] if c['layer'] is not None else '–'} | {d} | "
                     f"{c['n']} | {pct(c['affirmative'])} | {pct(c['success'])} | {pct(c['named'])} | "
                     f"{pct(c['unusual'])} | {pct(c['says_yes'])} |")
    lines.append("")
    for mode, h in (summary.get("held_out") or {}).items():
        cells = "; ".join(f"chosen on half {f['selected_on_fold']}: layer {f['layer']} dose {f['dose']:g} "
                          f"(selection {pct(f['selection'])}, held out {pct(f['held_out'])})" for f in h["folds"])
        lines.append(f"- held-out-selected success, {mode}: {pct(h['pooled_success'])} "
                     f"({h['pooled_success']['k']}/{h['pooled_success']['n']}); exact word {pct(h['pooled_named'])}; "
                     f"'unusual' {pct(h['pooled_unusual'])} — {cells}")
    q = summary.get("grader_quality") or {}
    if q.get("calibrated"):
        for key in ("success", "affirmative"):
            if q.get(key):
                lines.append(f"- grader {q['grader']} on {key} ({q['source']}): {q[key]['text']}")
    elif q:
        lines.append(f"- grader {q.get('grader')}: no stored calibration")
    for k, g in summary["goals"].items():
        verdict = "info" if g["met"] is None else ("met" if g["met"] else "NOT met")
        lines.append(f"- {k}: {g['value']:.3f} (goal {g['goal']}) → {verdict}")
    return "\n".join(lines)


def write_summary(out: str | os.PathLike, records: list[dict], summary: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "records.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", markdown(summary) + "\n")


def read_stored_records(path: Path, required: set[str], *, missing_hint: str, json_hint: str,
                        what: str) -> list[dict]:
    """The records of a stored organism ``records.jsonl`` (an eval or an ablation), each checked to hold the
    ``required`` fields: regrading reads them without a model, so a wrong or damaged file must be a one-line
    error naming what to pass, not a ``KeyError`` halfway through grading."""
    from ..errors import ArtifactError, MissingFileError

    if not path.is_file():
        raise MissingFileError(f"{path} does not exist; {missing_hint}")
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as exc:
        raise ArtifactError(f"{path} is not JSON lines ({exc}){json_hint}") from exc
    if not records or any(not required <= set(r) for r in records):
        raise ArtifactError(f"{path} does not hold {what}")
    return records


def regrade(records_path: str | os.PathLike, out: str | os.PathLike | None = None, *,
            log: Callable[[str], None] = print) -> dict:
    """Grade and summarise stored ``records.jsonl`` again (no model, no generation): for evaluations
    made before the grader or the summary changed. With ``out``, write the three files there."""
    path = Path(records_path)
    if path.is_dir():
        path = path / "records.jsonl"
    records = read_stored_records(path, {"condition", "mode", "text", "word"},
                                  missing_hint="pass an organism eval folder or its records.jsonl",
                                  json_hint="; pass the records.jsonl written by organism eval",
                                  what="organism eval records (condition, mode, text, word)")
    grader = RuleGrader()
    records = grade(records, grader)
    summary = summarize(records)
    old = path.parent / "summary.json"
    prior = json.loads(old.read_text()) if old.is_file() else {}
    summary.update({k: prior[k] for k in ("config", "model", "seconds", "threads") if k in prior})
    summary.update({"regraded_from": str(path), "grading": f"{grader.name}: {GRADING}",
                    "grader_quality": grader_quality(grader.name, calibration_store.load(grader.name))})
    if out is not None:
        write_summary(out, records, summary)
    log(markdown(summary))
    return summary


GRADING = ("affirmative, coherent, correct_id (word or related concept, named as the thought, claim before/with "
           "first mention), success = coherent AND correct_id; 'named' = exact word or plural/singular; "
           "'unusual' = says unusual/strange AND cannot tell/say what")


def evaluate_organism(model: Model, cfg: EvalConfig, out: str | os.PathLike | None = None, *, progress: bool = True,
                      log: Callable[[str], None] = print) -> dict:
    """Generate, grade and summarise; with ``out``, write ``records.jsonl``, ``summary.json`` and ``summary.md``."""
    cfg.validate()
    layers = sorted({model.arch.resolve_layer(L) for L in cfg.layers})
    cfg = EvalConfig(**{**asdict(cfg), "layers": layers})
    words = [w.lower() for w in (cfg.words or held_out_words())]
    t0 = time.perf_counter()
    vectors = extract_concept_vectors(model, words, layers=layers)
    rows = _rows(model, cfg, words, vectors)
    grader = RuleGrader()
    records = grade(generate_rows(model, cfg, rows, progress), grader)
    summary = summarize(records)
    summary.update({"config": asdict(cfg), "model": model.describe(), "seconds": round(time.perf_counter() - t0, 1),
                    "threads": torch.get_num_threads(),
                    "grader_quality": grader_quality(grader.name, calibration_store.load(grader.name)),
                    "grading": f"{grader.name}: {GRADING}"})
    if out is not None:
        write_summary(out, records, summary)
    log(markdown(summary))
    return summary
