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

import random
from typing import TYPE_CHECKING, Any

from ... import protocol
from ...concepts import ConceptVectors
from ...errors import ConfigError
from ...inject import Injection, Window
from ...prompts import RenderedPrompt, Turn
from ...runner import Trial, TrialInput
from ...seeds import seed_from
from ..base import SweepExperiment
from .config import ALL_CONTROLS, N_YES_BIAS, NAME, InjectedThoughtsConfig, resolve_concepts
from .prompt import exp1_prompt

if TYPE_CHECKING:
    from ...models import Model

__all__ = ["ALL_CONTROLS", "InjectedThoughts", "draw_concepts", "yes_bias_questions"]


def draw_concepts(words: list[str], k: int, *key: Any) -> list[str]:
    """``k`` concepts drawn without replacement (with replacement beyond ``len(words)``) from all of
    ``words``, by an RNG seeded with ``key``: deterministic, and spread over every category."""
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


class InjectedThoughts(SweepExperiment):
    """The protocol object the runner drives (``runner.Experiment``), bound to its model."""

    name = NAME
    cfg: InjectedThoughtsConfig

    def __init__(self, model: Model, cfg: InjectedThoughtsConfig) -> None:
        super().__init__(model, cfg)
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
        self._prompts: dict[str, tuple[RenderedPrompt, Window]] = {}

    # ---- trial list ------------------------------------------------------------------
    def config(self) -> dict:
        d = super().config()
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
            for s in self.strengths:
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
    def prepare(self, model: Model) -> None:
        self.check_model(model)
        self.vectors = self.concept_vectors([w for w, _ in self.concepts], self.layers)

    def prompt(self, key: str) -> tuple[RenderedPrompt, Window]:
        """The rendered prompt of a trial's ``prompt_key`` and its injection window."""
        if key in self._prompts:
            return self._prompts[key]
        exp = protocol.experiment(NAME)
        if key == "default" or key.startswith("yes_bias:"):
            q = exp["yes_bias_control_questions"][int(key.split(":")[1])] if key != "default" else None
            p = exp1_prompt(self.model.tokenizer, self.cfg.variant, self.cfg.fmt, self.cfg.system, question=q)
            val = (p.rendered, p.window)
        elif key.startswith("alt:"):
            q = exp["alternative_prompts_inject_all_positions"][int(key.split(":")[1])]
            val = (self.render([Turn("user", q)]), Window.all())
        else:
            raise KeyError(key)
        self._prompts[key] = val
        return val

    def build(self, model: Model, trial: Trial) -> TrialInput:
        self.check_model(model)
        if self.vectors is None:
            raise ConfigError(f"{NAME}: prepare() extracts the concept vectors; call it before build()")
        prompt, window = self.prompt(trial.prompt_key)
        info = {"window": window.to_dict(), "category": trial.category}
        mx = self.cfg.max_new_tokens
        if trial.condition in ("control", "yes_bias_clean"):
            return TrialInput(prompt, [], mx, info)
        s = trial.strength
        concept = Injection(self.vectors.get(trial.concept, trial.layer), trial.layer, s, window, label=trial.concept)
        if trial.condition in ("injected", "yes_bias", "alt_prompt"):
            inj = concept
        elif trial.condition in ("random_vector", "random_vector_fixed"):
            # norm-matched to the concept vector; random_vector_fixed is injected at the paper's strength 8
            seed = seed_from("random", trial.concept, trial.layer, trial.sample,
                             *(("fixed",) if trial.condition == "random_vector_fixed" else ()))
            inj = concept.random_direction(seed)
            info["random_seed"] = seed
        elif trial.condition == "negated":
            inj = concept.negated()
        elif trial.condition == "scaling":
            factor = self.vectors.scaling_factor(trial.layer, s)
            inj = Injection.scaling(trial.layer, factor, window)
            info["scale_factor"] = factor
        else:
            raise ConfigError(f"unknown condition {trial.condition!r}")
        return TrialInput(prompt, [inj], mx, info)
