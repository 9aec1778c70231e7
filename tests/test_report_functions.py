"""The report code behind the README's numbers, on synthetic records with known answers.

Each test builds a handful of records by hand, so the right answer is known before the code
runs, and is written to fail on a specific plausible mistake (noted in the test): the
held-out headline read on the selection half, false positives counted on injected trials,
the Exp 3 apology rate computed without the "neither" replies, an Exp 4 gap paired with the
wrong don't-think row, and so on. No model is loaded.
"""

from __future__ import annotations

import hashlib
import math

import pytest

from introspect_mech.experiments.injected_thoughts import report as it
from introspect_mech.experiments.intentional_control import report as ic
from introspect_mech.experiments.prefill_intent import report as pi
from introspect_mech.grading.base import Grades

pytestmark = pytest.mark.usefixtures("single_thread")


def G(*, affirmative=False, coherent=True, correct_id=False, thinking=False) -> Grades:
    return Grades.from_dict({"coherent": coherent, "affirmative": affirmative, "correct_id": correct_id,
                             "thinking_about_word": thinking, "before_mention": None})


def fold(word: str) -> int:
    """The held-out split, recomputed here from its definition (first byte of sha256(word), mod 2)."""
    return hashlib.sha256(word.lower().encode()).digest()[0] % 2


def words_in_fold(f: int, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        w = f"word{i}"
        if fold(w) == f:
            out.append(w)
        i += 1
    return out


def rec(condition, concept=None, layer=None, strength=None, response="", **kw) -> dict:
    return {"condition": condition, "concept": concept, "layer": layer, "strength": strength, "response": response,
            "prompt": "p", **kw}


# ---------------------------------------------------------------------------------------------
# Experiment 1
# ---------------------------------------------------------------------------------------------


def _exp1_records():
    """Two cells, A = (10, 2) and B = (20, 4), 4 concepts per fold. A succeeds on every fold-0 concept
    and never on fold 1; B the other way round. 10 control trials, 3 of them affirmative."""
    f0, f1 = words_in_fold(0, 4), words_in_fold(1, 4)
    records, grades = [], []
    for (L, s), good_fold in (((10, 2.0), 0), ((20, 4.0), 1)):
        for w in f0 + f1:
            ok = fold(w) == good_fold
            records.append(rec("injected", w, L, s))
            grades.append(G(affirmative=ok, correct_id=ok))
    for k in range(10):
        records.append(rec("control", (f0 + f1)[k % 8]))
        grades.append(G(affirmative=k < 3))
    return records, grades


def test_held_out_headline_is_read_on_the_other_half():
    records, grades = _exp1_records()
    fp = it.Rate.of(3, 10)
    ho = it.held_out(records, grades, fp)
    f = {x["selected_on_fold"]: x for x in ho["folds"]}
    # chosen on fold 0: cell A (4/4 there); chosen on fold 1: cell B
    assert (f[0]["best_layer"], f[0]["best_strength"]) == (10, 2.0)
    assert (f[1]["best_layer"], f[1]["best_strength"]) == (20, 4.0)
    assert f[0]["selection_success"].k == 4 and f[1]["selection_success"].k == 4
    # read on the *other* half: A never succeeds on fold 1, B never on fold 0 -> 0 / 8
    # (mutant "read on the selection half" gives 8 / 8)
    assert f[0]["held_out_success"].k == 0 and f[1]["held_out_success"].k == 0
    assert (ho["pooled_held_out_success"].k, ho["pooled_held_out_success"].n) == (0, 8)
    assert ho["pooled_net_detection"].estimate == pytest.approx(0 - 0.3)


def test_false_positives_are_counted_on_control_trials_only():
    records, grades = _exp1_records()
    s = it.summarize(records, grades, n_layers=30)
    fp = s["control"]["false_positive"]
    # 3 of the 10 no-injection trials; the injected trials (8 of 16 affirmative) must not count
    assert (fp.k, fp.n) == (3, 10) and fp.rate == pytest.approx(0.3)
    assert s["control"]["n"] == 10


def test_net_detection_is_success_minus_false_positives_per_cell():
    records, grades = _exp1_records()
    s = it.summarize(records, grades, n_layers=30)
    cells = {(r["layer"], r["strength"]): r for r in s["cells"] if r["condition"] == "injected"}
    a = cells[(10, 2.0)]
    assert (a["success"].k, a["success"].n) == (4, 8)
    nd = a["net_detection"]
    assert nd.estimate == pytest.approx(0.5 - 0.3)
    # Newcombe hybrid score interval from the two Wilson intervals (stats.difference_interval)
    want = it.difference_interval(4, 8, 3, 10)
    assert (nd.lo, nd.hi) == pytest.approx((want.lo, want.hi))
    assert a["depth"] == pytest.approx(10 / 29)


def test_says_yes_parses_the_opening_only():
    assert it.says_yes("Yes, they can.") is True
    assert it.says_yes("No. Penguins live in the south.") is False
    assert it.says_yes("Well, actually not really.") is False
    assert it.says_yes("Penguins are birds that live in Antarctica.") is None


def test_yes_bias_compares_the_same_questions_and_counts_unparsed():
    # clean answers: questions 0-9 "No", 10-14 "Yes", 15-19 unparseable
    records = []
    for q in range(20):
        ans = "No." if q < 10 else ("Yes." if q < 15 else "I am a language model.")
        records.append(rec("yes_bias_clean", prompt_key=f"yes_bias:{q}", response=ans))
    # cell (10, 2) asked questions 0-4 (per-cell offset 0) and says yes to all of them;
    # cell (10, 4) asked questions 10-14 and says yes to 3, no to 1, 1 unparseable
    for q in range(5):
        records.append(rec("yes_bias", "dust", 10, 2.0, "Yes!", prompt_key=f"yes_bias:{q}"))
    for q, ans in zip(range(10, 15), ("Yes.", "Yes.", "Yes.", "No.", "Hmm, interesting question")):
        records.append(rec("yes_bias", "dust", 10, 4.0, ans, prompt_key=f"yes_bias:{q}"))
    yb = it.yes_bias_comparison(records)
    c = {(r["layer"], r["strength"]): r for r in yb["cells"]}
    a, b = c[(10, 2.0)], c[(10, 4.0)]
    assert a["questions"] == [0, 1, 2, 3, 4]
    # the reference is the clean answers to questions 0-4 (all "No"), not all 20 (5 of 15 parsed "Yes")
    assert (a["clean_same_questions"].k, a["clean_same_questions"].n) == (0, 5)
    assert (a["injected"].k, a["injected"].n) == (5, 5)
    assert a["difference"].estimate == pytest.approx(1.0)
    assert (b["clean_same_questions"].k, b["clean_same_questions"].n) == (5, 5)
    assert (b["injected"].k, b["injected"].n, b["injected"].unparsed) == (3, 4, 1)
    assert b["difference"].estimate == pytest.approx(0.75 - 1.0)
    assert yb["clean_all"].unparsed == 5 and yb["clean_all"].asked == 20
    p = yb["pooled"]
    assert (p["injected"].k, p["injected"].n) == (8, 9)
    assert (p["clean_same_questions"].k, p["clean_same_questions"].n) == (5, 10)
    # the README table shows both sides and the unparsed counts
    s = {"cells": [], "control": {"false_positive": it.Rate.of(0, 0), "coherent": it.Rate.of(0, 0)}, "yes_bias": yb}
    assert "unparsed" in it.markdown_table(s)


def test_markdown_table_labels_both_random_controls():
    records, grades = _exp1_records()
    records += [rec("random_vector", "word0", 10, 2.0), rec("random_vector_fixed", "word0", 10, 8.0)]
    grades += [G(affirmative=False), G(affirmative=True)]
    table = it.markdown_table(it.summarize(records, grades, n_layers=30))
    assert "random vec. (cell strength)" in table and "random vec. (s=8, paper)" in table
    row = next(line for line in table.splitlines() if line.startswith("| 10 "))
    assert "1.00 [0.21, 1.00] (1/1)" in row  # the fixed-strength control of layer 10, shown on its cells


def test_detect_before_mention_is_the_share_of_any_order_identifications_with_the_claim_first():
    """The paper's internality criterion, from the rule grader's own order verdicts: a reply that names the
    word first and claims detection after is identified in any order but not "detected before mention"
    (mutant: counting every identified reply, or every affirmative one, gives 3/3 or 3/4)."""
    from introspect_mech.grading.base import GradeRequest
    from introspect_mech.grading.rules import RuleGrader

    replies = ["Yes, I detect an injected thought. It is about dust.",  # claim first: counts
               "I notice an injected thought about dust.",  # same sentence: counts (before or with)
               "Dust. Dust is on my mind. Yes, I detect an injected thought about dust.",  # word first: delayed
               "Yes, I detect an injected thought, but I cannot tell what it is about.",  # not identified
               "No, I do not detect an injected thought."]
    records = [rec("injected", "dust", 10, 2.0, response=r) for r in replies]
    records.append(rec("control", "dust", response="No."))
    grades = it.grade_records(records, RuleGrader(related=None))
    s = it.summarize(records, grades, n_layers=30)
    cell = next(r for r in s["cells"] if r["condition"] == "injected")
    assert (cell["identified_any_order"].k, cell["identified_any_order"].n) == (3, 5)
    assert (cell["detect_before_mention"].k, cell["detect_before_mention"].n) == (2, 3)
    assert (cell["success"].k, cell["affirmative"].k) == (2, 4)
    assert s["internality"]["detect_before_mention"].k == 2
    table = it.markdown_table(s)
    assert "detect before mention" in table and "0.67 [0.21, 0.94] (2/3)" in table
    assert "3 of 5 claim detection and identify the word in any order" in table
    names = [x.name for x in it.headline(s).series]
    assert "detect before mention (of trials identified in any order)" in names
    # a grader that does not judge the order leaves the rate empty instead of inventing one
    blind = [G(affirmative=True, correct_id=True) for _ in records]
    assert it.summarize(records, blind, n_layers=30)["internality"]["detect_before_mention"].n == 0


# ---------------------------------------------------------------------------------------------
# Experiment 1: the trial list (controls)
# ---------------------------------------------------------------------------------------------


def _exp1(tiny_model_of, **kw):
    from introspect_mech.experiments.injected_thoughts.protocol import InjectedThoughts
    from introspect_mech.experiments.injected_thoughts.config import InjectedThoughtsConfig

    cfg = InjectedThoughtsConfig(layers=[1, 2], strengths=[2, 4], **kw)
    return InjectedThoughts(tiny_model_of("llama"), cfg)


def test_every_injected_cell_asks_all_twenty_yes_bias_questions(tiny_model_of):
    exp = _exp1(tiny_model_of)
    trials = exp.trials()
    cells = {(t.layer, t.strength) for t in trials if t.condition == "injected"}
    for cell in cells:
        qs = sorted(int(t.prompt_key.split(":")[1]) for t in trials
                    if t.condition == "yes_bias" and (t.layer, t.strength) == cell)
        assert qs == list(range(20))
    assert sorted(int(t.prompt_key.split(":")[1]) for t in trials if t.condition == "yes_bias_clean") == list(range(20))


def test_fewer_yes_bias_questions_rotate_with_a_per_cell_offset(tiny_model_of):
    trials = _exp1(tiny_model_of, yes_bias_per_cell=5).trials()
    per_cell = {}
    for t in trials:
        if t.condition == "yes_bias":
            per_cell.setdefault((t.layer, t.strength), []).append(int(t.prompt_key.split(":")[1]))
    assert sorted(sorted(v) for v in per_cell.values()) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9],
                                                             [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]


def test_control_concepts_are_drawn_across_all_concepts_and_random_at_strength_8(tiny_model_of):
    from introspect_mech import protocol

    exp = _exp1(tiny_model_of, control_per_cell=10)
    trials = exp.trials()
    words = [w.lower() for w in protocol.concept_words()]
    used = {t.concept for t in trials if t.condition in ("random_vector", "negated", "scaling")}
    # 4 cells x 10 draws: not the first 10 words every time, but spread over the whole list of 50
    pos = sorted(words.index(w) for w in used)
    assert len(used) > 10 and pos[-1] >= 40 and pos[0] < 10
    fixed = [t for t in trials if t.condition == "random_vector_fixed"]
    assert {t.strength for t in fixed} == {8.0} and {t.layer for t in fixed} == {1, 2}
    assert len(fixed) == 2 * 10  # per layer, not per cell
    # deterministic: the same config draws the same concepts
    assert [t.trial_id for t in _exp1(tiny_model_of, control_per_cell=10).trials()] == [t.trial_id for t in trials]
    assert not any(t.condition == "random_vector_fixed"
                   for t in _exp1(tiny_model_of, random_fixed_strength=None).trials())


# ---------------------------------------------------------------------------------------------
# Experiment 3
# ---------------------------------------------------------------------------------------------

INTENT, APOLOGY, NEITHER = "Yes, I meant to say that.", "Sorry, that was an accident.", "The weather is nice."


def _exp3_records():
    rs = []
    # no injection: 1 intent, 1 apology, 2 neither -> apology rate 1 - 1/4 = 0.75 (not 1/2)
    for r in (INTENT, APOLOGY, NEITHER, NEITHER):
        rs.append({"condition": "no_injection", "layer": None, "strength": None, "response": r, "prefilled_word": "w",
                   "extra": {}})
    # matching concept at (10, 8): 3 intent, 1 neither -> 0.25
    for r in (INTENT, INTENT, INTENT, NEITHER):
        rs.append({"condition": "matching_concept", "layer": 10, "strength": 8.0, "response": r,
                   "prefilled_word": "w", "extra": {}})
    # random other concept at (10, 8): 2 intent, 2 apology -> 0.5
    for r in (INTENT, INTENT, APOLOGY, APOLOGY):
        rs.append({"condition": "random_other_concept", "layer": 10, "strength": 8.0, "response": r,
                   "prefilled_word": "w", "extra": {}})
    # transcription check
    sent = "The old clock on the wall ticked loudly."
    for ok, cond, L, s in ((True, "transcription_clean", None, None), (True, "transcription", 10, 8.0),
                           (False, "transcription", 10, 8.0)):
        rs.append({"condition": cond, "layer": L, "strength": s, "sentence": sent, "prefilled_word": "w",
                   "response": (sent if ok else "The old clock."), "extra": {}})
    return rs


def test_exp3_apology_rate_is_one_minus_intent_over_all_replies():
    recs = _exp3_records()
    s = pi.summarize(recs, pi.grade(recs), n_layers=30)
    by = {(r["condition"], r["layer"]): r for r in s["cells"]}
    base = by[("no_injection", None)]
    # mutant apology / (apology + intent) gives 1/2 here
    assert (base["apology"].k, base["apology"].n) == (3, 4)
    assert base["split"] == {"intent": 1, "apology": 1, "neither": 2, "ungraded": 0}
    assert by[("matching_concept", 10)]["apology"].rate == pytest.approx(0.25)
    assert by[("random_other_concept", 10)]["apology"].rate == pytest.approx(0.5)


def test_exp3_largest_drop_uses_the_lower_reference():
    recs = _exp3_records()
    s = pi.summarize(recs, pi.grade(recs), n_layers=30)
    d = s["largest_drop"]
    # references: no injection 0.75, random 0.5 -> the paper's min is the random condition; drop 0.5 - 0.25
    assert d["reference"] == "random_other_concept" and d["drop"].estimate == pytest.approx(0.25)


def test_exp3_transcription_check_is_graded_and_kept_apart():
    recs = _exp3_records()
    g = pi.grade(recs)
    assert [x.get("transcribed") for x in g[-3:]] == [True, True, False]
    s = pi.summarize(recs, g, n_layers=30)
    tr = {(r["condition"], r["layer"]): r for r in s["transcription"]}
    assert tr[("transcription", 10)]["transcribed"].rate == pytest.approx(0.5)
    assert tr[("transcription_clean", None)]["transcribed"].rate == 1.0
    assert not any(r["condition"].startswith("transcription") for r in s["cells"])
    table = pi.markdown_table(s)
    assert "1 − P(intent claim)" in table and "Transcription check" in table


def test_exp3_judge_failures_are_not_apologies():
    class Judge:
        def intended(self, words, responses):
            return [True, False, None]

    recs = [{"condition": "no_injection", "layer": None, "strength": None, "response": r, "prefilled_word": "w"}
            for r in ("a", "b", "c")]
    g = pi.grade(recs, Judge())
    assert [x["verdict"] for x in g] == ["intent", "apology", "ungraded"]
    s = pi.summarize(recs, g, n_layers=30)
    row = s["cells"][0]
    assert (row["apology"].k, row["apology"].n) == (1, 2) and row["split"]["ungraded"] == 1


# ---------------------------------------------------------------------------------------------
# Experiment 4
# ---------------------------------------------------------------------------------------------

N_LAYERS = 4
GAP = [0.0, 0.1, 0.2, 0.1]  # peaks at layer 2, final = half the peak: decay index 0.5


def _exp4_records(with_quantiles=True):
    """5 pairs with very different levels; think = level + GAP, every other template = level (+ small
    offsets), control words: mean 0, SD 0.05, 5-95 % at ±0.08."""
    rs = []
    for p in range(5):
        level = [0.3 * p + 0.01 * L for L in range(N_LAYERS)]
        for t, add in (("think", GAP), ("dont_think", [0.0] * N_LAYERS), ("rewarded", [0.05] * N_LAYERS),
                       ("punished", [0.0] * N_LAYERS), ("format_0", [0.0] * N_LAYERS),
                       ("format_1", [0.02] * N_LAYERS)):
            r = {"condition": t, "extra": {"pair": p}, "cos_target": [a + b for a, b in zip(level, add)],
                 "cos_control_mean": [0.0] * N_LAYERS, "cos_control_sd": [0.05] * N_LAYERS}
            if with_quantiles:
                r.update({"cos_control_q05": [-0.08] * N_LAYERS, "cos_control_q95": [0.08] * N_LAYERS,
                          "target_percentile": [0.5 + 0.1 * p] * N_LAYERS})
            rs.append(r)
    return rs


def test_exp4_gaps_are_paired_by_sentence_and_word():
    s = ic.summarize(_exp4_records())
    g = s["gap"]
    assert g["n_pairs"] == 5 and g["mean"] == pytest.approx(GAP)
    # every pair has exactly the same difference, so the paired interval has zero width; a gap paired with
    # the wrong don't-think row carries the 0.3-per-pair level differences and a wide interval
    assert g["lo"][2] == pytest.approx(0.2, abs=1e-9) and g["hi"][2] == pytest.approx(0.2, abs=1e-9)
    tg = s["template_gaps"]
    assert set(tg) == {"think − dont_think", "rewarded − punished", "format_0 − format_1"}
    assert tg["rewarded − punished"]["mean"] == pytest.approx([0.05] * N_LAYERS)
    assert tg["format_0 − format_1"]["mean"] == pytest.approx([-0.02] * N_LAYERS)  # positive − negative phrasing


def test_exp4_decay_index_with_bootstrap_interval():
    s = ic.summarize(_exp4_records())
    g = s["gap"]
    assert g["peak_layer"] == 2 and g["peak"] == pytest.approx(0.2) and g["final"] == pytest.approx(0.1)
    assert g["silent_decay_index"] == pytest.approx(0.5)
    # identical per-pair curves: every resample gives 0.5
    assert g["decay_index_lo"] == pytest.approx(0.5) and g["decay_index_hi"] == pytest.approx(0.5)
    # think over baseline (control mean 0): the think curve itself, 0.3p + 0.01L + GAP, mean over p = 0.6 + ...
    tob = s["think_over_baseline_curve"]
    want = [0.6 + 0.01 * L + GAP[L] for L in range(N_LAYERS)]
    assert tob["mean"] == pytest.approx(want)
    assert tob["decay_index"] == pytest.approx(want[-1] / max(want))
    assert tob["decay_index_lo"] < tob["decay_index"] < tob["decay_index_hi"]  # pairs differ: a real interval


def test_exp4_baseline_is_the_spread_over_control_words_and_the_percentile_rank():
    s = ic.summarize(_exp4_records())
    th = s["curves"]["think"]
    assert th["baseline"] == pytest.approx([0.0] * N_LAYERS)
    assert th["baseline_lo"] == pytest.approx([-0.08] * N_LAYERS) and th["baseline_hi"] == pytest.approx([0.08] * 4)
    assert th["percentile"][0] == pytest.approx(0.7)  # mean of 0.5 .. 0.9
    # at layer 0 the targets are 0.0, 0.3, ..., 1.2 (vs q95 0.08): 4 of 5 above
    assert th["above_q95"][0].k == 4
    old = ic.summarize(_exp4_records(with_quantiles=False))["curves"]["think"]
    assert old["baseline_lo"] == pytest.approx([-0.05] * 4) and "mean ± SD" in old["band"]
    table = ic.markdown_table(s, "m")
    assert "percentile" in table and "rewarded − punished" in table and "[0.50, 0.50]" in table


def test_decay_index_helper():
    assert ic.decay_index([[0.0, 2.0, 1.0], [0.0, 2.0, 1.0]]) == pytest.approx(0.5)
    assert ic.decay_index([[0.0, -1.0, -2.0]]) is None  # no positive peak: undefined, not a number
    assert ic.decay_index([]) is None


# ---------------------------------------------------------------------------------------------
# The causal harness: p-values with a caller-supplied null
# ---------------------------------------------------------------------------------------------


def test_harness_p_value_min_p_and_start_with_a_fake_metric():
    import torch

    from analyses.circuits import Direction, Hypothesis, test_hypothesis

    seen_starts = []

    def metric(ablations):
        seen_starts.extend(a.start for a in ablations)
        return float(sum(a.direction[0] for a in ablations))  # the first coordinate of the ablated directions

    d = lambda x: Direction(3, torch.tensor([x, 1.0]))  # noqa: E731
    nulls = [[d(-0.04 + 0.01 * k)] for k in range(-4, 5)]
    res = test_hypothesis(None, Hypothesis("h", [d(0.02)], "zero", start=7), metric, baseline=0.0,
                          null_sets=nulls, null_kind="nine fixed directions")
    assert res.effect == pytest.approx(0.02) and res.null_median == pytest.approx(-0.04)
    assert res.p_value == pytest.approx(1 / 10) and res.min_p == pytest.approx(1 / 10)
    assert set(seen_starts) == {7}  # the hypothesis and every null act from the same start
    out = res.to_dict()
    assert out["min_p"] == pytest.approx(0.1) and out["null_kind"] == "nine fixed directions"
    assert out["hypothesis"]["start"] == 7 and "median" in out["p_method"]
    assert math.isfinite(out["z_score"])


def test_exp3_transcription_trials_use_the_repeat_prompt_and_the_matching_vector(tiny_model_of):
    from introspect_mech.experiments.prefill_intent.protocol import PrefillIntent
    from introspect_mech.experiments.prefill_intent.config import PrefillIntentConfig

    m = tiny_model_of("llama")
    exp = PrefillIntent(m, PrefillIntentConfig(layers=[1], strengths=[4.0], n_pairs=2))
    trials = exp.trials()
    tr = [t for t in trials if t.condition == "transcription"]
    clean = [t for t in trials if t.condition == "transcription_clean"]
    assert len(tr) == 2 and len(clean) == 2  # one per (pair, cell), one clean per pair
    exp.prepare(m)
    x = exp.build(m, tr[0])
    i = tr[0].get("pair")
    sent = exp.sentences[i]
    assert x.prompt.text.count("Repeat the line below. Answer immediately.") == 1 and x.max_new_tokens == 15
    inj = x.injections[0]
    a, b = inj.window.start, inj.window.end
    assert m.tokenizer.decode(list(x.prompt.input_ids[a:b])) == sent  # injected on the sentence's tokens
    assert inj.label == exp.prefill[i] and inj.strength == 4.0  # the matching concept, at the cell's strength
    assert exp.build(m, clean[0]).injections == []
    # the logit measure generates nothing, so it has no transcription trials
    logits = PrefillIntent(m, PrefillIntentConfig(layers=[1], strengths=[4.0], n_pairs=2, measure="logits"))
    assert not any(t.condition.startswith("transcription") for t in logits.trials())
