"""``im.steer``: injections applied to plain HF calls give what ``im.generate`` gives (the same intervention code)."""

from __future__ import annotations

import pytest
import torch

import introspect_mech as im
from introspect_mech.errors import IntrospectError

from introspect_mech.step import eos_ids

from test_decode_compact import N, cut_at_eos, prompts_for

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2", "gpt2"])
@pytest.mark.parametrize("window", ["all", "from", "span"])
def test_steer_around_hf_generate_equals_im_generate(tiny_model_of, arch, window):
    m = tiny_model_of(arch)
    prompts = prompts_for(m)
    v = torch.randn(m.arch.d_model, generator=torch.Generator().manual_seed(3))
    w = {"all": im.Window.all(), "from": im.Window.from_position(4), "span": im.Window.span(2, 6)}[window]
    inj = im.Injection(v, 1, 3.0, w)
    ref = im.generate(m, prompts, [inj] * len(prompts), max_new_tokens=N)
    batch = ref.batch
    with im.steer(m, inj):
        out = m.hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=N,
                            do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
    eos = eos_ids(m)
    got = [cut_at_eos(out[r, batch.width:].tolist(), eos) for r in range(batch.size)]
    assert got == ref.new_tokens
    clean = m.hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=N,
                          do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
    clean = [cut_at_eos(clean[r, batch.width:].tolist(), eos) for r in range(batch.size)]
    assert clean == im.generate(m, prompts, None, max_new_tokens=N).new_tokens  # the hooks are gone
    if window != "span":  # (a span inside the prompt may leave greedy tokens unchanged)
        assert clean != got  # the block did steer


def test_steer_forward_logits_equal_im_forward(tiny_model_of):
    m = tiny_model_of("llama")
    prompts = prompts_for(m)
    inj = im.Injection(torch.randn(m.arch.d_model), 2, 2.0, im.Window.from_position(3))
    ref = im.forward(m, prompts, [inj] * len(prompts))
    b = ref.batch
    with im.steer(m, [inj]), torch.no_grad():
        logits = m.hf(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    assert torch.allclose(logits, ref.logits, atol=1e-5)


def test_steer_refuses_bad_input_and_removes_hooks_on_error(tiny_model_of):
    m = tiny_model_of("llama")
    with pytest.raises(IntrospectError, match="Injection"):
        with im.steer(m, []):
            pass
    inj = im.Injection(torch.randn(m.arch.d_model), 1, 2.0)
    layer = m.arch.layer(m.hf, 1)
    before = (dict(m.hf._forward_pre_hooks), dict(layer._forward_hooks))  # transformers may keep its own hooks
    with pytest.raises(RuntimeError, match="boom"):
        with im.steer(m, inj):
            assert len(layer._forward_hooks) == len(before[1]) + 1
            raise RuntimeError("boom")
    assert (dict(m.hf._forward_pre_hooks), dict(layer._forward_hooks)) == before
