"""Architecture accessor layer on tiny random models of nine architectures.

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


@pytest.fixture(scope="session")
def tiny_model(tiny_model_any):
    """Every test here runs on all nine tiny architectures."""
    return tiny_model_any


# (n_layers, d_model, n_heads, n_kv_heads, head_dim) as conftest.tiny_config sets them
EXPECTED_SHAPES = {
    "llama": (3, 64, 4, 2, 16),
    "gemma3_text": (3, 64, 4, 1, 32),
    "qwen2": (3, 64, 4, 2, 16),
    "gpt2": (3, 64, 4, 4, 16),
    "mistral": (3, 64, 4, 2, 16),
    "qwen3": (3, 64, 4, 2, 24),
    "gemma2": (3, 64, 4, 2, 32),
    "phi3": (3, 64, 4, 2, 16),
    "olmo2": (3, 64, 4, 2, 16),
}
# how each block writes to the residual stream (read off the HF source of each DecoderLayer.forward)
EXPECTED_BLOCKS = {"llama": "pre-norm", "gemma3_text": "sandwich-norm", "qwen2": "pre-norm", "gpt2": "pre-norm",
                   "mistral": "pre-norm", "qwen3": "pre-norm", "gemma2": "sandwich-norm", "phi3": "pre-norm",
                   "olmo2": "post-norm"}


def _blocks(hf):
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def _qkv_widths(hf) -> tuple[int, int, int]:
    """(query width, key width, o_proj input width) read off the weights of layer 0."""
    block = _blocks(hf)[0]
    if hasattr(block, "attn"):  # GPT-2: fused c_attn Conv1D [d, 3d]; c_proj Conv1D [d, d]
        qkv = block.attn.c_attn.weight.shape[1] // 3
        return qkv, qkv, block.attn.c_proj.weight.shape[0]
    a = block.self_attn
    if hasattr(a, "qkv_proj"):  # Phi-3: fused [q | k | v] Linear; q and o_proj's input have the same width
        o_in = a.o_proj.weight.shape[1]
        return o_in, (a.qkv_proj.weight.shape[0] - o_in) // 2, o_in
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


def test_phi3_projections_are_fused(tiny_model_of):
    """Phi-3 has one qkv_proj and one gate_up_proj: no q_proj/k_proj/v_proj, gate_proj or up_proj."""
    hf = tiny_model_of("phi3").hf
    a, mlp = hf.model.layers[0].self_attn, hf.model.layers[0].mlp
    assert hasattr(a, "qkv_proj") and not any(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj"))
    assert hasattr(mlp, "gate_up_proj") and not hasattr(mlp, "up_proj")
    assert a.qkv_proj.weight.shape == ((4 + 2 * 2) * 16, 64)


def test_mistral_sliding_window_binds(tiny_model_of):
    """Non-vacuity of the Mistral tier: its window of 8 changes the logits of a longer prompt."""
    from transformers import AutoModelForCausalLM

    m = tiny_model_of("mistral")
    ids = torch.tensor([m.tokenizer("The old clock on the wall ticked loudly, and the dust settled.")["input_ids"]])
    assert ids.shape[1] > 2 * m.hf.config.sliding_window
    cfg = type(m.hf.config).from_dict({**m.hf.config.to_dict(), "sliding_window": None})
    full = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    full.load_state_dict(m.hf.state_dict())
    with torch.no_grad():
        a, b = m.hf(ids).logits, full(ids).logits
    assert (a[0, :8] - b[0, :8]).abs().max() < 1e-5 and (a[0, -1] - b[0, -1]).abs().max() > 1e-3


def test_block_layout(tiny_model):
    """Each block's residual writes come from the module the HF forward adds: the attention / MLP module on
    pre-norm blocks, post_attention_layernorm / post_feedforward_layernorm on Gemma 2/3 and OLMo-2."""
    arch, hf = tiny_model.arch, tiny_model.hf
    assert arch.block.name == EXPECTED_BLOCKS[arch.model_type] and arch.block.additive
    for i in range(3):
        block = _blocks(hf)[i]
        if arch.block.name == "pre-norm":
            assert arch.attn_write(hf, i) is arch.attn(hf, i) and arch.mlp_write(hf, i) is block.mlp
        else:
            assert arch.attn_write(hf, i) is block.post_attention_layernorm
            assert arch.mlp_write(hf, i) is block.post_feedforward_layernorm
    arch.require_additive_blocks("test")  # no refusal


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


# ---- load-time validation of broken layouts (fresh models: the session's tiny models stay intact) ---------------

def _fresh(arch, tokenizer):
    from conftest import build_tiny_hf

    return build_tiny_hf(arch, tokenizer)


@pytest.mark.parametrize("arch", ["gemma2", "olmo2", "gemma3"])
def test_post_norm_block_without_its_post_norm_fails_at_load(tiny_tokenizer, arch):
    from introspect_mech.models import wrap

    hf = _fresh(arch, tiny_tokenizer)
    del hf.model.layers[2].post_feedforward_layernorm
    with pytest.raises(ArchitectureError, match=r"post_feedforward_layernorm.*layers\[2\]"):
        wrap(hf, tiny_tokenizer)


@pytest.mark.parametrize("arch", ["qwen3", "gemma2", "mistral"])
def test_config_head_dim_that_disagrees_with_o_proj_fails(tiny_tokenizer, arch):
    """Per-head outputs are o_proj's input cut into n_heads × head_dim: a wrong head_dim must not load."""
    hf = _fresh(arch, tiny_tokenizer)
    cfg = hf.config
    right = cfg.head_dim
    cfg.head_dim = 16 if right != 16 else 8
    with pytest.raises(ArchitectureError, match=rf"o_proj takes {4 * right} inputs.*head_dim {cfg.head_dim}"):
        Architecture.from_model(hf, cfg)


def test_phi3_fused_qkv_checked_against_kv_heads(tiny_tokenizer):
    hf = _fresh("phi3", tiny_tokenizer)
    cfg = SimpleNamespace(model_type="phi3", num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                          num_key_value_heads=4)  # the weights have 2 KV heads: qkv_proj is (4 + 2·2)·16 = 128 wide
    with pytest.raises(ArchitectureError, match=r"qkv_proj has 128 outputs .* implies 192"):
        Architecture.from_model(hf, cfg)
    cfg.num_key_value_heads = 2
    assert Architecture.from_model(hf, cfg).n_kv_heads == 2


def test_block_without_o_proj_fails(tiny_tokenizer):
    hf = _fresh("olmo2", tiny_tokenizer)
    del hf.model.layers[1].self_attn.o_proj
    with pytest.raises(ArchitectureError, match=r"layers\[1\]\) has no self_attn.o_proj"):
        Architecture.from_model(hf, hf.config)


def test_unverified_model_type_loads_but_decompositions_refuse(tiny_model_of):
    """A model type without a tested BlockLayout (e.g. Granite, which scales each write by a residual
    multiplier) still loads, records and intervenes; only the attention + MLP split is refused."""
    hf = tiny_model_of("llama").hf
    cfg = SimpleNamespace(model_type="granite", num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                          num_key_value_heads=2)
    arch = Architecture.from_model(hf, cfg)
    assert arch.block.name == "unverified" and not arch.block.additive
    assert arch.mlp_write(hf, 1) is hf.model.layers[1].mlp
    with pytest.raises(ArchitectureError, match=r"^thought-control splits .*'granite' has unverified blocks") as e:
        arch.require_additive_blocks("thought-control")
    assert "\n" not in str(e.value) and "BLOCK_LAYOUTS" in str(e.value)


def test_default_block_layout_follows_model_type():
    assert Architecture("olmo2", KNOWN_LAYOUTS[0], 3, 64, 4, 2, 16).block.name == "post-norm"
    assert Architecture("mistral", KNOWN_LAYOUTS[0], 3, 64, 4, 2, 16).block.name == "pre-norm"
    assert Architecture("mystery", KNOWN_LAYOUTS[0], 3, 64, 4, 2, 16).block.name == "unverified"
