"""Loading the embedded model: cached export gives identical logits; bad names fail clearly."""

from __future__ import annotations


import pytest
import torch

import introspect_mech as im
from introspect_mech.errors import ModelLoadError
from introspect_mech.models import EMBEDDED, export_embedded

from _real import smol  # noqa: F401

pytestmark = pytest.mark.integration


def test_embedded_shapes(smol):
    a = smol.arch
    assert (a.n_layers, a.d_model, a.n_heads, a.n_kv_heads, a.head_dim) == (30, 576, 9, 3, 64)
    assert smol.has_chat_template and not smol.remote
    assert smol.hf.config._attn_implementation != "eager"  # fast default unless asked


def test_cached_export_is_bit_identical_to_gguf(smol):
    """Load the GGUF directly (slow, ~12 s) and compare logits with the cached safetensors copy."""
    from transformers import AutoModelForCausalLM

    gguf = EMBEDDED["smollm2-135m-instruct"].locate()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([smol.tokenizer("Tell me about dust").input_ids])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, smol.hf(ids).logits)


def test_cached_load_reads_the_export_not_the_gguf(monkeypatch):
    """After the first export, loading reads the fp32 safetensors copy and never parses the GGUF again (the
    slow part: ~12 s against ~0.3 s; timings are measured in benchmarks/, not asserted here)."""
    import transformers

    export_embedded("smollm2-135m-instruct")
    real = transformers.AutoModelForCausalLM.from_pretrained

    def no_gguf(*a, **k):
        assert "gguf_file" not in k, "the cached load parsed the GGUF"
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    m = im.load_model()
    assert m.arch.n_layers == 30


def test_attention_flag_loads_eager():
    m = im.load_model(attention=True)
    assert m.hf.config._attn_implementation == "eager"


@pytest.mark.parametrize("name", ["no-such-model", "", "./does/not/exist"])
def test_unknown_model_is_a_clear_error(name):
    with pytest.raises(ModelLoadError, match="model"):
        im.load_model(name)


def test_trust_remote_code_is_off_by_default(monkeypatch):
    seen = {}
    import transformers

    def fake(path, **kw):
        seen.update(kw)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(ModelLoadError):
        im.load_model("some-org/some-model")
    assert seen.get("trust_remote_code") is False
