"""Injection specs: what to add to the residual stream, where, and how strongly.

An ``Injection`` is plain data (vector, layer, strength, token window, mode); the code
that applies it lives in ``interventions.py`` and is the same for a single forward
pass, for the prefill of a generation, and for every decoded token.

Strength follows the paper: a multiplier on the *raw* (unnormalised) concept vector.
Because that unit means different things on different models, every run also reports
the effective dose ``‖strength·v‖ / mean‖h‖`` at the injection layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import torch

from .errors import ConfigError, StrengthError, VectorError, WindowError

NO_END = 1 << 40  # "through every generated token"


@dataclass(frozen=True)
class Window:
    """Half-open range ``[start, end)`` of token positions in the *unpadded* sequence.

    Positions count from the row's first real token (left padding does not shift
    them); generated tokens continue the count, so ``Window(start=p)`` covers the
    prompt from ``p`` on *and* every generated token, ``Window(a, b)`` only prompt
    tokens ``a..b-1`` and ``Window.all()`` everything.
    """

    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        for name, v in (("start", self.start), ("end", self.end)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise WindowError(f"window {name} must be an int token position, got {v!r}")
        if self.start < 0:
            raise WindowError(f"window start {self.start} is negative; positions count from 0 (first real token)")
        if self.end is not None and self.end <= self.start:
            raise WindowError(f"window [{self.start}, {self.end}) is empty; end must be > start")

    @classmethod
    def all(cls) -> "Window":
        return cls(0, None)

    @classmethod
    def from_position(cls, start: int) -> "Window":
        return cls(start, None)

    @classmethod
    def span(cls, start: int, end: int) -> "Window":
        return cls(start, end)

    @property
    def end_or_inf(self) -> int:
        return NO_END if self.end is None else self.end

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions >= self.start) & (positions < self.end_or_inf)

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end}


Mode = Literal["add", "scale"]


MAX_STRENGTH = 1e4
"""The paper uses strengths 1-16; doses above ~10 make any model incoherent, and 1e300 overflows float32
into NaN. Anything above this bound is a typo, refused before a run starts."""


def check_strength(strength: float) -> float:
    if isinstance(strength, bool):
        raise StrengthError(f"strength must be a number, got {strength!r}")
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise StrengthError(f"strength must be a number, got {strength!r}") from None
    if not math.isfinite(s):
        raise StrengthError(f"strength {strength!r} is not finite; pass a real number such as 2 or 4")
    if s > MAX_STRENGTH:
        raise StrengthError(f"strength {s:g} is above {MAX_STRENGTH:g}; the paper uses 1-16 (the effective dose "
                            "of each run is reported) — pass a smaller strength")
    if s < 0:
        raise StrengthError(f"strength {s:g} is negative; strengths multiply the concept vector — for the "
                            "negated-vector control use Injection.negated() (CLI: --controls negated)")
    return s


def check_sweep_axes(layers: Sequence[Any], strengths: Sequence[Any]) -> None:
    """A sweep needs at least one layer and one strength, each listed once, each strength valid."""
    if not layers:
        raise ConfigError("no layers given; pass e.g. --layers 0.5,0.67 (indices or depth fractions)")
    if not strengths:
        raise ConfigError("no strengths given; pass e.g. --strengths 2,4,8")
    seen: list[float] = []
    for s in strengths:
        v = check_strength(s)
        if v in seen:
            raise ConfigError(f"strength {v:g} is listed twice; list each strength once")
        seen.append(v)


def check_vector(vector: torch.Tensor, d_model: int | None = None, what: str = "vector") -> torch.Tensor:
    if not isinstance(vector, torch.Tensor):
        raise VectorError(f"{what} must be a torch.Tensor, got {type(vector).__name__}")
    if vector.ndim != 1:
        raise VectorError(f"{what} must be 1-D [d_model], got shape {tuple(vector.shape)}")
    if d_model is not None and vector.shape[0] != d_model:
        raise VectorError(
            f"{what} has dimension {vector.shape[0]} but the model's d_model is {d_model}: "
            "it was extracted from another model — re-extract it with `introspect-mech vectors --model ...`"
        )
    if not torch.isfinite(vector).all():
        raise VectorError(f"{what} contains NaN or inf values")
    return vector


@dataclass(frozen=True, eq=False)
class Injection:
    """Add ``strength * vector`` (mode ``add``) or multiply by ``strength`` (mode ``scale``) at ``layer``'s output.

    ``layer`` may be an index or a depth fraction (resolved against the model).
    ``label`` is free text carried into records (e.g. the concept word or "random").
    """

    vector: torch.Tensor | None
    layer: int | float
    strength: float = 1.0
    window: Window = field(default_factory=Window.all)
    mode: Mode = "add"
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "strength", check_strength(self.strength))
        if self.mode not in ("add", "scale"):
            raise ConfigError(f"unknown injection mode {self.mode!r}; use 'add' or 'scale'")
        if self.mode == "add":
            if self.vector is None:
                raise VectorError("an 'add' injection needs a vector")
            check_vector(self.vector)
        if not isinstance(self.window, Window):
            raise WindowError(f"window must be a Window, got {type(self.window).__name__}")

    # ---- controls ---------------------------------------------------------------
    def negated(self) -> "Injection":
        """Same injection with ``-vector`` (control: is it the direction or any perturbation?)."""
        if self.vector is None:
            raise VectorError("a 'scale' injection has no vector to negate")
        return replace(self, vector=-self.vector, label=f"-{self.label}" if self.label else "negated")

    def random_direction(self, seed: int) -> "Injection":
        """Same injection with a random direction of the same norm (the paper's random-vector control)."""
        if self.vector is None:
            raise VectorError("a 'scale' injection has no vector to norm-match")
        return replace(self, vector=random_like(self.vector, seed), label=f"random:{seed}")

    @classmethod
    def scaling(cls, layer: int | float, factor: float, window: Window | None = None, label: str = "scale") -> "Injection":
        """Scale the model's own activations by ``factor`` (control: is it just 'bigger'?)."""
        return cls(None, layer, factor, window or Window.all(), "scale", label)

    def describe(self) -> dict:
        return {
            "layer": self.layer,
            "strength": self.strength,
            "window": self.window.to_dict(),
            "mode": self.mode,
            "label": self.label,
            "vector_norm": None if self.vector is None else float(self.vector.float().norm()),
        }


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian random direction with exactly ``vector``'s L2 norm, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(vector.shape[0], generator=g, dtype=torch.float64)
    r = r / r.norm() * vector.double().norm()
    return r.to(vector.dtype)
