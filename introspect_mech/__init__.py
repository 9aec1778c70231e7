"""introspect_mech: test whether a language model notices and reports its own internal states.

Scientific basis: Lindsey (2025), *Emergent Introspective Awareness in Large Language
Models* (Transformer Circuits Thread). Inject a concept vector into the residual
stream and check whether the model's self-report tracks it.

The names below are imported on first use (PEP 562), so ``import introspect_mech`` and commands
that need no model (``report``, ``calibrate``, ``repair``, ``--help``) do not pay for importing
torch, transformers and nnsight (measured: ~2 s of a command's start-up on this project's machine).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("introspect_mech")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"

_EXPORTS = {
    "Architecture": "arch", "Batch": "batch", "make_batch": "batch", "IntrospectError": "errors",
    "Generation": "execution", "forward": "execution", "generate": "execution",
    "Injection": "inject", "Window": "inject", "random_like": "inject",
    "DirectionAblation": "interventions", "HeadAblation": "interventions", "MLPAblation": "interventions",
    "ResidualPatch": "interventions", "DEFAULT_MODEL": "models", "Model": "models", "load_model": "models",
    "wrap": "models", "RenderedPrompt": "prompts", "Turn": "prompts", "encode_text": "prompts", "render": "prompts",
    "steer": "steering",
    "RecordSpec": "record", "Recording": "record", "cosine_to": "record", "head_contributions": "record",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # submodules as attributes (introspect_mech.models, ...)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .arch import Architecture
    from .batch import Batch, make_batch
    from .errors import IntrospectError
    from .execution import Generation, forward, generate
    from .inject import Injection, Window, random_like
    from .interventions import DirectionAblation, HeadAblation, MLPAblation, ResidualPatch
    from .models import DEFAULT_MODEL, Model, load_model, wrap
    from .prompts import RenderedPrompt, Turn, encode_text, render
    from .record import RecordSpec, Recording, cosine_to, head_contributions
    from .steering import steer
