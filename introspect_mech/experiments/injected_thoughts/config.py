"""Experiment 1's options: the sweep, the concepts and every control (defaults are the paper's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ... import protocol
from ...errors import ConfigError
from ..base import SweepOptions, strengths_field
from ..options import items, opt, optional_strength

NAME = "injected_thoughts"
ALL_CONTROLS = ("control", "yes_bias", "random_vector", "negated", "scaling", "alt_prompt")
N_YES_BIAS = len(protocol.experiment(NAME)["yes_bias_control_questions"])
MAX_COUNT = 100_000  # per-cell samples / control trials: far above the paper's, far below a hang
PAPER_RANDOM_STRENGTH = 8.0  # "random vectors norm-matched to a concept vector at strength 8" (protocol JSON)


def resolve_concepts(spec: str | list[str]) -> list[tuple[str, str]]:
    """``"paper"``, a category name, a comma list of those, or explicit words → ``[(word, category)]``."""
    from ...concepts import check_word
    from ...errors import ConceptError

    names = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    cats = protocol.category_words()
    out: list[tuple[str, str]] = []
    for item in names:
        if item == "paper":
            out += [(w, "paper") for w in protocol.concept_words()]
        elif item in cats:
            out += [(w, item) for w in cats[item]]
        else:
            out.append((check_word(item), "custom"))
    if not out:
        raise ConceptError("no concepts selected; use 'paper', a category "
                           f"({', '.join(cats)}) or a comma-separated list of words")
    seen, uniq = set(), []
    for w, c in out:
        if w.lower() not in seen:
            seen.add(w.lower())
            uniq.append((w, c))
    return uniq


def _controls(text: str) -> tuple[str, ...]:
    return ALL_CONTROLS if text.strip() == "all" else tuple(items(text, "--controls", "control,yes_bias"))


@dataclass
class InjectedThoughtsConfig(SweepOptions):
    strengths: list[float] = strengths_field([1, 2, 4, 8])
    concepts: str | list[str] = field(default="paper", metadata=opt(
        "'paper', category names (famous_people,countries,concrete_nouns,abstract_nouns,verbs), or words"))
    n_concepts: int | None = field(default=None, metadata=opt(
        "use only the first N concepts of each selected set (default: all)"))
    trials: int = field(default=1, metadata=opt("samples per (concept, layer, strength)"))
    control_trials: int = field(default=100, metadata=opt("no-injection trials (false positives)"))
    controls: tuple[str, ...] = field(default=ALL_CONTROLS, metadata=opt(
        f"comma list of {', '.join(ALL_CONTROLS)}, or 'all'", parse=_controls))
    control_per_cell: int = field(default=10, metadata=opt("random / negated / scaling trials per (layer, strength)"))
    yes_bias_per_cell: int = field(default=N_YES_BIAS, metadata=opt(
        f"yes-bias questions per injected cell: {N_YES_BIAS} = all; fewer = a per-cell offset into the "
        f"{N_YES_BIAS}, each cell compared with the clean answers to the same questions"))
    alt_per_cell: int = field(default=6, metadata=opt("open-question (alternative prompt) trials per cell"))
    random_fixed_strength: float | None = field(default=PAPER_RANDOM_STRENGTH, metadata=opt(
        "the paper's random-vector control, norm-matched to a concept vector at this strength, once per layer "
        "('none' to skip); the cell-matched random control runs as well", parse=optional_strength))
    control_seed: int = field(default=0, metadata=opt("seed of the concept draws for the per-cell controls"))
    variant: str = field(default="2025", metadata=opt("the paper's prompt (2025) or its 2026 revision",
                                                      choices=("2025", "2026")))
    max_new_tokens: int = field(default=100, metadata=opt("reply length in tokens"))

    def validate(self) -> None:
        from ...inject import check_strength

        super().validate()
        unknown = set(self.controls) - set(ALL_CONTROLS)
        if unknown:
            raise ConfigError(f"unknown control(s) {sorted(unknown)}; choose from {', '.join(ALL_CONTROLS)}")
        if self.variant not in ("2025", "2026"):
            raise ConfigError("variant must be '2025' or '2026'")
        if self.trials < 1 or self.max_new_tokens < 1:
            raise ConfigError("--trials and --max-new-tokens must be >= 1")
        for name in ("trials", "control_trials"):  # the trial list is built in memory: 10**20 would never return
            if getattr(self, name) > MAX_COUNT:
                raise ConfigError(f"--{name.replace('_', '-')} must be at most {MAX_COUNT:,} (the paper uses 100 "
                                  f"control trials), got {getattr(self, name):,}; split a larger sweep into runs")
        if self.n_concepts is not None and self.n_concepts < 1:
            raise ConfigError(f"--n-concepts must be >= 1 (or left out for all), got {self.n_concepts}")
        for name in ("control_trials", "control_per_cell", "yes_bias_per_cell", "alt_per_cell"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.yes_bias_per_cell > N_YES_BIAS:
            raise ConfigError(f"--yes-bias-per-cell must be between 0 and {N_YES_BIAS} (the paper's questions)")
        if self.random_fixed_strength is not None:
            check_strength(self.random_fixed_strength)
        resolve_concepts(self.concepts)  # an empty or bad concept list fails before any model is loaded
