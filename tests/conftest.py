"""Shared fixtures.

Tiny-model tier (TransformerLens-style): nine architectures built from configs with random,
seeded weights and a byte-level BPE tokenizer trained in memory on the protocol's own text.
No Hub access, no files: the whole tier builds in about a second.

* ``tiny_model`` — parametrized over llama (GQA), gemma3 (explicit head_dim, 1 KV head),
  qwen2 (q/k/v biases), gpt2 (Conv1D, absolute positions, o_proj bias); tokenizers
  carry a ChatML chat template. ``tiny_model_of(arch)`` gives the same objects by name,
  for these and for the architectures of ``EXTRA_ARCHS``.
* ``EXTRA_ARCHS`` — mistral (sliding window on every layer), qwen3 (q/k norms, head_dim 24
  so o_proj's input is 96 wide), gemma2 (sandwich norms, logit soft-capping, alternating
  sliding/global layers), phi3 (fused ``qkv_proj`` and ``gate_up_proj``), olmo2 (post-norm
  blocks, no pre-norms, q/k norms). ``tiny_model_any`` is parametrized over all nine
  (``ALL_TINY_ARCHS``); modules that check every architecture use it.
* ``tiny_raw_model`` — a Llama-shaped tiny model whose tokenizer has no chat template.
* ``tiny_tokenizer`` / ``tiny_raw_tokenizer`` — the tokenizers alone (fresh objects).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files

import pytest
import torch

TINY_ARCHS = ("llama", "gemma3", "qwen2", "gpt2")
EXTRA_ARCHS = ("mistral", "qwen3", "gemma2", "phi3", "olmo2")
ALL_TINY_ARCHS = TINY_ARCHS + EXTRA_ARCHS
# block layouts that depend on the config, built only by tests/test_block_layouts_tiny.py (via tiny_model_of)
LAYOUT_ARCHS = ("gpt_neox", "gpt_neox_sequential", "opt", "opt_post_ln")
TINY_VOCAB = 384  # model vocab; the trained tokenizer's vocab is at most this
TINY_SEED = 1234

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML, as Qwen/SmolLM write it; `continue_final_message` in apply_chat_template needs the
# final message's content to appear verbatim, which it does here.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------


def _training_text() -> list[str]:
    """The protocol's sentences, words and prompt turns: the text the tests tokenize."""
    proto = json.loads(files("introspect_mech.protocol").joinpath("lindsey2025.json").read_text(encoding="utf-8"))
    lines: list[str] = list(proto["sentences"])
    lines += proto["concept_words"] + proto["baseline_words"]
    lines.append(proto["concept_vector"]["raw_prompt"])
    for exp in proto["experiments"].values():
        for key in ("turns", "turns_word", "turns_repeat"):
            for turn in exp.get(key, []) or []:
                lines.append(turn["content"])
    lines += ["Human: Assistant: System: user assistant system\n\n", "Trial 1: Trial 2:"]
    return lines


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train a small byte-level BPE once per session and serialize it (each fixture gets a fresh copy)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, IM_START, IM_END]
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB - 16,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]),
    ])
    assert tok.get_vocab_size() <= TINY_VOCAB
    return tok.to_str()


def make_tiny_tokenizer(chat_template: bool = True):
    """A fresh ``PreTrainedTokenizerFast`` (bos/eos/pad set; ChatML template unless ``chat_template=False``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
    )
    if chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def tiny_config(arch: str, tokenizer):
    """A ~3-layer, d_model 64 config of the given architecture, with eager attention."""
    from transformers import (Gemma2Config, Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig,
                              Olmo2Config, OPTConfig, Phi3Config, Qwen2Config, Qwen3Config)

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  max_position_embeddings=256, tie_word_embeddings=False, **ids)
    if arch == "llama":
        cfg = LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **common)
    elif arch == "gemma3":
        # head_dim 32 != 64/4: the o_proj input is 4*32 = 128 wide, wider than d_model.
        # Layer 1 is global, layers 0 and 2 use a sliding window short enough to bind on the test prompts.
        cfg = Gemma3TextConfig(num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                               sliding_window=8, query_pre_attn_scalar=32, **common)
    elif arch == "qwen2":
        cfg = Qwen2Config(num_attention_heads=4, num_key_value_heads=2, use_sliding_window=False, **common)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=TINY_VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=256,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, **ids)
    elif arch == "mistral":
        # a window of 8 on every layer binds on the test prompts (Mistral-7B-v0.1 used 4096)
        cfg = MistralConfig(num_attention_heads=4, num_key_value_heads=2, sliding_window=8, **common)
    elif arch == "qwen3":
        cfg = Qwen3Config(num_attention_heads=4, num_key_value_heads=2, head_dim=24, **common)
    elif arch == "gemma2":
        cfg = Gemma2Config(num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           sliding_window=8, **common)
    elif arch == "phi3":
        cfg = Phi3Config(num_attention_heads=4, num_key_value_heads=2, resid_pdrop=0.0, embd_pdrop=0.0,
                         attention_dropout=0.0, **common)
    elif arch == "olmo2":
        cfg = Olmo2Config(num_attention_heads=4, num_key_value_heads=2, **common)
    elif arch in ("gpt_neox", "gpt_neox_sequential"):
        cfg = GPTNeoXConfig(num_attention_heads=4, use_parallel_residual=(arch == "gpt_neox"), hidden_dropout=0.0,
                            attention_dropout=0.0, **common)
    elif arch in ("opt", "opt_post_ln"):  # opt_post_ln: OPT-350m's norm after the residual sum
        cfg = OPTConfig(vocab_size=TINY_VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
                        word_embed_proj_dim=64, max_position_embeddings=256, do_layer_norm_before=(arch == "opt"),
                        dropout=0.0, attention_dropout=0.0, **ids)
    else:
        raise ValueError(arch)
    cfg._attn_implementation = "eager"
    return cfg


def build_tiny_hf(arch: str, tokenizer):
    """Random, seeded HF causal LM of ``arch`` (fp32, eval mode, eager attention)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, tokenizer)
    torch.manual_seed(TINY_SEED)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    # save_pretrained sets this on the live config; set here, a test that saves the session-wide model does not
    # change its fingerprint for the tests after it
    model.config.architectures = [type(model).__name__]
    # Default inits are small (std 0.02); widen them so layers, heads and injections visibly matter.
    with torch.no_grad():
        g = torch.Generator().manual_seed(TINY_SEED)
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
            elif "bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif arch in EXTRA_ARCHS:  # norm gains away from their init, so that a skipped (post-)norm shows
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def build_tiny_model(arch: str, chat_template: bool = True):
    from introspect_mech.models import wrap

    tok = make_tiny_tokenizer(chat_template=chat_template)
    hf = build_tiny_hf(arch, tok)
    return wrap(hf, tok, name=f"tiny-{arch}", attention=True, source=f"tiny:{arch}")


@lru_cache(maxsize=None)
def _cached_tiny_model(arch: str, chat_template: bool = True):
    return build_tiny_model(arch, chat_template=chat_template)


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny_model(request):
    """A wrapped tiny random model, one per architecture (ids: llama, gemma3, qwen2, gpt2)."""
    return _cached_tiny_model(request.param)


@pytest.fixture(scope="session", params=ALL_TINY_ARCHS)
def tiny_model_any(request):
    """``tiny_model`` over all nine architectures (ids: the four above, then mistral, qwen3, gemma2, phi3, olmo2)."""
    return _cached_tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_model_of():
    """``tiny_model_of("gemma3")``: the same session-wide tiny model, for tests about one architecture."""
    return _cached_tiny_model


@pytest.fixture(scope="session")
def tiny_raw_model():
    """A tiny Llama-shaped model whose tokenizer has no chat template (raw 'Human:/Assistant:' prompts)."""
    return _cached_tiny_model("llama", chat_template=False)


@pytest.fixture
def single_thread():
    """Run a test with one torch thread (restored afterwards).

    On tiny tensors, intra-op threads only add synchronisation; when other processes load the
    CPU, their spin-waiting made the tiny tier ~20x slower (86 s instead of 4 s on 2 cores).
    Tiny-tier modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer(chat_template=True)


@pytest.fixture
def tiny_raw_tokenizer():
    return make_tiny_tokenizer(chat_template=False)


# ---- test tiers -------------------------------------------------------------------------------------
# `make test-fast` (-m "not integration and not browser"): tiny random models, no real model, no browser;
# `make test-real` (-m "integration and not browser"): the real embedded model; `make test-browser` (-m browser):
# pages rendered in headless Chromium. A test that takes a real-model fixture must be marked `integration`, or
# the fast tier would load the real model behind its name; collection stops on such a test.
REAL_FIXTURES = frozenset({"smol", "smol_eager", "smol_vectors"})


def unmarked_real_tests(items) -> list[str]:
    """Test ids that use a real-model fixture without the ``integration`` marker."""
    return [it.nodeid for it in items if REAL_FIXTURES & set(getattr(it, "fixturenames", ()))
            and it.get_closest_marker("integration") is None]


def pytest_collection_modifyitems(config, items):
    bad = unmarked_real_tests(items)
    if bad:
        raise pytest.UsageError("tests that use the real model must be marked integration (the fast tier would "
                                "load it): " + ", ".join(bad[:10]))
