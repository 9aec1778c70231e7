"""One accessor layer over decoder-only architectures.

Every other module asks *this* module where the residual stream, the attention block
and the per-head output projection live, so that experiments never spell out
``model.model.layers`` or ``transformer.h``. The layout is resolved once, when a
model is loaded, and validated there (a model we cannot map fails at load time with
a message, not in the middle of a sweep).

Shapes come from the config and are GQA-safe: ``n_kv_heads`` may be smaller than
``n_heads``, and ``head_dim`` is read from the config when it is given explicitly
(Gemma 2/3 and Qwen3 set it independently of ``d_model / n_heads``). Load-time validation
checks them against the weights (o_proj's input is split into ``n_heads × head_dim`` per-head
outputs, so a wrong ``head_dim`` would silently mis-slice every head).

Blocks differ in how they write to the residual stream (``BlockLayout``): pre-norm blocks
(Llama, Mistral, Qwen2/3, Phi-3, GPT-2) add the attention and MLP outputs themselves; Gemma 2/3
("sandwich" norms) and OLMo-2 (post-norms) add the *normed* outputs. The accessor layer returns
the module whose output is each sub-block's residual write, so that recorded attention/MLP
writes add up to the layer's residual change for every verified layout, and analyses that rely
on that sum call ``Architecture.require_additive_blocks`` (which refuses the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ArchitectureError, LayerError


@dataclass(frozen=True)
class ModuleLayout:
    """Dotted paths (relative to the causal-LM root) of the modules we intervene on."""

    layers: str  # the ModuleList of decoder blocks
    attn: str  # attribute of a block: the attention module
    o_proj: str  # attribute of the attention module: the output projection
    final_norm: str  # the norm applied after the last block
    embed: str  # token embedding
    mlp: str = "mlp"  # attribute of a block: the MLP


@dataclass(frozen=True)
class BlockLayout:
    """How a decoder block writes to the residual stream.

    ``attn_write`` / ``mlp_write`` name the block attribute whose output is the attention / MLP
    sub-block's write to the residual stream ("" means the attention / MLP module itself).
    ``additive`` is True when ``residual_L − residual_{L−1} = attention write + MLP write``
    exactly (checked for each verified model type by tests/test_interventions_tiny.py).
    """

    name: str
    attn_write: str = ""
    mlp_write: str = ""
    additive: bool = True
    note: str = ""


PRE_NORM = BlockLayout("pre-norm", note="h += attn(norm(h)); h += mlp(norm(h))")
PARALLEL = BlockLayout("parallel", note="h += attn(norm1(h)) + mlp(norm2(h))")
SANDWICH_NORM = BlockLayout("sandwich-norm", "post_attention_layernorm", "post_feedforward_layernorm",
                            note="h += post_norm(attn(norm(h))); h += post_norm(mlp(norm(h)))")
POST_NORM = BlockLayout("post-norm", "post_attention_layernorm", "post_feedforward_layernorm",
                        note="h += post_norm(attn(h)); h += post_norm(mlp(h))")
POST_LN = BlockLayout("post-LN", additive=False,
                      note="h = norm(h + attn(h)): the norm after the residual sum mixes the two writes")
UNVERIFIED = BlockLayout("unverified", additive=False,
                         note="no test has checked how this model type's blocks write to the residual stream")

# Model types whose block layout is known and checked by a tiny-model test (exact decomposition).
BLOCK_LAYOUTS: dict[str, BlockLayout] = {
    "llama": PRE_NORM, "mistral": PRE_NORM, "qwen2": PRE_NORM, "qwen3": PRE_NORM, "phi3": PRE_NORM,
    "gpt2": PRE_NORM,
    "gemma2": SANDWICH_NORM, "gemma3_text": SANDWICH_NORM,
    "gemma3": SANDWICH_NORM,  # the multimodal wrapper: the same Gemma3DecoderLayer as gemma3_text
    "olmo2": POST_NORM,
}


def block_layout_of(model_type: str, config: Any = None) -> BlockLayout:
    """The ``BlockLayout`` of a model type (``UNVERIFIED`` when no test covers it).

    GPT-NeoX and OPT depend on the config: NeoX's parallel and sequential residuals both add
    up; OPT with ``do_layer_norm_before=False`` (OPT-350m) normalizes after the residual sum."""
    if model_type == "gpt_neox":
        return PARALLEL if _cfg(config, "use_parallel_residual", default=True) else PRE_NORM
    if model_type == "opt":
        return PRE_NORM if _cfg(config, "do_layer_norm_before", default=True) else POST_LN
    return BLOCK_LAYOUTS.get(model_type, UNVERIFIED)


# Ordered from most to least common; the first layout whose paths all exist wins.
KNOWN_LAYOUTS: tuple[ModuleLayout, ...] = (
    ModuleLayout("model.layers", "self_attn", "o_proj", "model.norm", "model.embed_tokens"),
    ModuleLayout("model.language_model.layers", "self_attn", "o_proj", "model.language_model.norm",
                 "model.language_model.embed_tokens"),
    ModuleLayout("transformer.h", "attn", "c_proj", "transformer.ln_f", "transformer.wte"),
    ModuleLayout("gpt_neox.layers", "attention", "dense", "gpt_neox.final_layer_norm", "gpt_neox.embed_in"),
    ModuleLayout("model.decoder.layers", "self_attn", "out_proj", "model.decoder.final_layer_norm",
                 "model.decoder.embed_tokens", "fc2"),
)


def _get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _has_path(root: Any, path: str) -> bool:
    try:
        _get_path(root, path)
        return True
    except AttributeError:
        return False


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    """First attribute of ``config`` (or its ``text_config``) among ``names`` that is set."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for name in names:
            value = getattr(cfg, name, None)
            if value is not None:
                return value
    return default


def _io_features(module: Any) -> tuple[int, int] | None:
    """(input width, output width) of a Linear or a GPT-2 ``Conv1D``; None for anything else."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "nx") and hasattr(module, "nf"):  # Conv1D stores [in, out]
        return int(module.nx), int(module.nf)
    return None


def parse_layer(layer: int | float | str, n_layers: int | None = None) -> int | float:
    """A layer as given (an index, a depth fraction in [0, 1], or their text) as an int or a float, checked
    for form only; ``Architecture.resolve_layer`` checks the index against the model. Why apart: commands
    check their layer options with it before the model (and so the layer count) is loaded."""
    if isinstance(layer, str):
        text = layer.strip()
        try:
            layer = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise LayerError(f"layer {layer!r} is neither an integer index nor a depth fraction like 0.67") from None
    if isinstance(layer, bool):
        raise LayerError("layer must be an int index or a float depth fraction, not a bool")
    if isinstance(layer, float) and (layer != layer or not 0.0 <= layer <= 1.0):
        index = f"an integer index 0..{n_layers - 1}" if n_layers is not None else "an integer index"
        raise LayerError(f"depth fraction {layer} is outside [0, 1]; pass a fraction like 0.67 or {index}")
    return layer


@dataclass(frozen=True)
class Architecture:
    """Shapes and module paths of one model; the only place that knows them."""

    model_type: str
    layout: ModuleLayout
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    block: BlockLayout | None = None  # None: looked up from model_type (``block_layout_of``)

    def __post_init__(self) -> None:
        if self.block is None:
            object.__setattr__(self, "block", block_layout_of(self.model_type))

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_model(cls, module: Any, config: Any) -> "Architecture":
        """Resolve the layout of a torch module (or an nnsight envoy of one) and validate it."""
        layout = next(
            (
                lay
                for lay in KNOWN_LAYOUTS
                if _has_path(module, lay.layers) and _has_path(module, lay.final_norm)
            ),
            None,
        )
        if layout is None:
            raise ArchitectureError(
                f"introspect_mech does not know where the decoder layers of {type(module).__name__} "
                f"(model_type={getattr(config, 'model_type', '?')!r}) are. Known layouts: "
                + ", ".join(lay.layers for lay in KNOWN_LAYOUTS)
                + ". Add a ModuleLayout to introspect_mech.arch.KNOWN_LAYOUTS."
            )
        n_layers = int(_cfg(config, "num_hidden_layers", "n_layer", "num_layers"))
        d_model = int(_cfg(config, "hidden_size", "n_embd", "d_model"))
        n_heads = int(_cfg(config, "num_attention_heads", "n_head"))
        n_kv = int(_cfg(config, "num_key_value_heads", "n_kv_head", default=n_heads))
        head_dim = int(_cfg(config, "head_dim", default=d_model // n_heads))
        model_type = str(getattr(config, "model_type", "unknown"))
        arch = cls(model_type, layout, n_layers, d_model, n_heads, n_kv, head_dim, block_layout_of(model_type, config))
        arch._validate(module)
        return arch

    def _validate(self, module: Any) -> None:
        """Check the module tree and the weight shapes against what the config says.

        Why at load time: per-head outputs are o_proj's input reshaped to ``n_heads × head_dim``,
        and recorded attention/MLP writes come from the block layout's modules; a model whose
        weights disagree with its config, or whose block lacks a module its layout needs, must
        fail here with the reason, not produce mis-sliced heads in the middle of a sweep."""
        layers = _get_path(module, self.layout.layers)
        if len(layers) != self.n_layers:
            raise ArchitectureError(
                f"config says {self.n_layers} layers but {self.layout.layers} holds {len(layers)}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ArchitectureError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        heads = f"{self.n_heads} heads × head_dim {self.head_dim} = {self.n_heads * self.head_dim}"
        for i, block in enumerate(layers):
            where = f"{self.layout.layers}[{i}]"
            if not _has_path(block, self.layout.attn) or not _has_path(block, f"{self.layout.attn}.{self.layout.o_proj}"):
                raise ArchitectureError(
                    f"block {type(block).__name__} ({where}) has no {self.layout.attn}.{self.layout.o_proj}; "
                    "cannot record per-head outputs for this architecture"
                )
            if not _has_path(block, self.layout.mlp):
                raise ArchitectureError(f"block {type(block).__name__} ({where}) has no {self.layout.mlp!r} module; "
                                        "MLP recording and ablation need it")
            for part, attr in (("attention", self.block.attn_write), ("MLP", self.block.mlp_write)):
                if attr and not _has_path(block, attr):
                    raise ArchitectureError(
                        f"model_type {self.model_type!r} has {self.block.name} blocks, whose {part} write to the "
                        f"residual stream is the output of {attr!r}, but {type(block).__name__} ({where}) has no such "
                        "module; fix BLOCK_LAYOUTS in introspect_mech.arch for this model type")
            attn = _get_path(block, self.layout.attn)
            io = _io_features(getattr(attn, self.layout.o_proj))
            if io is not None and io[0] != self.n_heads * self.head_dim:
                raise ArchitectureError(
                    f"{where}.{self.layout.attn}.{self.layout.o_proj} takes {io[0]} inputs but the config gives "
                    f"{heads}: per-head outputs would be mis-sliced; set head_dim / num_attention_heads to match "
                    "the weights")
            if io is not None and io[1] != self.d_model:
                raise ArchitectureError(f"{where}.{self.layout.attn}.{self.layout.o_proj} writes {io[1]} features but "
                                        f"the config's hidden size is {self.d_model}")
            if self.block is not UNVERIFIED:
                self._validate_qkv(attn, where)

    def _validate_qkv(self, attn: Any, where: str) -> None:
        """q/k/v widths of verified model types, separate (q_proj, k_proj, v_proj) or fused
        (Phi-3's ``qkv_proj``, GPT-2's ``c_attn``: [q | k | v] along the output). Only shape checks: nothing in the
        toolkit reads q, k or v separately (QK features are derived from attention weights)."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        fused = q + 2 * kv
        expected = {"q_proj": q, "k_proj": kv, "v_proj": kv,
                    "qkv_proj": fused, "c_attn": fused, "query_key_value": fused}
        for name, width in expected.items():
            io = _io_features(getattr(attn, name, None))
            if io is not None and io[1] != width:
                raise ArchitectureError(
                    f"{where}.{self.layout.attn}.{name} has {io[1]} outputs but the config ({self.n_heads} query heads, "
                    f"{self.n_kv_heads} key/value heads, head_dim {self.head_dim}) implies {width}; the config does "
                    "not describe these weights")

    def require_additive_blocks(self, analysis: str) -> None:
        """Refuse ``analysis`` (one that splits a layer's residual change into attention + MLP
        writes) on a block layout where the two writes do not add up to that change."""
        if not self.block.additive:
            ok = sorted([t for t, b in BLOCK_LAYOUTS.items() if b.additive] + ["gpt_neox", "opt (pre-LN)"])
            raise ArchitectureError(
                f"{analysis} splits each layer's residual change into attention and MLP writes, but model_type "
                f"{self.model_type!r} has {self.block.name} blocks ({self.block.note}); supported model types: "
                f"{', '.join(ok)} (a new one needs a tested BlockLayout in introspect_mech.arch.BLOCK_LAYOUTS)")

    # ---- layer indices --------------------------------------------------------------
    def resolve_layer(self, layer: int | float | str) -> int:
        """Turn an index (negative counts from the end) or a depth fraction in (0, 1) into an index.

        A float such as ``0.67`` means "two thirds of the way through the network", the
        convention of the paper; it maps to ``round(f * (n_layers - 1))``.
        """
        layer = parse_layer(layer, self.n_layers)
        if isinstance(layer, float):
            return int(round(layer * (self.n_layers - 1)))
        idx = int(layer)
        if idx < 0:
            idx += self.n_layers
        if not 0 <= idx < self.n_layers:
            raise LayerError(
                f"layer {layer} is out of range: this model has {self.n_layers} layers (valid: 0..{self.n_layers - 1}, "
                f"negative indices from the end, or a depth fraction like 0.67)"
            )
        return idx

    def resolve_layers(self, layers: Any) -> list[int]:
        """``None``/"all" → every layer; otherwise a list (or comma string) of indices/fractions."""
        if layers is None or layers == "all":
            return list(range(self.n_layers))
        if isinstance(layers, str):
            layers = [p for p in layers.split(",") if p.strip()]
        if isinstance(layers, (int, float)):
            layers = [layers]
        return sorted({self.resolve_layer(layer) for layer in layers})

    # ---- module access (works on torch modules and nnsight envoys alike) -------------
    def layers(self, root: Any) -> Any:
        return _get_path(root, self.layout.layers)

    def layer(self, root: Any, i: int) -> Any:
        return self.layers(root)[i]

    def attn(self, root: Any, i: int) -> Any:
        return _get_path(self.layer(root, i), self.layout.attn)

    def o_proj(self, root: Any, i: int) -> Any:
        return getattr(self.attn(root, i), self.layout.o_proj)

    def mlp(self, root: Any, i: int) -> Any:
        return _get_path(self.layer(root, i), self.layout.mlp)

    def attn_write(self, root: Any, i: int) -> Any:
        """The module whose output is the attention sub-block's write to the residual stream:
        the attention module (pre-norm), or its post-norm (Gemma 2/3, OLMo-2)."""
        return _get_path(self.layer(root, i), self.block.attn_write) if self.block.attn_write else self.attn(root, i)

    def mlp_write(self, root: Any, i: int) -> Any:
        """The module whose output is the MLP sub-block's write to the residual stream (see ``attn_write``)."""
        return _get_path(self.layer(root, i), self.block.mlp_write) if self.block.mlp_write else self.mlp(root, i)

    def final_norm(self, root: Any) -> Any:
        return _get_path(root, self.layout.final_norm)

    def embed(self, root: Any) -> Any:
        return _get_path(root, self.layout.embed)
