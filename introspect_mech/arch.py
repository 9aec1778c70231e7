"""One accessor layer over decoder-only architectures.

Every other module asks *this* module where the residual stream, the attention block
and the per-head output projection live, so that experiments never spell out
``model.model.layers`` or ``transformer.h``. The layout is resolved once, when a
model is loaded, and validated there (a model we cannot map fails at load time with
a message, not in the middle of a sweep).

Shapes come from the config and are GQA-safe: ``n_kv_heads`` may be smaller than
``n_heads``, and ``head_dim`` is read from the config when it is given explicitly
(Gemma 3 sets it independently of ``d_model / n_heads``).
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
        arch = cls(str(getattr(config, "model_type", "unknown")), layout, n_layers, d_model, n_heads, n_kv, head_dim)
        arch._validate(module)
        return arch

    def _validate(self, module: Any) -> None:
        layers = _get_path(module, self.layout.layers)
        if len(layers) != self.n_layers:
            raise ArchitectureError(
                f"config says {self.n_layers} layers but {self.layout.layers} holds {len(layers)}"
            )
        block = layers[0]
        if not _has_path(block, self.layout.attn) or not _has_path(block, f"{self.layout.attn}.{self.layout.o_proj}"):
            raise ArchitectureError(
                f"block {type(block).__name__} has no {self.layout.attn}.{self.layout.o_proj}; "
                "cannot record per-head outputs for this architecture"
            )
        if self.n_heads % self.n_kv_heads:
            raise ArchitectureError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    # ---- layer indices --------------------------------------------------------------
    def resolve_layer(self, layer: int | float | str) -> int:
        """Turn an index (negative counts from the end) or a depth fraction in (0, 1) into an index.

        A float such as ``0.67`` means "two thirds of the way through the network", the
        convention of the paper; it maps to ``round(f * (n_layers - 1))``.
        """
        if isinstance(layer, str):
            text = layer.strip()
            try:
                layer = float(text) if any(c in text for c in ".eE") else int(text)
            except ValueError:
                raise LayerError(f"layer {layer!r} is neither an integer index nor a depth fraction like 0.67") from None
        if isinstance(layer, bool):
            raise LayerError("layer must be an int index or a float depth fraction, not a bool")
        if isinstance(layer, float):
            if layer != layer or not 0.0 <= layer <= 1.0:
                raise LayerError(
                    f"depth fraction {layer} is outside [0, 1]; pass a fraction like 0.67 or an integer index "
                    f"0..{self.n_layers - 1}"
                )
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

    def write_norms(self, root: Any, i: int) -> tuple[Any, Any]:
        """Norms a block applies to its attention and MLP outputs *before* adding them to the residual
        (post-norm blocks: Gemma 2/3, OLMo 2), as ``(attention, mlp)``; ``(None, None)`` for pre-norm blocks.

        Why: on a post-norm block the residual change is ``norm_a(attn_out) + norm_m(mlp_out)``, so
        attributing it to the raw attention and MLP outputs is wrong. Recognised by a
        ``post_feedforward_layernorm`` (Llama's ``post_attention_layernorm`` is a *pre*-MLP norm)."""
        block = self.layer(root, i)
        if not hasattr(block, "post_feedforward_layernorm"):
            return None, None
        return getattr(block, "post_attention_layernorm", None), block.post_feedforward_layernorm

    def final_norm(self, root: Any) -> Any:
        return _get_path(root, self.layout.final_norm)

    def embed(self, root: Any) -> Any:
        return _get_path(root, self.layout.embed)
