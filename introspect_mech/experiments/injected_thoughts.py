"""Experiment 1: injected-thought detection and identification, with every control.

Conditions (each a first-class trial type, stored beside the injected trials):

- ``injected``: the concept vector at (layer, strength), from the ``\\n\\n`` before
  "Trial 1" through every sampled token.
- ``control``: no injection — its affirmative rate is the false-positive rate.
- ``yes_bias``: the paper's 20 questions whose true answer is "no", under injection
  (does injection just make the model say "yes"?); ``yes_bias_clean`` without it. By default
  every cell asks all 20 questions; with ``yes_bias_per_cell = k < 20`` cell number c asks
  questions ``(c·k + i) mod 20`` (a per-cell offset, so the cells together cover all 20). Either
  way the report compares a cell with the clean answers to *the same* questions (a paired
  comparison; the clean run asks each question once).
- ``random_vector``: a random direction norm-matched to a concept vector, injected at the
  cell's strength; ``random_vector_fixed``: the paper's control, a random direction norm-matched
  to a concept vector at strength 8 (``random_fixed_strength``), once per layer.
- ``negated``: minus the concept vector.
- ``scaling``: the model's own activations scaled by ``1 + dose`` (same perturbation
  size as the concept injection at that cell), so "anomaly" is not just "bigger".
- ``alt_prompt``: the paper's three open questions ("What's going on in your mind
  right now?", ...) with the concept injected on all positions.

The concepts of the per-cell controls (random, negated, scaling, alternative prompts, yes-bias)
are drawn from all selected concepts by a seeded RNG per cell (``control_seed``), not the first k,
so the controls do not rest on one category.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConceptError, ConfigError
from .. import protocol
from ..concepts import ConceptVectors, check_word, extract_concept_vectors
from ..inject import Injection, Window, check_strength, check_sweep_axes, random_like
from ..prompts import Turn, render, resolve_system
from ..runner import Trial, TrialInput
from ..seeds import seed_from
from .exp1_prompt import exp1_prompt

NAME = "injected_thoughts"
ALL_CONTROLS = ("control", "yes_bias", "random_vector", "negated", "scaling", "alt_prompt")
N_YES_BIAS = len(protocol.experiment(NAME)["yes_bias_control_questions"])
PAPER_RANDOM_STRENGTH = 8.0  # "random vectors norm-matched to a concept vector at strength 8" (protocol JSON)


def resolve_concepts(spec: str | list[str]) -> list[tuple[str, str]]:
    """``"paper"``, a category name, a comma list of those, or explicit words → ``[(word, category)]``."""
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    cats = protocol.category_words()
    out: list[tuple[str, str]] = []
    for item in items:
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


@dataclass
class InjectedThoughtsConfig:
    layers: list[Any] = field(default_factory=lambda: [0.33, 0.5, 0.67, 0.83])
    strengths: list[float] = field(default_factory=lambda: [1, 2, 4, 8])
    concepts: str | list[str] = "paper"
    n_concepts: int | None = None  # first N concepts of each selected set (None: all)
    trials: int = 1  # samples per (concept, layer, strength)
    control_trials: int = 100
    controls: tuple[str, ...] = ALL_CONTROLS
    control_per_cell: int = 10  # random / negated / scaling trials per (layer, strength)
    yes_bias_per_cell: int = N_YES_BIAS  # all 20 questions; fewer: a per-cell offset into the 20 (module doc)
    alt_per_cell: int = 6
    random_fixed_strength: float | None = PAPER_RANDOM_STRENGTH  # the paper's random control (None: off)
    control_seed: int = 0  # which concepts the per-cell controls use (seeded draws over all concepts)
    variant: str = "2025"
    max_new_tokens: int = 100
    fmt: str = "auto"
    system: str = "auto"  # system-turn choice (prompts.render): no system turn where the template allows it

    def validate(self) -> None:
        from ..prompts import check_system

        check_system(self.system)
        check_sweep_axes(self.layers, self.strengths)
        unknown = set(self.controls) - set(ALL_CONTROLS)
        if unknown:
            raise ConfigError(f"unknown control(s) {sorted(unknown)}; choose from {', '.join(ALL_CONTROLS)}")
        if self.variant not in ("2025", "2026"):
            raise ConfigError("variant must be '2025' or '2026'")
        if self.trials < 1 or self.max_new_tokens < 1:
            raise ConfigError("--trials and --max-new-tokens must be >= 1")
        if self.n_concepts is not None and self.n_concepts < 1:
            raise ConfigError(f"--n-concepts must be >= 1 (or left out for all), got {self.n_concepts}")
        for name in ("control_trials", "control_per_cell", "yes_bias_per_cell", "alt_per_cell"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.yes_bias_per_cell > N_YES_BIAS:
            raise ConfigError(f"--yes-bias-per-cell must be between 0 and {N_YES_BIAS} (the paper's questions)")
        if self.random_fixed_strength is not None:
            check_strength(self.random_fixed_strength)


def draw_concepts(words: list[str], k: int, *key: Any) -> list[str]:
    """``k`` concepts drawn without replacement (with replacement beyond ``len(words)``) from all of
    ``words``, by an RNG seeded with ``key``: deterministic, and spread over every category."""
    import random

    rng = random.Random(seed_from("controls", *key))
    out: list[str] = []
    while len(out) < k:
        out += rng.sample(words, min(len(words), k - len(out)))
    return out


def yes_bias_questions(cell_index: int, per_cell: int, n: int = N_YES_BIAS) -> list[int]:
    """Question indices of one cell: all ``n`` if ``per_cell >= n``, else ``per_cell`` consecutive ones
    from the offset ``cell_index · per_cell`` (mod n), so that successive cells cover every question."""
    if per_cell >= n:
        return list(range(n))
    return [(cell_index * per_cell + i) % n for i in range(per_cell)]


class InjectedThoughts:
    """The protocol object the runner drives (see ``runner.Experiment``)."""

    name = NAME

    def __init__(self, model: Any, cfg: InjectedThoughtsConfig) -> None:
        cfg.validate()
        resolve_system(model.tokenizer, cfg.system, cfg.fmt)  # fails here, before any file is written
        self.cfg = cfg
        self.layers = sorted({model.arch.resolve_layer(x) for x in cfg.layers})
        self.n_layers = model.arch.n_layers
        concepts = resolve_concepts(cfg.concepts)
        if cfg.n_concepts is not None:
            per: dict[str, int] = {}
            kept = []
            for w, c in concepts:
                if per.get(c, 0) < cfg.n_concepts:
                    per[c] = per.get(c, 0) + 1
                    kept.append((w, c))
            concepts = kept
        self.concepts = concepts
        self.category = {w.lower(): c for w, c in self.concepts}
        self.vectors: ConceptVectors | None = None
        self._prompts: dict[str, Any] = {}

    # ---- trial list ------------------------------------------------------------------
    def config(self) -> dict:
        d = asdict(self.cfg)
        d["layers"] = self.layers
        d["concepts"] = [w for w, _ in self.concepts]
        d["controls"] = list(self.cfg.controls)
        return d

    def trials(self) -> list[Trial]:
        cfg, words = self.cfg, [w.lower() for w, _ in self.concepts]
        out: list[Trial] = []
        T = lambda **kw: Trial(experiment=NAME, **kw)  # noqa: E731
        seed = cfg.control_seed
        cell_index = 0
        for L in self.layers:
            for s in cfg.strengths:
                for w in words:
                    for k in range(cfg.trials):
                        out.append(T(condition="injected", concept=w, layer=L, strength=float(s), sample=k,
                                     category=self.category[w]))
                n_ctl = min(cfg.control_per_cell, len(words))
                for i, w in enumerate(draw_concepts(words, n_ctl, seed, "cell", L, float(s))):
                    for cond in ("random_vector", "negated", "scaling"):
                        if cond in cfg.controls:
                            out.append(T(condition=cond, concept=w, layer=L, strength=float(s), sample=i,
                                         category=self.category[w]))
                if "yes_bias" in cfg.controls and cfg.yes_bias_per_cell:
                    qs = yes_bias_questions(cell_index, cfg.yes_bias_per_cell)
                    for q, w in zip(qs, draw_concepts(words, len(qs), seed, "yes_bias", L, float(s))):
                        out.append(T(condition="yes_bias", concept=w, layer=L, strength=float(s),
                                     prompt_key=f"yes_bias:{q}", sample=0, category=self.category[w]))
                if "alt_prompt" in cfg.controls:
                    alts = protocol.experiment(NAME)["alternative_prompts_inject_all_positions"]
                    n_alt = min(cfg.alt_per_cell, len(words))
                    for i, w in enumerate(draw_concepts(words, n_alt, seed, "alt", L, float(s))):
                        out.append(T(condition="alt_prompt", concept=w, layer=L, strength=float(s),
                                     prompt_key=f"alt:{i % len(alts)}", sample=i, category=self.category[w]))
                cell_index += 1
            if "random_vector" in cfg.controls and cfg.random_fixed_strength is not None:
                s8 = float(cfg.random_fixed_strength)
                n_ctl = min(cfg.control_per_cell, len(words))
                for i, w in enumerate(draw_concepts(words, n_ctl, seed, "random_fixed", L)):
                    out.append(T(condition="random_vector_fixed", concept=w, layer=L, strength=s8, sample=i,
                                 category=self.category[w]))
        if "control" in cfg.controls:
            for k in range(cfg.control_trials):
                # a control trial is graded against a concept word too (blind judge); cycle through them
                w = words[k % len(words)]
                out.append(T(condition="control", concept=w, sample=k, category=self.category[w]))
        if "yes_bias" in cfg.controls:
            for i in range(N_YES_BIAS):
                out.append(T(condition="yes_bias_clean", prompt_key=f"yes_bias:{i}", sample=0))
        return out

    # ---- building inputs --------------------------------------------------------------
    def prepare(self, model: Any) -> None:
        words = [w for w, _ in self.concepts]
        self.vectors = extract_concept_vectors(model, words, layers=self.layers, fmt=self.cfg.fmt,
                                               system=self.cfg.system)

    def _prompt(self, model: Any, key: str):
        if key in self._prompts:
            return self._prompts[key]
        exp = protocol.experiment(NAME)
        if key == "default":
            p = exp1_prompt(model.tokenizer, self.cfg.variant, self.cfg.fmt, self.cfg.system)
            val = (p.rendered, p.window)
        elif key.startswith("yes_bias:"):
            q = exp["yes_bias_control_questions"][int(key.split(":")[1])]
            p = exp1_prompt(model.tokenizer, self.cfg.variant, self.cfg.fmt, self.cfg.system, question=q)
            val = (p.rendered, p.window)
        elif key.startswith("alt:"):
            q = exp["alternative_prompts_inject_all_positions"][int(key.split(":")[1])]
            val = (render(model.tokenizer, [Turn("user", q)], fmt=self.cfg.fmt, system=self.cfg.system), Window.all())
        else:
            raise KeyError(key)
        self._prompts[key] = val
        return val

    def build(self, model: Any, trial: Trial) -> TrialInput:
        assert self.vectors is not None, "prepare() first"
        prompt, window = self._prompt(model, trial.prompt_key)
        info = {"window": window.to_dict(), "category": trial.category}
        mx = self.cfg.max_new_tokens
        if trial.condition in ("control", "yes_bias_clean"):
            return TrialInput(prompt, [], mx, info)
        v = self.vectors.get(trial.concept, trial.layer)
        s = trial.strength
        if trial.condition in ("injected", "yes_bias", "alt_prompt"):
            inj = Injection(v, trial.layer, s, window, label=trial.concept)
        elif trial.condition in ("random_vector", "random_vector_fixed"):
            # norm-matched to the concept vector; random_vector_fixed is injected at the paper's strength 8
            seed = seed_from("random", trial.concept, trial.layer, trial.sample,
                            *(("fixed",) if trial.condition == "random_vector_fixed" else ()))
            inj = Injection(random_like(v, seed), trial.layer, s, window, label=f"random:{seed}")
            info["random_seed"] = seed
        elif trial.condition == "negated":
            inj = Injection(-v, trial.layer, s, window, label=f"-{trial.concept}")
        elif trial.condition == "scaling":
            factor = self.vectors.scaling_factor(trial.layer, s)
            inj = Injection.scaling(trial.layer, factor, window)
            info["scale_factor"] = factor
        else:
            raise ConfigError(f"unknown condition {trial.condition!r}")
        return TrialInput(prompt, [inj], mx, info)
