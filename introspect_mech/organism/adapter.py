"""The organism's adapter artefact: LoRA weights as safetensors beside a JSON of everything needed to trust them.

``adapter.safetensors`` holds the LoRA matrices (peft's state-dict names); ``adapter.json``
holds the base model's fingerprint (an adapter refuses to load on another base), the LoRA
shape, the data recipe, the training hyper-parameters, the concept split, the loss curve and
the training time. Loading merges the LoRA update into the base weights, so the organism is
a plain model to every other module (nnsight traces, generation, analyses), and its
fingerprint differs from the base model's: runs of the two never mix in one results store.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ArtifactError, ConfigError, MissingFileError

if TYPE_CHECKING:
    from ..models import Model

WEIGHTS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
FORMAT = "introspect_mech.organism.adapter/1"


@dataclass
class LoraSpec:
    """Where and how big the LoRA update is. ``layers``: decoder layers adapted (others stay base)."""

    rank: int = 16
    alpha: float = 32.0
    layers: list[int] = field(default_factory=list)
    target_modules: list[str] = field(default_factory=list)

    def validate(self, n_layers: int) -> None:
        if self.rank < 1 or not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"LoRA rank must be >= 1 and alpha > 0, got rank {self.rank}, alpha {self.alpha}")
        if not self.layers or any(not 0 <= L < n_layers for L in self.layers):
            raise ConfigError(f"LoRA layers {self.layers} must be a non-empty subset of 0..{n_layers - 1}")
        if not self.target_modules:
            raise ConfigError("LoRA needs at least one target module name (e.g. q_proj)")

    def peft_config(self, arch: Any) -> Any:
        from peft import LoraConfig

        pattern = arch.layout.layers.split(".")[-1]
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, bias="none",
                          target_modules=list(self.target_modules), layers_to_transform=list(self.layers),
                          layers_pattern=pattern, init_lora_weights=True)


def linear_module_names(model: Model) -> list[str]:
    """Names (last path component) of the linear maps inside a decoder layer: LoRA's default targets."""
    names = []
    for name, mod in model.arch.layer(model.hf, 0).named_modules():
        if name and (isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"):
            names.append(name.split(".")[-1])
    if not names:
        raise ConfigError("found no linear layers inside the decoder blocks to adapt")
    return sorted(set(names))


def attach_lora(model: Model, spec: LoraSpec) -> Any:
    """Wrap ``model.hf`` with fresh LoRA layers in place (peft); returns the ``PeftModel``.

    The base weights are frozen; ``unload()`` on the result restores the original modules.
    The LoRA initialisation draws from torch's global RNG: seed it first for a reproducible run.
    """
    from peft import get_peft_model

    spec.validate(model.arch.n_layers)
    with _quiet_peft():
        return get_peft_model(model.hf, spec.peft_config(model.arch))


@contextmanager
def _quiet_peft():
    """peft 0.21 calls a transformers method that transformers 5 deprecated; nothing for us to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path).expanduser()
    if p.is_dir() or p.suffix == "":
        return p / WEIGHTS_FILE, p / META_FILE
    if p.name in (WEIGHTS_FILE, META_FILE):
        return p.parent / WEIGHTS_FILE, p.parent / META_FILE
    raise ConfigError(f"{p} is not an adapter: pass the folder written by `introspect-mech organism train` "
                      f"(holding {WEIGHTS_FILE} and {META_FILE})")


def check_adapter_path(path: str | os.PathLike) -> tuple[Path, Path]:
    """Both files exist; raises ``MissingFileError`` naming the fix otherwise (cheap: call before loading a model)."""
    st, js = _paths(path)
    for f in (st, js):
        if not f.exists():
            raise MissingFileError(f"{f} does not exist; train an organism with "
                                   f"`introspect-mech organism train --out {st.parent}` or pass its folder")
    return st, js


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_adapter(out: str | os.PathLike, peft_model: Any, meta: dict) -> Path:
    """Write ``adapter.safetensors`` and ``adapter.json`` atomically into folder ``out``; returns the folder."""
    from safetensors.torch import save_file

    from ..store import atomic_write_json, atomic_write_with

    out = Path(out)
    st, js = out / WEIGHTS_FILE, out / META_FILE
    tensors = lora_state(peft_model)
    atomic_write_with(st, lambda p: save_file(tensors, str(p)))
    meta = {**meta, "format": FORMAT, "weights_sha256": file_sha256(st), "n_parameters": sum(t.numel() for t in tensors.values())}
    atomic_write_json(js, meta)
    return out


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """LoRA tensors and metadata, validated (format, checksum, LoRA spec)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st, js = check_adapter_path(path)
    try:
        meta = json.loads(js.read_text())
        tensors = load_file(str(st))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{st.parent} holds a corrupt adapter ({exc}); re-train it with `introspect-mech organism train`") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "lora" not in meta or "base_model" not in meta:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{js} is not an organism adapter (format {got!r}, expected {FORMAT!r})")
    _check_meta(js, meta)
    if meta.get("weights_sha256") and meta["weights_sha256"] != file_sha256(st):
        raise ArtifactError(f"{st} does not match the checksum in {js} (mixed or damaged files); re-train the adapter")
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise ArtifactError(f"{st} holds NaN/inf weights; re-train the adapter")
    return tensors, meta


def _check_meta(js: Path, meta: dict) -> None:
    """The fields loading relies on have their types (a hand-edited or damaged adapter.json fails here, in one
    line, instead of deep inside peft)."""
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{js}: {what}; restore the adapter.json written by `introspect-mech organism train` "
                             "(or re-train the adapter)")

    base = meta["base_model"]
    if not isinstance(base, dict) or not isinstance(base.get("fingerprint"), str):
        raise bad("'base_model' must be an object with a 'fingerprint' string")
    lora = meta["lora"]
    fields = {"rank", "alpha", "layers", "target_modules"}
    if not isinstance(lora, dict) or set(lora) != fields:
        have = sorted(lora) if isinstance(lora, dict) else type(lora).__name__
        raise bad(f"'lora' must be an object with exactly {', '.join(sorted(fields))} (got {have})")
    if isinstance(lora["rank"], bool) or not isinstance(lora["rank"], int) \
            or isinstance(lora["alpha"], bool) or not isinstance(lora["alpha"], (int, float)):
        raise bad("'lora' rank must be an integer and alpha a number")
    if not isinstance(lora["layers"], list) or not all(isinstance(L, int) and not isinstance(L, bool)
                                                       for L in lora["layers"]):
        raise bad("'lora' layers must be a list of layer indices")
    if not isinstance(lora["target_modules"], list) or not all(isinstance(t, str) for t in lora["target_modules"]):
        raise bad("'lora' target_modules must be a list of module names")


def adapter_fingerprint(base_fingerprint: str, meta: dict) -> str:
    """The organism's model fingerprint: base fingerprint combined with the adapter weights' checksum."""
    return hashlib.sha256(f"{base_fingerprint}+{meta.get('weights_sha256', '')}".encode()).hexdigest()[:16]


def merge_adapter(hf_model: Any, arch: Any, tensors: dict[str, torch.Tensor], spec: LoraSpec) -> Any:
    """Merge LoRA weights into ``hf_model`` (in place); returns the plain HF model.

    The same arithmetic merges a freshly trained adapter and a loaded one, so a save/load round
    trip gives bit-identical logits (tested)."""
    from peft import get_peft_model, set_peft_model_state_dict

    with torch.random.fork_rng(devices=[]), _quiet_peft():  # peft's LoRA init would consume the caller's RNG
        pm = get_peft_model(hf_model, spec.peft_config(arch))
    try:
        result = set_peft_model_state_dict(pm, tensors)
    except RuntimeError as exc:  # size mismatch: the weights are not of the LoRA shape adapter.json declares
        first = str(exc).split("\n")[1].strip() if "\n" in str(exc) else str(exc)
        raise ArtifactError(f"adapter weights do not fit the LoRA shape its adapter.json declares ({first[:160]}); "
                            "restore the adapter's files from one training run, or re-train it") from None
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ArtifactError(f"adapter weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                            "was it trained on another architecture?")
    return pm.merge_and_unload()


def apply_adapter(hf_model: Any, arch: Any, path: str | os.PathLike, base_fingerprint: str) -> tuple[Any, dict]:
    """Load the adapter at ``path`` onto ``hf_model`` (merged); refuses one trained on another base model."""
    tensors, meta = read_adapter(path)
    want = meta["base_model"].get("fingerprint")
    if want != base_fingerprint:
        raise ArtifactError(f"adapter {path} was trained on base model {meta['base_model'].get('name')} "
                            f"(fingerprint {want}), not on this model (fingerprint {base_fingerprint}); "
                            "load it with the --model it was trained on, in a dtype that holds its weights "
                            "exactly (--dtype: weights rounded to another dtype are other weights)")
    spec = LoraSpec(**meta["lora"])
    spec.validate(arch.n_layers)
    return merge_adapter(hf_model, arch, tensors, spec), meta


def summary(meta: dict, path: str | os.PathLike) -> dict:
    """What a loaded model records about its adapter (kept small: it goes into every run manifest)."""
    return {"path": str(Path(path)), "name": meta.get("name", Path(path).name), "weights_sha256": meta.get("weights_sha256"),
            "base_fingerprint": meta["base_model"].get("fingerprint"), "lora": meta.get("lora")}


__all__ = ["LoraSpec", "adapter_fingerprint", "apply_adapter", "attach_lora", "check_adapter_path", "linear_module_names",
           "lora_state", "merge_adapter", "read_adapter", "save_adapter", "summary"]
