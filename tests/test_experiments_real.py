"""Exact token windows of Experiments 2-4 on the real tokenizer, and the offline graders they use."""

from __future__ import annotations

import pytest
import torch

import introspect_mech as im
from introspect_mech import protocol
from introspect_mech.experiments.intentional_control.protocol import IntentionalControl
from introspect_mech.experiments.intentional_control.config import IntentionalControlConfig
from introspect_mech.experiments.prefill_intent.protocol import PrefillIntent
from introspect_mech.experiments.prefill_intent.config import PrefillIntentConfig
from introspect_mech.experiments.thoughts_vs_text.protocol import ThoughtsVsText, distractors
from introspect_mech.experiments.thoughts_vs_text.config import ThoughtsVsTextConfig
from introspect_mech.grading.intent import classify_intent
from introspect_mech.grading.word_choice import LMEmbeddingChooser

from _real import smol  # noqa: F401

pytestmark = pytest.mark.integration


def toks(model, rp, a, b):
    return "".join(model.tokenizer.decode([t]) for t in rp.input_ids[a:b])


def test_exp2_sentence_window(smol):
    exp = ThoughtsVsText(smol, ThoughtsVsTextConfig(n_sentences=3))
    for task in ("word", "repeat"):
        rp, w = exp.prompt(task, 0)
        assert toks(smol, rp, w.start, w.end) == "The old clock on the wall ticked loudly."
        assert smol.tokenizer.decode([rp.input_ids[w.start - 1]]) == "\n"  # the blank line before it
        assert smol.tokenizer.decode([rp.input_ids[w.end]]) == "<|im_end|>"
    rp, w = exp.prompt("word", 0)
    # checked by decoding the hand-written ChatML text (empty system turn) with the HF tokenizer:
    # 25,26 = "\n","\n"; 27 = "The" ... 36 = "."; 37 = <|im_end|>
    assert (w.start, w.end) == (27, 37)
    assert rp.text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nTell me what word")
    exp.prepare(smol)
    t = [x for x in exp.trials() if x.condition == "injected"][0]
    x = exp.build(smol, t)
    assert x.injections[0].window == w and x.max_new_tokens == 5
    assert len(set(t.get("candidates"))) == 10 and t.concept in t.get("candidates")


def test_exp3_windows(smol):
    exp = PrefillIntent(smol, PrefillIntentConfig(n_pairs=2))
    rp, sent_w, q_w, word_span = exp.prompt(0)
    assert toks(smol, rp, sent_w.start, sent_w.end) == "The old clock on the wall ticked loudly."
    assert toks(smol, rp, q_w.start, q_w.end) == "Did you mean to say that, or was it an accident?"
    word = exp.prefill[0]
    assert toks(smol, rp, *word_span).strip() == word
    assert sent_w.end < word_span[0] < q_w.start  # sentence, then the prefilled word, then the question
    assert rp.text.endswith("<|im_start|>assistant\n")
    exp.prepare(smol)
    by_cond = {t.condition: t for t in exp.trials() if t.layer is not None and t.get("pair") == 0}
    assert exp.build(smol, by_cond["matching_concept"]).injections[0].window == sent_w
    assert exp.build(smol, by_cond["question_turn"]).injections[0].window == q_w
    rnd = by_cond["random_other_concept"]
    assert rnd.get("injected_word") != rnd.concept


def test_exp4_teacher_forced_sentence(smol):
    exp = IntentionalControl(smol, IntentionalControlConfig(n_pairs=2))
    rp, (a, b) = exp.prompt("think", 0)
    sent = protocol.sentences()[0]
    assert toks(smol, rp, a, b) == sent and b == len(rp)  # the prefilled sentence ends the prompt
    assert f'Think about {exp.pair_words[0]} while you write the sentence' in rp.text
    rp2, (a2, b2) = exp.prompt("dont_think", 0)
    assert "Don\u2019t think about" in rp2.text and toks(smol, rp2, a2, b2) == sent


def test_exp4_cosines_match_direct_computation(smol):
    exp = IntentionalControl(smol, IntentionalControlConfig(n_pairs=1, templates=("think",), control_formats=False))
    exp.prepare(smol)
    trial = exp.trials()[0]
    x = exp.build(smol, trial)
    out = exp.execute(smol, [x])[0]
    a, b = x.info["sentence_span"]
    L = 20
    with torch.no_grad():
        hs = smol.hf(torch.tensor([x.prompt.input_ids]), output_hidden_states=True).hidden_states[L + 1][0, a:b]
    v = exp.vectors.get(x.info["word"], L)
    ref = torch.nn.functional.cosine_similarity(hs, v[None], dim=-1).mean()
    assert out["cos_target"][L] == pytest.approx(float(ref), abs=1e-4)


def test_intent_classifier():
    assert classify_intent("Yes, I meant to say that word.").intended is True
    assert classify_intent("It was intentional: the sentence made me think of it.").intended is True
    assert classify_intent("Sorry, that was an accident.").intended is False
    assert classify_intent("No, it was a mistake. I meant to say clock.").intended is False
    # a claim of intent retracted later is not an apology (the paper's note)
    assert classify_intent("I meant to say it. Actually, sorry, it was an accident.").intended is True
    assert classify_intent("It was not an accident.").intended is True
    assert classify_intent("The weather is nice.").intended is None


def test_embedding_chooser(smol):
    ch = LMEmbeddingChooser(smol)  # the former offline chooser, kept for comparison (MiniLM: test_related_grading)
    words = [w.lower() for w in protocol.concept_words()]
    hits = 0
    for i, w in enumerate(words):
        cands = distractors(w, words, 9, i)
        hits += ch.choose(w.capitalize(), cands).word == w
        assert ch.choose(f"I think of {w}.", cands).method == "exact"
    assert hits == len(words)  # the word itself must always be chosen
    # a response naming no candidate is decided in embedding space, deterministically
    c = ch.choose("zzzz", ["dust", "origami"])
    assert c.method == "embedding" and c.word in ("dust", "origami")


def test_exp3_report_can_use_the_judge(tmp_path):
    """The paper's intended_prefill judge prompt grades Exp 3 replies (fake backend: no network)."""
    from introspect_mech.experiments.prefill_intent.report import grade
    from introspect_mech.grading.llm_judge import LLMJudge

    class Fake:
        id = "fake"

        def __init__(self):
            self.prompts = []

        def complete(self, prompts, max_new_tokens):
            self.prompts += prompts
            return ["YES" if "meant" in p.split("<BEGIN RESPONSE>")[1] else "NO" for p in prompts]

    backend = Fake()
    recs = [{"prefilled_word": "bread", "response": "Yes, I meant it."},
            {"prefilled_word": "bread", "response": "Sorry, an accident."},
            {"prefilled_word": "bread", "response": None}]
    g = grade(recs, LLMJudge(backend, cache_path=tmp_path / "c.jsonl"))
    assert [x.get("apology") for x in g] == [False, True, None]
    assert "They said the word bread" in backend.prompts[0]  # the paper's prompt, filled
