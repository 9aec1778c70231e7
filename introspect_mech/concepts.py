"""Concept vectors: word × layer → direction in the residual stream.

Mean-subtraction exactly as the paper: render ``Tell me about {word}`` (word
lowercased) as a user turn with the generation prompt, read the residual at the last
token (the end of the generation prompt; ``Assistant:`` in the raw format), and
subtract the mean of the same reading over the baseline words. All words (concepts
and baseline) and all layers come from one batched pass per chunk of prompts, so a
layer sweep never re-extracts.

Artefacts follow the SAELens convention: ``NAME.safetensors`` (tensors) beside
``NAME.json`` (metadata: model fingerprint, method, prompt format, baseline hash, ...).
Loading checks the metadata against the model, so a vector from another model cannot
be injected by accident.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import protocol
from .errors import ArtifactError, ConceptError, MissingFileError, VectorError
from .execution import forward
from .models import dtype_name
from .prompts import RenderedPrompt, Turn, render
from .record import RecordSpec
from .store import atomic_write_with

if TYPE_CHECKING:
    from .models import Model

FORMAT_VERSION = 1


MAX_WORD_CHARS = 100  # longest concept phrase accepted: every extraction prompt of a batch is padded to the longest


def check_word(word: Any) -> str:
    """A concept word must be a non-empty string of bounded length; returns it stripped."""
    if not isinstance(word, str):
        raise ConceptError(f"concept word must be a string, got {type(word).__name__} {word!r}")
    w = word.strip()
    if not w:
        raise ConceptError("concept word is empty; pass a word such as 'dust' or one of the paper's 50 concept words")
    if len(w) > MAX_WORD_CHARS:
        raise ConceptError(f"concept {w[:20]!r}... is {len(w)} characters long; a concept is a word or short phrase "
                           f"of at most {MAX_WORD_CHARS} characters")
    try:
        w.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the command line arrive as lone surrogates
        raise ConceptError(f"concept {w.encode('utf-8', 'backslashreplace').decode()!r} is not valid text (bytes "
                           "that are not UTF-8); type the word in UTF-8") from None
    return w


def _artefact_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``NAME`` → (NAME, NAME.safetensors, NAME.json). The suffixes are appended, never substituted, so that
    ``run.v1`` and ``run.v2`` stay two artefacts (``Path.with_suffix`` would map both to ``run.safetensors``)."""
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base, base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def concept_prompt(tokenizer: Any, word: str, fmt: str = "auto", system: str = "auto") -> RenderedPrompt:
    """The paper's extraction prompt for one word, lowercased, with the generation prompt."""
    template = protocol.load_protocol()["concept_vector"]["prompt_turns"][0]["content"]
    return render(tokenizer, [Turn("user", template.format(word=check_word(word).lower()))], fmt=fmt, system=system)


def _hash_list(items: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


@dataclass
class ConceptVectors:
    """Vectors ``[n_words, n_layers, d_model]`` with the metadata needed to trust them later."""

    words: list[str]
    layers: list[int]
    vectors: torch.Tensor
    meta: dict = field(default_factory=dict)
    mean_norms: torch.Tensor | None = None  # [n_layers] mean ‖h‖ of the baseline prompts' tokens (dose reference)

    def __post_init__(self) -> None:
        if self.vectors.shape[:2] != (len(self.words), len(self.layers)):
            raise VectorError(f"vectors of shape {tuple(self.vectors.shape)} do not match "
                              f"{len(self.words)} words × {len(self.layers)} layers")
        self._index = {w.lower(): i for i, w in enumerate(self.words)}

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[-1])

    def _word_index(self, word: str) -> int:
        w = check_word(word).lower()
        if w not in self._index:
            raise ConceptError(f"no vector for {word!r}; extracted words: {', '.join(self.words[:8])}"
                               f"{'...' if len(self.words) > 8 else ''}")
        return self._index[w]

    def _layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise VectorError(f"no vector at layer {layer}; extracted layers: {self.layers}")
        return self.layers.index(layer)

    def get(self, word: str, layer: int) -> torch.Tensor:
        return self.vectors[self._word_index(word), self._layer_index(layer)]

    def __contains__(self, word: object) -> bool:
        """``"dust" in vecs``: whether a vector was extracted for the word (case-insensitive), without the
        error ``get`` raises — for callers that choose words by what a file holds."""
        return isinstance(word, str) and word.strip().lower() in self._index

    def stack(self, words: Sequence[str] | None = None) -> torch.Tensor:
        """``[K, n_layers, d]`` for ``RecordSpec(cosine_with=...)`` (layers must be all model layers)."""
        idx = [self._word_index(w) for w in (words or self.words)]
        return self.vectors[idx]

    def norms(self) -> torch.Tensor:
        """‖v‖ per word and layer: ``[n_words, n_layers]``."""
        return self.vectors.float().norm(dim=-1)

    def scaling_factor(self, layer: int, strength: float) -> float:
        """The activation scale of the "scaling" control at ``layer``: ``1 + strength · mean‖v‖ / mean‖h‖``.

        Why this factor: scaling the model's own activations by it perturbs the residual by as much,
        on average, as injecting one of these concept vectors at ``strength`` (mean over the words
        here; ‖h‖ from the baseline prompts), so an "anomaly" signal that is only "bigger" shows up
        on this control too."""
        if self.mean_norms is None:
            raise VectorError("these vectors carry no mean residual norms (mean_norms); re-extract them")
        i = self._layer_index(layer)
        mean_h = float(self.mean_norms[i])
        mean_v = float(self.norms()[:, i].mean())
        return 1 + strength * mean_v / mean_h

    # ---- persistence ------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically; returns the safetensors path."""
        base, st, js = _artefact_paths(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"vectors": self.vectors.contiguous().float()}
        if self.mean_norms is not None:
            tensors["mean_norms"] = self.mean_norms.contiguous().float()
        cfg = {"format_version": FORMAT_VERSION, "words": self.words, "layers": self.layers, **self.meta}
        atomic_write_with(st, lambda p: save_file(tensors, str(p)))
        atomic_write_with(js, lambda p: p.write_text(json.dumps(cfg, indent=1)))
        return st

    @classmethod
    def load(cls, path: str | os.PathLike, model: Model = None) -> "ConceptVectors":
        """Load and validate; with ``model``, refuse vectors extracted from another model."""
        base, st, js = _artefact_paths(path)
        for f in (st, js):
            if not f.exists():
                raise MissingFileError(f"{f} does not exist; extract vectors with `introspect-mech vectors --out {base}`")
        try:
            tensors = load_file(str(st))
            cfg = json.loads(js.read_text())
        except (SafetensorError, OSError, ValueError) as exc:
            raise ArtifactError(f"{st} / {js} is corrupt ({exc}); delete both and re-extract with `introspect-mech vectors`") from exc
        if not isinstance(cfg, dict) or "vectors" not in tensors or "words" not in cfg or "layers" not in cfg:
            raise ArtifactError(f"{st} is not a concept-vector file (missing 'vectors' / 'words' / 'layers')")
        words, layers, vec = cfg["words"], cfg["layers"], tensors["vectors"]
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise ArtifactError(f"{js}: 'words' must be a list of non-empty strings; re-extract the vectors")
        if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise ArtifactError(f"{js}: 'layers' must be a list of integer layer indices, got {layers!r:.80}; "
                                "re-extract the vectors")
        if not vec.is_floating_point() or vec.ndim != 3:
            raise ArtifactError(f"{st}: 'vectors' must be a floating-point [words, layers, d_model] tensor, got "
                                f"{vec.dtype} of shape {tuple(vec.shape)}; re-extract the vectors")
        if not torch.isfinite(vec.float().norm(dim=-1)).all():
            raise ArtifactError(f"{st} holds NaN/inf values or vectors too large to have a finite norm; re-extract it")
        meta = {k: v for k, v in cfg.items() if k not in ("words", "layers", "format_version")}
        cv = cls(list(cfg["words"]), list(cfg["layers"]), tensors["vectors"], meta, tensors.get("mean_norms"))
        if not torch.isfinite(cv.vectors).all():
            raise ArtifactError(f"{st} holds NaN/inf values; re-extract it")
        if model is not None:
            cv.check_model(model)
        return cv

    def check_model(self, model: Model) -> None:
        if self.d_model != model.arch.d_model:
            raise VectorError(f"vectors have d_model {self.d_model} but {model.name} has {model.arch.d_model}; "
                              "re-extract them for this model")
        fp = self.meta.get("model_fingerprint")
        if fp is not None and fp != model.fingerprint:
            raise ArtifactError(f"vectors were extracted from model fingerprint {fp} "
                                f"({self.meta.get('model_name')}), not from {model.name} ({model.fingerprint}); "
                                "re-extract them for this model")


def _last_token_residuals(model: Model, prompts: list[RenderedPrompt], layers: list[int], batch_size: int):
    """Residual at the last prompt token for every layer: ``[n_prompts, n_layers, d]``, plus mean token norms."""
    rows, norm_sum, norm_count = [], torch.zeros(len(layers), dtype=torch.float64), 0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        rec = forward(model, chunk, record=RecordSpec(layers=layers, residual=True, logits=False))
        res = torch.stack([rec.residual[L] for L in layers], dim=2)  # [B, T, nL, d]
        rows.append(res[:, -1].float())
        # mean ‖h‖ over real tokens except the first (attention-sink outlier): the dose reference
        mask = (rec.batch.positions(rec.batch.width, rec.batch.width) >= 1).double()  # [B, T]
        norms = res.double().norm(dim=-1)  # [B, T, nL]
        norm_sum += (norms * mask[..., None]).sum((0, 1))
        norm_count += int(mask.sum())
    return torch.cat(rows), (norm_sum / max(norm_count, 1)).float()


def _cache_path(model: Model, key: dict) -> Path:
    from .models import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "vectors" / f"{model.fingerprint}-{digest}"


def extract_concept_vectors(
    model: Model,
    words: Sequence[str] | None = None,
    *,
    layers: Any = None,
    baseline: Sequence[str] | None = None,
    dedupe_baseline: bool = False,
    fmt: str = "auto",
    system: str = "auto",
    batch_size: int = 64,
    cache: bool = True,
) -> ConceptVectors:
    """Mean-subtraction concept vectors for ``words`` (default: the paper's 50) at ``layers`` (default: all).

    ``baseline`` defaults to the paper's published 100-entry list (``protocol.baseline_words``);
    ``dedupe_baseline`` drops repeated words (case-insensitive) first. ``system`` is the system-turn
    choice (``prompts.render``). Both are recorded in the vectors' metadata and in the cache key."""
    from .prompts import check_system, resolve_system

    words = [check_word(w) for w in (protocol.concept_words() if words is None else words)]
    if not words:
        raise ConceptError("no concept words given")
    baseline = [check_word(w) for w in (protocol.baseline_words() if baseline is None else baseline)]
    if dedupe_baseline:
        seen: set[str] = set()
        baseline = [w for w in baseline if not (w.lower() in seen or seen.add(w.lower()))]
    if not baseline:
        raise ConceptError("the baseline word list is empty")
    check_system(system)
    layer_ids = model.arch.resolve_layers(layers)
    fmt_used = "chat" if (fmt == "chat" or (fmt == "auto" and model.has_chat_template)) else "raw"
    _, system_text = resolve_system(model.tokenizer, system, fmt_used)
    # the dtype is in the key although the fingerprint names it: cache entries from before it did (a bfloat16
    # load of a bfloat16-stored checkpoint then had float32's fingerprint) are not served
    key = {"v": FORMAT_VERSION, "method": "mean_subtraction", "words": [w.lower() for w in words],
           "baseline": _hash_list(w.lower() for w in baseline), "layers": layer_ids, "fmt": fmt_used,
           "system": system_text, "dtype": dtype_name(model.dtype)}
    path = _cache_path(model, key)
    if cache and _artefact_paths(path)[1].exists():
        try:
            cv = ConceptVectors.load(path, model)
            cv.meta["loaded_from_cache"] = str(path)
            return cv
        except (ArtifactError, VectorError):
            pass  # a stale or corrupt cache entry is simply recomputed
    prompts = [concept_prompt(model.tokenizer, w, fmt, system) for w in words + baseline]
    acts, mean_norms = _last_token_residuals(model, prompts, layer_ids, batch_size)
    concept_acts, base_acts = acts[: len(words)], acts[len(words):]
    vectors = concept_acts - base_acts.mean(0, keepdim=True)
    meta = {
        "method": "mean_subtraction",
        "model_name": model.name,
        "model_fingerprint": model.fingerprint,
        "model_dtype": key["dtype"],
        "prompt_format": fmt_used,
        "prompt_template": protocol.load_protocol()["concept_vector"]["prompt_turns"][0]["content"],
        "read_position": "last token of the rendered prompt (end of the generation prompt)",
        "word_case": "lower",
        "baseline_hash": key["baseline"],
        "baseline_size": len(baseline),
        "baseline_unique_words": len({w.lower() for w in baseline}),
        "baseline_deduplicated": bool(dedupe_baseline),
        "system_choice": system,
        "system_prompt": system_text,
        "protocol_hash": protocol.protocol_hash(),
    }
    cv = ConceptVectors([w.lower() for w in words], layer_ids, vectors, meta, mean_norms)
    if cache:
        cv.save(path)
    return cv


def extract_contrastive(
    model: Model,
    pairs: Sequence[tuple[Any, Any]],
    *,
    name: str,
    layers: Any = None,
    fmt: str = "auto",
    system: str = "auto",
    batch_size: int = 64,
) -> ConceptVectors:
    """A contrastive direction: mean last-token residual of the positive prompts minus the negative ones.

    Each prompt is a string (a user turn) or a list of turns; the vector is stored under ``name``.
    """
    name = check_word(name)
    if not pairs:
        raise ConceptError("contrastive extraction needs at least one (positive, negative) pair")

    def rp(x: Any) -> RenderedPrompt:
        turns = [Turn("user", x)] if isinstance(x, str) else x
        return render(model.tokenizer, turns, fmt=fmt, system=system)

    layer_ids = model.arch.resolve_layers(layers)
    pos = [rp(p) for p, _ in pairs]
    neg = [rp(n) for _, n in pairs]
    acts, mean_norms = _last_token_residuals(model, pos + neg, layer_ids, batch_size)
    vec = acts[: len(pos)].mean(0) - acts[len(pos):].mean(0)
    meta = {"method": "contrastive", "model_name": model.name, "model_fingerprint": model.fingerprint,
            "model_dtype": dtype_name(model.dtype), "prompt_format": pos[0].fmt, "n_pairs": len(pairs),
            "protocol_hash": protocol.protocol_hash(),
            "system_choice": system, "system_prompt": pos[0].system}
    return ConceptVectors([name.lower()], layer_ids, vec[None], meta, mean_norms)
