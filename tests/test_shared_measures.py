"""The measures that experiments, analyses and the organism share live in one module each; these tests pin
what each computes (so a change to the shared home is a change everywhere, on purpose).

No real model: tiny tokenizers and synthetic tensors.
"""

from __future__ import annotations

import math

import pytest
import torch

from introspect_mech import protocol
from introspect_mech.concepts import ConceptVectors
from introspect_mech.errors import ConfigError
from introspect_mech.experiments.injected_thoughts.prompt import (exp1_or_user_prompt, exp1_prompt, exp1_turns, exp1_window,
                                                     paper_question)
from introspect_mech.experiments.prefill_intent.measure import REPLIES, intent_logodds, reply_logprobs
from introspect_mech.grading import factory
from introspect_mech.prompts import Turn, render
from introspect_mech.runner import batch_seed
from introspect_mech.seeds import seed_from

pytestmark = pytest.mark.usefixtures("single_thread")


def test_seeds_are_pinned():
    """Seeds decide every random control and every batch's sampling: a change would change stored results."""
    assert seed_from(0, 0) == batch_seed(0, 0) == 2893166218
    assert batch_seed(7, 3) == 287060127
    assert seed_from("controls", 0, "cell", 14, 4.0) == 314592868
    assert seed_from("dust", "2025:t1") == 2261897721


def test_exp1_turns_are_the_papers_and_change_only_the_last_line():
    exp = protocol.experiment("injected_thoughts")
    assert [(t.role, t.content) for t in exp1_turns()] == [(t["role"], t["content"]) for t in exp["turns"]]
    head = exp["turns"][-1]["content"].split("Trial 1:")[0]
    assert exp1_turns("2026")[-1].content == head + exp["variant_last_user_line_2026"]
    q = exp["yes_bias_control_questions"][3]
    assert exp1_turns("2026", question=q)[-1].content == head + "Trial 1: " + q
    assert exp1_turns(question="Why?", trial=5)[-1].content == head + "Trial 5: Why?"
    assert exp1_turns(question="Why?")[:2] == exp1_turns()[:2]
    assert paper_question("2025") in exp["turns"][-1]["content"]
    with pytest.raises(ConfigError, match="variant"):
        exp1_turns("1999")


def test_exp1_window_starts_at_the_double_newline_before_trial(tiny_tokenizer):
    for kw in ({}, {"trial": 4, "question": "Anything?"}, {"variant": "2026"}):
        p = exp1_prompt(tiny_tokenizer, **kw)
        cs = p.rendered.text.index("\n\nTrial ")
        a, b = p.rendered.offsets[p.start]
        assert a <= cs < b or a <= cs + 1 < b, (kw, a, b, cs)  # the first token carrying the \n\n
        assert p.start == exp1_window(p.rendered) and p.window.start == p.start and p.window.end is None


def test_prompt_choice_paper_or_user_message(tiny_tokenizer):
    paper = exp1_or_user_prompt(tiny_tokenizer, None)
    assert paper.label == "exp1" and paper.rendered.text == exp1_prompt(tiny_tokenizer).rendered.text
    assert exp1_or_user_prompt(tiny_tokenizer, "exp1").window == paper.window
    user = exp1_or_user_prompt(tiny_tokenizer, "Tell me about dust.")
    assert user.window.start == 0 and user.window.end is None and user.label == "Tell me about dust."
    assert user.rendered.text == render(tiny_tokenizer, [Turn("user", "Tell me about dust.")]).text


def test_scaling_factor_is_one_plus_strength_times_mean_vector_over_mean_residual_norm():
    vec = torch.zeros(2, 2, 3)
    vec[0, 1, 0], vec[1, 1, 1] = 3.0, 5.0  # layer 7: norms 3 and 5, mean 4
    cv = ConceptVectors(["a", "b"], [4, 7], vec, {}, torch.tensor([1.0, 8.0]))
    assert cv.scaling_factor(7, 2.0) == pytest.approx(1 + 2.0 * 4.0 / 8.0)
    assert cv.scaling_factor(4, 3.0) == 1.0  # zero vectors at layer 4


def test_intent_logodds_merges_packed_and_split_rows():
    """Two items: item 0 packed in one row (all replies), item 1 split over rows of one reply each."""
    nan = float("nan")
    lp0 = [-1.0, -2.0, -3.0, -0.5]
    lp1 = [-4.0, -1.5, -0.2, -2.5]
    scores = torch.tensor([lp0] + [[v if k == j else nan for k, v in enumerate(lp1)] for j in range(4)],
                          dtype=torch.float64)
    lp = reply_logprobs(scores, [0, 1, 1, 1, 1], 2)
    assert lp.dtype == torch.float64 and lp.tolist() == [lp0, lp1]
    n = len(REPLIES) // 2
    want = [math.log(sum(math.exp(v) for v in x[:n])) - math.log(sum(math.exp(v) for v in x[n:])) for x in (lp0, lp1)]
    assert intent_logodds(lp).tolist() == pytest.approx(want)


def test_grader_factory_specs():
    from introspect_mech.grading.rules import RuleGrader
    from introspect_mech.grading.word_choice import EmbeddingChooser

    assert isinstance(factory.make_grader("rules"), RuleGrader)
    assert factory.make_grader("rules-literal").related is None
    assert isinstance(factory.make_word_chooser("rules"), EmbeddingChooser)
    assert factory.make_intent_judge("rules") is None
    judge = factory.make_intent_judge("openai:some-model", base_url="http://127.0.0.1:9/v1", api_key_env=None)
    assert judge.backend.model == "some-model" and judge.backend.base_url == "http://127.0.0.1:9/v1"
    for bad in ("magic", "openai:", "hf: "):
        with pytest.raises(ConfigError, match="unknown grader"):
            factory.check_grader_name(bad)
    with pytest.raises(ConfigError, match="unknown grader"):
        factory.check_grader_name("rules-literal")
    assert factory.check_grader_name("rules-literal", literal=True) == "rules-literal"
