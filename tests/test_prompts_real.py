"""Exact token windows on the real SmolLM2 tokenizer (golden indices checked by eye against the
decoded tokens, listed in the assertions), and the character-offset rule on a merging tokenizer."""

from __future__ import annotations

import pytest

import introspect_mech as im
from introspect_mech.errors import ChatTemplateError, WindowError
from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
from introspect_mech.prompts import RenderedPrompt

from _real import smol  # noqa: F401

pytestmark = pytest.mark.integration


def decoded(model, rp):
    return [model.tokenizer.decode([t]) for t in rp.input_ids]


def _chatml(turns, system=None):
    """Hand-written ChatML (SmolLM2's format), independent of the toolkit's rendering."""
    head = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    return head + "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns) + \
        "<|im_start|>assistant\n"


def test_exp1_window_chat_template(smol):
    from introspect_mech import protocol

    p = exp1_prompt(smol.tokenizer)
    # default system choice: SmolLM2's template would insert its own system turn, so an explicit empty one
    want = _chatml(protocol.experiment("injected_thoughts")["turns"], system="")
    assert p.rendered.text == want and p.rendered.system == ""
    assert list(p.rendered.input_ids) == smol.tokenizer(want, add_special_tokens=False)["input_ids"]
    toks = decoded(smol, p.rendered)
    assert len(toks) == 159
    assert p.start == 129
    assert toks[:5] == ["<|im_start|>", "system", "\n", "<|im_end|>", "\n"]
    # SmolLM2 splits "\n\n" into two "\n" tokens: the window starts at the first one
    assert toks[127:133] == [" started", ".", "\n", "\n", "T", "rial"]
    # generation prompt is the end of the rendered text
    assert toks[-4:] == ["<|im_start|>", "ass", "istant", "\n"]
    assert p.window.start == 129 and p.window.end is None


def test_system_choices_render_what_they_say(smol):
    from introspect_mech.errors import ChatTemplateError
    from introspect_mech.prompts import template_default_system

    tok = smol.tokenizer
    user = [{"role": "user", "content": "Tell me about dust"}]
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert template_default_system(tok) == default  # measured from the template, not hard-coded in the toolkit
    tmpl = im.render(tok, user, system="template")
    assert tmpl.text == _chatml(user, system=default) and tmpl.system == default and len(tmpl) == 34
    empty = im.render(tok, user, system="empty")
    assert empty.text == _chatml(user, system="") and empty.system == "" and len(empty) == 18
    assert im.render(tok, user).text == empty.text  # auto = empty on a template that inserts a default
    own = im.render(tok, user, system="Be brief.")
    assert own.text == _chatml(user, system="Be brief.") and own.system == "Be brief."
    with pytest.raises(ChatTemplateError, match="system='empty'"):
        im.render(tok, user, system="none")
    # an explicit system turn among the turns wins over the choice
    explicit = im.render(tok, [{"role": "system", "content": "X"}] + user, system="template")
    assert explicit.text == _chatml(user, system="X") and explicit.system == "X"
    # the raw (paper) format has no system line unless a text is given
    assert im.render(tok, user, fmt="raw").text == "Human: Tell me about dust\n\nAssistant:"
    assert im.render(tok, user, fmt="raw", system="Be brief.").text.startswith("System: Be brief.\n\nHuman:")


def test_exp1_window_2026_variant_and_raw_format(smol):
    p26 = exp1_prompt(smol.tokenizer, "2026")
    assert p26.start == 129 and "tell me about a concept of your choice" in p26.rendered.text
    raw = exp1_prompt(smol.tokenizer, fmt="raw")
    assert raw.rendered.text.startswith("Human: I am an interpretability researcher")
    assert raw.rendered.text.endswith("\n\nAssistant:")
    toks = decoded(smol, raw.rendered)
    assert raw.start == 121 and toks[120:124] == [".", "\n", "\n", "T"]


def test_sentence_span_is_exact(smol):
    sentence = "The old clock on the wall ticked loudly."
    rp = im.render(smol.tokenizer, [im.Turn("user", f"Repeat the line below. Answer immediately.\n\n{sentence}")])
    a, b = rp.token_span_of(sentence)
    assert "".join(decoded(smol, rp)[a:b]) == sentence
    assert decoded(smol, rp)[b] == "<|im_end|>"


def test_prefill_renders_inside_assistant_turn(smol):
    rp = im.render(smol.tokenizer, [im.Turn("user", "Say a word.")], prefill="Bread")
    assert rp.text.endswith("<|im_start|>assistant\nBread")
    a, b = rp.token_span_of("Bread", last=True)
    assert b == len(rp) and "".join(decoded(smol, rp)[a:b]) == "Bread"


def test_merged_newline_token_is_included():
    # a tokenizer that merges ".\n\n" into one token: the window must start at that token
    text = "started.\n\nTrial 1"
    offsets = ((0, 7), (7, 10), (10, 15), (15, 16), (16, 17))
    rp = RenderedPrompt(text, (1, 2, 3, 4, 5), offsets, "raw")
    cs, _ = rp.find("\n\nTrial 1")
    assert rp.token_span(cs, cs + 2) == (1, 2)
    # zero-width tokens (an added BOS) never match
    rp2 = RenderedPrompt("ab", (0, 1, 2), ((0, 0), (0, 1), (1, 2)), "raw")
    assert rp2.token_span(0, 1) == (1, 2)


def test_window_errors(smol):
    rp = im.render(smol.tokenizer, [im.Turn("user", "hi")])
    with pytest.raises(WindowError, match="does not occur"):
        rp.token_span_of("Trial 1")
    with pytest.raises(WindowError):
        im.Window(5, 5)
    with pytest.raises(WindowError):
        im.Window(-1)


def test_no_chat_template_is_a_clear_error(smol):
    import copy

    tok = copy.deepcopy(smol.tokenizer)
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="fmt='raw'"):
        im.render(tok, [im.Turn("user", "hi")], fmt="chat")
    assert im.render(tok, [im.Turn("user", "hi")]).fmt == "raw"  # auto falls back to the paper's format
