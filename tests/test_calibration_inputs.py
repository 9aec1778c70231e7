"""calibrate: synthetic labelled rows with a known kappa, and strict input validation
(reliability review #25, #26, #27)."""

from __future__ import annotations

import json

import pytest

from introspect_mech.errors import ArtifactError, IntrospectError
from introspect_mech.grading import calibrate as cal
from introspect_mech.grading import calibrate_intent as ci
from introspect_mech.grading.base import Grader, Grades


class ByText(Grader):
    """Preset grades by response text (no model)."""

    name = "by-text"

    def __init__(self, table):
        self.table = table

    def grade_many(self, requests):
        return [self.table[r.response] for r in requests]


def _write(tmp_path, rows, name="l.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return p


def test_single_success_label_with_known_kappa(tmp_path):
    """A set labelled only `affirmative_correct_id` (e.g. a judge run with the paper's prompt).

    gold T T T T F F F F F F vs ours T T T F T F F F F F: TP 3, FN 1, FP 1, TN 5;
    p_o = 0.8, p_e = 0.4*0.4 + 0.6*0.6 = 0.52, kappa = 0.28 / 0.48 = 0.58333."""
    gold = [True] * 4 + [False] * 6
    ours = [True, True, True, False, True] + [False] * 5
    rows = [{"response": f"r{i}", "concept": "Dust", "labels": {"affirmative_correct_id": g}} for i, g in enumerate(gold)]
    table = {f"r{i}": Grades(True, o, o, o, o, {"identifies_word": o}) for i, o in enumerate(ours)}
    rep = cal.calibrate(ByText(table), _write(tmp_path, rows), split="all")
    assert [la.label for la in rep.labels] == ["affirmative_correct_id"]  # labels the data lack are left out
    la = rep["affirmative_correct_id"]
    assert (la.tp, la.fn, la.fp, la.tn) == (3, 1, 1, 5)
    assert la.kappa == pytest.approx(0.28 / 0.48)
    assert la.recall == pytest.approx(0.75) and la.precision == pytest.approx(0.75)


def test_any_order_row_compares_like_with_like(tmp_path):
    """The reference's success ignores order; our order-free conjunction is compared with it."""
    rows = [{"response": "Dust. I detect a thought.", "concept": "dust",
             "labels": {"affirmative": True, "correct_id": True, "before_mention": False}}]
    g = Grades(True, True, False, True, False, {"identifies_word": True})  # paper rule: not a success
    rep = cal.calibrate(ByText({rows[0]["response"]: g}), _write(tmp_path, rows), split="all")
    assert rep["correct_id|affirmative"].fn == 1  # our success (order rule) vs their order-free success
    assert rep["correct_id|affirmative,any_order"].tp == 1
    assert rep["correct_id|affirmative,before_mention"].tn == 1
    # a grader without a reference-style prediction is scored with its any-order conjunction
    assert rep["correct_id|affirmative,implicit"].tp == 1


def test_reference_style_row_reads_its_own_output(tmp_path):
    """`correct_id|affirmative,implicit` compares raw["detects_and_identifies"] (not `affirmative`,
    not `correct_id`) with the reference's affirmative AND correct_id, on rows with a concept only.

    gold (aff ∧ cid): T T F F F; ours: T F T F F -> TP 1, FN 1, FP 1, TN 2 (the concept-less row
    and the row whose reference correct_id is missing while affirmative is true are skipped)."""
    def row(i, concept, aff, cid):
        labels = {"affirmative": aff} | ({} if cid is None else {"correct_id": cid})
        return {"response": f"r{i}", "concept": concept, "labels": labels}

    rows = [row(0, "dust", True, True), row(1, "dust", True, True), row(2, "dust", True, False),
            row(3, "dust", False, True), row(4, "dust", False, None), row(5, None, False, None),
            row(6, "dust", True, None)]
    ours = [True, False, True, False, False, None, True]
    # affirmative and correct_id say the opposite, so reading either of them would give other counts
    table = {f"r{i}": Grades(True, not bool(o), not bool(o), None, False,
                             {"identifies_word": None if o is None else True, "detects_and_identifies": o})
             for i, o in enumerate(ours)}
    rep = cal.calibrate(ByText(table), _write(tmp_path, rows), split="all")
    la = rep["correct_id|affirmative,implicit"]
    assert (la.tp, la.fn, la.fp, la.tn, la.skipped) == (1, 1, 1, 2, 2)


@pytest.mark.parametrize(("line", "needle"), [
    ('{"response": "x", "concept": "dust", "labels": {"affirmative": "false"}}', "not true/false/null"),  # 26
    ('{"response": "x", "concept": "dust", "labels": {"affirmative": 1}}', "not true/false/null"),
    ('{"response": "x", "concept": "dust", "labels": [true]}', "'labels' is list"),  # 27
    ('{"response": "x", "concept": 7, "labels": {}}', "'concept' is int"),  # 27
    ('{"response": 3, "concept": "dust", "labels": {}}', "'response' is int"),
    ('{"response": "x", "concept": "/", "labels": {}}', "no letter or digit"),  # 48
    ("not json", "not valid JSON"),
    ("[1, 2]", "not an object"),
])
def test_exp1_bad_rows_are_refused(tmp_path, line, needle):
    with pytest.raises(ArtifactError, match=needle) as exc:
        cal.load_labelled(_write(tmp_path, [line]), "all")
    assert ":1:" in str(exc.value) and "\n" not in str(exc.value)


def test_exp1_string_false_is_not_read_as_true(tmp_path, capsys):
    """#26 end to end: the CLI refuses with status 2 instead of printing agreement 1.000."""
    p = _write(tmp_path, ['{"response": "I detect a thought about dust.", "concept": "dust", '
                          '"labels": {"affirmative": "false"}}'])
    assert cal.main(["--data", str(p), "--split", "all"]) == 2
    assert "error:" in capsys.readouterr().err


def test_exp1_empty_file_and_empty_split(tmp_path):
    with pytest.raises(ArtifactError, match="no rows"):
        cal.load_labelled(_write(tmp_path, []), "all")
    rows = [{"response": "same", "concept": "dust", "labels": {"affirmative": True}}]
    side = "dev" if cal.split_of("same") == "test" else "test"
    with pytest.raises(ArtifactError, match="--split all"):
        cal.load_labelled(_write(tmp_path, rows), side)


@pytest.mark.parametrize(("lines", "needle"), [
    ([], "no rows"),
    (['{"response": "Sorry.", "label": "apology"}'], "'word' is missing"),
    (['{"word": "dust", "response": "I meant it.", "label": "INTENT"}'], "label must be one of"),
    (["garbage"], "not valid JSON"),
    (['{"word": "dust", "response": 5, "label": "intent"}'], "'response' is int"),
])
def test_exp3_bad_files_are_refused(tmp_path, lines, needle):
    """#25: each used to be a KeyError / ValueError / JSONDecodeError / AttributeError, or rc 0 on empty."""
    with pytest.raises(IntrospectError, match=needle):
        ci.load_intent_labels(_write(tmp_path, lines), "all")


def test_exp3_cli_empty_file_exits_2(tmp_path, capsys):
    from introspect_mech.cli import main

    assert main(["calibrate", "--task", "exp3-intent", "--data", str(_write(tmp_path, []))]) == 2
    assert "no rows" in capsys.readouterr().err
