"""Architecture accessor layer on tiny random models of four architectures.

Expected values come from how conftest builds each model (the config it was given) and
from the actual weight shapes of the HF modules — never from ``Architecture`` itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from introspect_mech.arch import Architecture, KNOWN_LAYOUTS
from introspect_mech.errors import ArchitectureError, LayerError

pytestmark = pytest.mark.usefixtures("single_thread")

# (n_layers, d_model, n_heads, n_kv_heads, head_dim) as conftest.tiny_config sets them
EXPECTED_SHAPES = {
    "llama": (3, 64, 4, 2, 16),
    "gemma3_text": (3, 64, 4, 1, 32),
    "qwen2": (3, 64, 4, 2, 16),
    "gpt2": (3, 64, 4, 4, 16),
}


def _blocks(hf):
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def _qkv_widths(hf) -> tuple[int, int, int]:
    """(query width, key width, o_proj input width) read off the weights of layer 0."""
    block = _blocks(hf)[0]
    if hasattr(block, "attn"):  # GPT-2: fused c_attn Conv1D [d, 3d]; c_proj Conv1D [d, d]
        qkv = block.attn.c_attn.weight.shape[1] // 3
        return qkv, qkv, block.attn.c_proj.weight.shape[0]
    a = block.self_attn
    return a.q_proj.weight.shape[0], a.k_proj.weight.shape[0], a.o_proj.weight.shape[1]


def test_fields_match_config(tiny_model):
    arch, cfg = tiny_model.arch, tiny_model.hf.config
    got = (arch.n_layers, arch.d_model, arch.n_heads, arch.n_kv_heads, arch.head_dim)
    assert got == EXPECTED_SHAPES[cfg.model_type]
    # ... and with the config object the model was built from
    if cfg.model_type == "gpt2":
        assert got == (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_head, cfg.n_embd // cfg.n_head)
    else:
        assert got == (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                       cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def test_fields_match_weight_shapes(tiny_model):
    arch, hf = tiny_model.arch, tiny_model.hf
    q, k, o_in = _qkv_widths(hf)
    assert len(_blocks(hf)) == arch.n_layers
    assert q == arch.n_heads * arch.head_dim
    assert k == arch.n_kv_heads * arch.head_dim
    assert o_in == arch.n_heads * arch.head_dim
    assert hf.get_input_embeddings().weight.shape[1] == arch.d_model


def test_gemma3_head_dim_is_not_d_model_over_heads(tiny_model_of):
    arch = tiny_model_of("gemma3").arch
    assert arch.model_type == "gemma3_text"
    assert arch.head_dim == 32 and arch.d_model // arch.n_heads == 16
    assert arch.n_heads * arch.head_dim == 128 != arch.d_model


def test_module_access_is_the_real_module(tiny_model):
    arch, hf = tiny_model.arch, tiny_model.hf
    blocks = _blocks(hf)
    for i in range(3):
        assert arch.layer(hf, i) is blocks[i]
    assert arch.layer(hf, -1) is blocks[-1]
    if hasattr(hf, "transformer"):
        assert arch.attn(hf, 1) is blocks[1].attn and arch.o_proj(hf, 1) is blocks[1].attn.c_proj
        assert arch.final_norm(hf) is hf.transformer.ln_f and arch.embed(hf) is hf.transformer.wte
    else:
        assert arch.attn(hf, 1) is blocks[1].self_attn and arch.o_proj(hf, 1) is blocks[1].self_attn.o_proj
        assert arch.final_norm(hf) is hf.model.norm and arch.embed(hf) is hf.model.embed_tokens


# ---- resolve_layer ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "layer, expected",
    [
        (0, 0), (1, 1), (2, 2),
        (-1, 2), (-2, 1), (-3, 0),
        (0.0, 0), (1.0, 2), (0.5, 1),  # round(f * (n_layers - 1)) = round(f * 2)
        (0.2, 0), (0.3, 1), (0.67, 1), (0.8, 2),
        ("0.67", 1), ("2", 2), (" 1 ", 1), ("-1", 2), ("1.0", 2), ("0", 0), ("0.0", 0),
    ],
)
def test_resolve_layer(tiny_model, layer, expected):
    assert tiny_model.arch.n_layers == 3
    assert tiny_model.arch.resolve_layer(layer) == expected


def test_resolve_layer_fraction_on_a_deep_model():
    # SmolLM2's shape: 30 layers; 0.67 of the way through 0..29 is round(19.43) = 19
    arch = Architecture("llama", KNOWN_LAYOUTS[0], 30, 576, 9, 3, 64)
    assert arch.resolve_layer(0.67) == 19
    assert arch.resolve_layer(0.25) == 7  # round(7.25)
    assert arch.resolve_layer(1.0) == 29
    assert arch.resolve_layer(-30) == 0


@pytest.mark.parametrize("bad", [3, 4, 100, -4, -100, 1.5, -0.1, 1.0001, float("nan"), float("inf"),
                                 float("-inf"), True, False, "1.5", "3", "abc", "", "one", "nan"])
def test_resolve_layer_rejects(tiny_model, bad):
    with pytest.raises(LayerError):
        tiny_model.arch.resolve_layer(bad)


def test_resolve_layer_messages_name_the_fix(tiny_model):
    arch = tiny_model.arch
    with pytest.raises(LayerError, match=r"0\.\.2"):
        arch.resolve_layer(3)
    with pytest.raises(LayerError, match=r"outside \[0, 1\]"):
        arch.resolve_layer(1.5)
    with pytest.raises(LayerError, match="bool"):
        arch.resolve_layer(True)


def test_resolve_layers(tiny_model):
    arch = tiny_model.arch
    assert arch.resolve_layers(None) == [0, 1, 2]
    assert arch.resolve_layers("all") == [0, 1, 2]
    assert arch.resolve_layers("2,0") == [0, 2]
    assert arch.resolve_layers([1.0, 0.0, -1]) == [0, 2]
    assert arch.resolve_layers(0.5) == [1]
    with pytest.raises(LayerError):
        arch.resolve_layers([0, 7])


# ---- unknown / inconsistent architectures ------------------------------------------------------

class _Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])


def test_unknown_architecture_raises():
    cfg = SimpleNamespace(model_type="mystery", num_hidden_layers=2, hidden_size=4, num_attention_heads=1)
    with pytest.raises(ArchitectureError, match="KNOWN_LAYOUTS"):
        Architecture.from_model(_Plain(), cfg)
    with pytest.raises(ArchitectureError):
        Architecture.from_model(torch.nn.Linear(4, 4), cfg)


def test_wrap_rejects_unknown_architecture(tiny_tokenizer):
    from introspect_mech.models import wrap

    module = _Plain()
    module.config = SimpleNamespace(model_type="mystery", num_hidden_layers=2, hidden_size=4, num_attention_heads=1)
    with pytest.raises(ArchitectureError):
        wrap(module, tiny_tokenizer)


def test_layer_count_mismatch_raises(tiny_model):
    cfg = tiny_model.hf.config
    fake = SimpleNamespace(**{k: getattr(cfg, k) for k in ("model_type",)},
                           num_hidden_layers=5, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ArchitectureError, match="5 layers"):
        Architecture.from_model(tiny_model.hf, fake)


def test_heads_not_multiple_of_kv_heads_raises(tiny_model):
    fake = SimpleNamespace(model_type="x", num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=3)
    with pytest.raises(ArchitectureError, match="multiple"):
        Architecture.from_model(tiny_model.hf, fake)
