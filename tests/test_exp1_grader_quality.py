"""Exp 1 summary: the grader's measured recall and precision beside every success rate, net
detection (affirmative − false positives) beside success, and the offline-grader warning."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

from introspect_mech.experiments.injected_thoughts import report as rep
from introspect_mech.grading import calibrate as cal
from introspect_mech.grading import calibration_store as cs
from introspect_mech.grading.base import Grades


def _rec(cond, concept, layer=None, strength=None):
    return {"condition": cond, "concept": concept, "layer": layer, "strength": strength, "prompt": "p",
            "response": "r", "category": "c", "dose": 1.0 if layer is not None else None}


def _g(aff, success=False):
    return Grades(True, aff, success, success, aff, {"identifies_word": success})


# 10 controls with 2 false positives; one injected cell of 8 concepts: 6 affirmative, 1 success.
WORDS = [f"w{i}" for i in range(8)]
RECORDS = [_rec("control", "w0") for _ in range(10)] + [_rec("injected", w, 10, 4.0) for w in WORDS]
GRADES = [_g(i < 2) for i in range(10)] + [_g(i < 6, i == 0) for i in range(8)]
ENTRY = {"grader": "rules-v2+x", "split": "test", "n_rows": 629, "data": "d.jsonl", "commit": "abcdef0123456",
         "dirty": False, "labels": {
             cs.SUCCESS_LABEL: {"n": 267, "tp": 1, "fp": 2, "fn": 1, "tn": 263, "kappa": 0.395},
             cs.SUCCESS_ANY_ORDER_LABEL: {"n": 267, "tp": 1, "fp": 2, "fn": 10, "tn": 254, "kappa": 0.127},
             cs.AFFIRMATIVE_LABEL: {"n": 629, "tp": 48, "fp": 4, "fn": 30, "tn": 547, "kappa": 0.71}}}


def test_net_affirmative_per_cell_and_held_out():
    s = rep.summarize(RECORDS, GRADES, 30, grader_name="rules-v2+x", calibration=ENTRY)
    cell = next(c for c in s["cells"] if c["condition"] == "injected")
    assert s["control"]["false_positive"].k == 2  # counted on the controls, not the injected trials
    assert cell["affirmative"].k == 6 and cell["net_affirmative"].estimate == pytest.approx(6 / 8 - 2 / 10)
    assert cell["net_detection"].estimate == pytest.approx(1 / 8 - 2 / 10)
    ho = s["held_out"]
    # one cell: both folds select it, each reads the other half, so the pooled held-out trials are all 8
    assert ho["pooled_held_out_affirmative"].n == 8 and ho["pooled_held_out_affirmative"].k == 6
    assert ho["pooled_net_affirmative"].estimate == pytest.approx(6 / 8 - 2 / 10)


def test_table_states_recall_precision_and_warns_for_offline_grader():
    s = rep.summarize(RECORDS, GRADES, 30, grader_name="rules-v2+x", calibration=ENTRY)
    q = s["grader_quality"]
    assert q["success"]["recall"].k == 1 and q["success"]["recall"].n == 2
    assert q["success"]["precision"].n == 3 and q["affirmative"]["recall"].n == 78
    md = rep.markdown_table(s)
    assert "recall 0.50 [0.09, 0.91] (1/2), precision 0.33 [0.06, 0.79] (1/3)" in md
    assert "affirmative recall 0.62" in md and "commit abcdef0123" in md
    assert "WARNING" in md and "1/2" in md and "1/11" in md  # recall beside the offline success headline
    assert "net affirm. (− FP)" in md and "+0.55 [" in md  # net detection column: 6/8 − 2/10
    assert "Net detection on the same held-out trials: affirmative" in md


def test_judge_is_not_warned_and_uncalibrated_grader_says_so():
    s = rep.summarize(RECORDS, GRADES, 30, grader_name="judge:hf:x", calibration=None)
    md = rep.markdown_table(s)
    assert "WARNING" not in md and "no stored calibration" in md
    s = rep.summarize(RECORDS, GRADES, 30, grader_name="rules-v2+x", calibration=None)
    md = rep.markdown_table(s)
    assert "WARNING" in md and "unmeasured" in md


def test_figure_titles_carry_the_grader_quality():
    s = rep.summarize(RECORDS, GRADES, 30, grader_name="rules-v2+x", calibration=ENTRY)
    note = rep.figure_note(s["grader_quality"])
    assert "(1/2)" in note["success"] and "(48/78)" in note["affirmative"]


def test_store_round_trip_keeps_provenance(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"response": "a", "concept": "dust", "labels": {"affirmative": True}}) + "\n")
    report = cal.CalibrationReport("g1", str(data), "all", 1, [cal.agreement("affirmative", [(True, True)])])
    out = cs.store(report, tmp_path / "cal.json")
    cs.store(cal.CalibrationReport("g2", str(data), "all", 1, []), out)
    e = cs.load("g1", out)
    assert e["split"] == "all" and e["data_sha256"] and "commit" in e and "dirty" in e
    assert e["labels"]["affirmative"]["tp"] == 1 and cs.load("g2", out) is not None
    assert cs.load("nobody", out) is None
