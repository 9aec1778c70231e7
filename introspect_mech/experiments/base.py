"""What the paper's experiments share: config fields (prompt format, system turn, the layer × strength
sweep) and a protocol base that binds the model once.

Why a base: every protocol validated its config, resolved the system turn, resolved its layers and
took the model again in every method. Here the model is bound at construction (``self.model``), the
layers are resolved once into plain ``int``s, and a method handed another model refuses it (the runner
passes the model it runs, so an experiment built for one model cannot silently run on another).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..errors import ConfigError
from ..prompts import RenderedPrompt, Turn, check_system, render, resolve_system
from .options import SYSTEM_HELP, layer_list, opt, strength_list

if TYPE_CHECKING:
    from ..concepts import ConceptVectors
    from ..models import Model

PAPER_LAYERS = (0.33, 0.5, 0.67, 0.83)  # depth fractions of the README's sweeps


@dataclass
class PromptOptions:
    """How prompts are rendered: the chat template or the raw format, and the system turn."""

    fmt: str = field(default="auto", metadata=opt("prompt format", flag="--format", choices=("auto", "chat", "raw")))
    system: str = field(default="auto", metadata=opt(SYSTEM_HELP))

    def validate(self) -> None:
        check_system(self.system)


def strengths_field(default: Sequence[float]) -> Any:
    """The ``strengths`` field with an experiment's default (kept as written: ints stay ints, so a stored
    run's config, and the settings hash its resume checks, do not change)."""
    return field(default_factory=lambda: list(default),
                 metadata=opt("injection strengths (multipliers of the raw concept vector)", parse=strength_list))


@dataclass
class SweepOptions(PromptOptions):
    """A layer × strength sweep (layers as indices or depth fractions; strengths multiply the raw vector)."""

    layers: list[Any] = field(default_factory=lambda: list(PAPER_LAYERS),
                              metadata=opt("injection layers: indices or depth fractions", parse=layer_list))
    strengths: list[float] = strengths_field([1, 2, 4, 8, 16])

    def validate(self) -> None:
        from ..inject import check_sweep_axes

        super().validate()
        check_sweep_axes(self.layers, self.strengths)


def check_pairs(n: int, what: str = "--n-pairs", most: int = 50) -> None:
    if not 1 <= n <= most:
        raise ConfigError(f"{what} must be between 1 and {most} (the paper's pairs), got {n}")


class BoundExperiment:
    """Base of the paper's protocols (``runner.Experiment``): the model is bound at construction."""

    name: ClassVar[str]

    def __init__(self, model: Model, cfg: PromptOptions) -> None:
        cfg.validate()
        resolve_system(model.tokenizer, cfg.system, cfg.fmt)  # fails here, before any file is written
        self.model = model
        self.cfg = cfg
        self.n_layers = model.arch.n_layers

    def check_model(self, model: Model) -> None:
        """The runner passes the model it runs; it must be the one this experiment was built for."""
        if model is not self.model:
            raise ConfigError(f"{self.name} was built for {self.model.name}; run it with that model (build the "
                              "experiment again for another one)")

    def config(self) -> dict:
        return asdict(self.cfg)

    def render(self, turns: Sequence[Turn], **kwargs: Any) -> RenderedPrompt:
        return render(self.model.tokenizer, turns, fmt=self.cfg.fmt, system=self.cfg.system, **kwargs)

    def concept_vectors(self, words: Sequence[str], layers: Sequence[int] | None = None) -> ConceptVectors:
        """The paper's concept vectors of ``words`` on this model, with this experiment's prompt options (cached)."""
        from ..concepts import extract_concept_vectors

        return extract_concept_vectors(self.model, list(words), layers=None if layers is None else list(layers),
                                       fmt=self.cfg.fmt, system=self.cfg.system)


class SweepExperiment(BoundExperiment):
    """A protocol over a layer × strength sweep: layers resolved once, to ``int`` indices."""

    cfg: SweepOptions

    def __init__(self, model: Model, cfg: SweepOptions) -> None:
        super().__init__(model, cfg)
        self.layers: list[int] = model.arch.resolve_layers(cfg.layers)
        self.strengths: list[float] = [float(s) for s in cfg.strengths]

    def config(self) -> dict:
        d = super().config()
        d["layers"] = self.layers
        return d
