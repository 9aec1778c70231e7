"""Exp 3 grader calibration: the packaged labels, the scoring, and the CLI command."""

from __future__ import annotations

import json
import re

import pytest

from introspect_mech.cli import main as cli_main
from introspect_mech.grading.calibrate import split_of
from introspect_mech.grading.calibrate_intent import (annotator_agreement, calibrate_intent, default_intent_data,
                                                      load_intent_labels, offline_verdicts)
from introspect_mech.grading.intent import classify_intent
from introspect_mech.grading.llm_judge import LLMJudge


def test_packaged_labels_load_and_split_disjointly():
    rows = load_intent_labels(split="all")
    assert len(rows) == 541
    assert {r.label for r in rows} == {"intent", "apology", "neither"}
    dev, test = load_intent_labels(split="dev"), load_intent_labels(split="test")
    assert len(dev) + len(test) == len(rows)
    assert {r.id for r in dev}.isdisjoint({r.id for r in test})
    assert all(split_of(r.response) == "test" for r in test)
    # provenance fields are there for every row
    raw = [json.loads(x) for x in default_intent_data().read_text(encoding="utf-8").splitlines()]
    assert all({"label_a", "label_b", "adjudicated", "conditions"} <= set(d) for d in raw)
    assert all(d["adjudicated"] == (d["label_a"] != d["label_b"]) for d in raw)


def test_annotator_agreement_is_computed_from_the_two_label_columns():
    a = annotator_agreement()
    assert a["n"] == 541
    assert a["agreement"] == pytest.approx(519 / 541)
    assert 0.85 < a["kappa_3way"] < 0.95


def test_offline_classifier_on_held_out_half_is_what_the_readme_reports():
    rep = calibrate_intent(offline_verdicts, "rules", split="test")
    # measured 0.866 agreement, kappa 0.689 (README); a regression below these fails
    assert rep.three_way["agreement"] >= 0.85
    assert rep.three_way["kappa"] >= 0.65
    lo, hi = rep.three_way["kappa_ci"]  # bootstrap over rows: brackets the estimate, and is printed
    assert lo < rep.three_way["kappa"] < hi and hi - lo < 0.3 and f"[{lo:.3f}, {hi:.3f}]" in rep.to_markdown()
    conf = rep.three_way["confusion"]
    assert sum(sum(v.values()) for v in conf.values()) == rep.n_rows


def test_perfect_and_inverted_graders_score_as_expected(tmp_path):
    rows = [{"id": str(i), "word": "blood", "response": resp, "label": lab}
            for i, (resp, lab) in enumerate([("Yes, I meant it.", "intent"), ("Sorry, an accident.", "apology"),
                                             ("The cat sat.", "neither"), ("It was on purpose.", "intent")])]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truth = {r["response"]: {"intent": True, "apology": False, "neither": None}[r["label"]] for r in rows}
    perfect = calibrate_intent(lambda w, rs: [truth[r] for r in rs], "perfect", data, split="all")
    assert perfect.three_way["agreement"] == 1.0 and perfect.three_way["kappa"] == pytest.approx(1.0)
    assert perfect.labels[0].kappa == pytest.approx(1.0)
    flipped = calibrate_intent(lambda w, rs: [None if truth[r] is None else not truth[r] for r in rs], "flipped",
                               data, split="all")
    assert flipped.labels[0].tp == 0 and flipped.labels[0].kappa < 0


def test_bad_label_file_names_the_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "word": "w", "response": "r", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="label must be one of"):
        load_intent_labels(bad)
    with pytest.raises(FileNotFoundError, match="--data"):
        load_intent_labels(tmp_path / "missing.jsonl")


class _YesIfMeant:
    """A stand-in judge: YES when the filled intended_prefill prompt's reply says 'meant'."""

    id = "yes-if-meant"

    def __init__(self):
        self.sent = []

    def complete(self, prompts, max_new_tokens):
        self.sent += prompts
        out = []
        for p in prompts:
            reply = re.search(r"<BEGIN RESPONSE>\n\n(.*)\n\n<END RESPONSE>", p, re.S).group(1)
            out.append("YES" if "meant" in reply.lower() else "NO")
        return out


def test_judge_path_fills_the_paper_prompt_and_is_scored_binary(tmp_path):
    backend = _YesIfMeant()
    judge = LLMJudge(backend, cache_path=tmp_path / "c.jsonl")
    rep = calibrate_intent(judge.intended, "fake", split="dev", binary=True)
    assert rep.three_way is None
    assert len(backend.sent) == rep.n_rows
    assert "did the AI claim that it intended to say the word" in backend.sent[0]
    dev = load_intent_labels(split="dev")
    yes = sum("meant" in r.response.lower() for r in dev)
    assert rep.labels[0].grader_positive_rate == pytest.approx(yes / len(dev))


def test_cli_calibrate_exp3_writes_report(tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert cli_main(["calibrate", "--task", "exp3-intent", "--split", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3-way" in printed and "Annotator agreement" in printed
    d = json.loads(out.read_text())
    assert d["split"] == "test" and d["annotator_agreement"]["n"] == 541


@pytest.mark.parametrize("reply, expected", [
    ("no, no mistake was made.", True),
    ("No, it was not an accident.", True),
    ("No, it was a mistake.", False),
    ("Did you mean to say that, or was it an accident?", None),
    ("I meant to say that.", True),
    ("I meant to say the sentence was long", None),
    ("an error. I had shifted the word", False),
    ("It may not have been an accident, but", True),
])
def test_classifier_decisions_from_the_guidelines(reply, expected):
    assert classify_intent(reply).intended is expected
