"""introspect_mech: test whether a language model notices and reports its own internal states.

Scientific basis: Lindsey (2025), *Emergent Introspective Awareness in Large Language
Models* (Transformer Circuits Thread). Inject a concept vector into the residual
stream and check whether the model's self-report tracks it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import verbosity as _verbosity

from .arch import Architecture
from .batch import Batch, make_batch
from .errors import IntrospectError
from .execution import Generation, forward, generate
from .inject import Injection, Window, random_like
from .interventions import DirectionAblation, HeadAblation, MLPAblation, ResidualPatch
from .models import DEFAULT_MODEL, Model, load_model, wrap
from .prompts import RenderedPrompt, Turn, encode_text, render
from .record import RecordSpec, Recording, cosine_to, head_contributions

_verbosity.install()  # quiet by default: see verbosity.py (--verbose / INTROSPECT_MECH_VERBOSE=1 shows all)

try:
    __version__ = version("introspect_mech")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"

__all__ = [
    "Architecture", "Batch", "DirectionAblation", "MLPAblation", "DEFAULT_MODEL", "Generation", "HeadAblation", "Injection", "IntrospectError", "Model",
    "RecordSpec", "Recording", "RenderedPrompt", "ResidualPatch", "Turn", "Window", "cosine_to", "encode_text",
    "forward", "generate", "head_contributions", "load_model", "make_batch", "random_like", "render", "wrap",
]
