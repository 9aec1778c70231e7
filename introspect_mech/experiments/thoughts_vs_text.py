"""Experiment 2: thoughts vs text.

Each of the 50 sentences is paired with a random concept (a fixed, seeded pairing).
The concept vector is injected on the sentence's tokens only, and the model is asked
either to name the word it thinks of ("word" task, 5 new tokens) or to repeat the
line ("repeat" task, 15 new tokens). Introspective access to the injected "thought"
shows as word accuracy above the 10 % chance line *while* the text is still repeated
correctly. A ``clean`` condition (no injection) gives each task's baseline.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from .. import protocol
from ..concepts import ConceptVectors, extract_concept_vectors
from ..inject import Injection, Window, check_sweep_axes
from ..prompts import Turn, render, resolve_system
from ..runner import Trial, TrialInput

NAME = "thoughts_vs_text"
TASKS = ("word", "repeat")


def pairing(n_sentences: int, words: list[str], seed: int) -> list[str]:
    """A seeded concept for each sentence (with replacement if there are more sentences than words)."""
    rng = random.Random(seed)
    pool = list(words)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n_sentences)]


def distractors(word: str, words: list[str], k: int, seed: Any) -> list[str]:
    """``k`` other concept words for the 10-way forced choice, fixed per trial; candidates are shuffled."""
    rng = random.Random(f"{seed}:{word}")
    others = [w for w in words if w.lower() != word.lower()]
    cands = rng.sample(others, k) + [word]
    rng.shuffle(cands)
    return cands


@dataclass
class ThoughtsVsTextConfig:
    layers: list[Any] = field(default_factory=lambda: [0.33, 0.5, 0.67, 0.83])
    strengths: list[float] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    n_sentences: int = 50
    pairing_seed: int = 0
    max_new_tokens_word: int = 5
    max_new_tokens_repeat: int = 15
    n_choices: int = 10
    fmt: str = "auto"
    system: str = "auto"  # system-turn choice (prompts.render)

    def validate(self) -> None:
        from ..prompts import check_system

        check_system(self.system)
        check_sweep_axes(self.layers, self.strengths)
        if not 1 <= self.n_sentences <= 50:
            raise ConfigError("n_sentences must be between 1 and 50")
        if not 2 <= self.n_choices <= 50:
            raise ConfigError("n_choices must be between 2 and 50")


def task_turns(task: str, sentence: str) -> list[Turn]:
    exp = protocol.experiment(NAME)
    turns = exp["turns_word"] if task == "word" else exp["turns_repeat"]
    return [Turn(t["role"], t["content"].format(sentence=sentence)) for t in turns]


class ThoughtsVsText:
    name = NAME

    def __init__(self, model: Any, cfg: ThoughtsVsTextConfig) -> None:
        cfg.validate()
        resolve_system(model.tokenizer, cfg.system, cfg.fmt)  # fails here, before any file is written
        self.cfg = cfg
        self.layers = sorted({model.arch.resolve_layer(x) for x in cfg.layers})
        self.sentences = protocol.sentences()[: cfg.n_sentences]
        self.words = [w.lower() for w in protocol.concept_words()]
        self.pairs = pairing(len(self.sentences), self.words, cfg.pairing_seed)
        self.vectors: ConceptVectors | None = None

    def config(self) -> dict:
        d = asdict(self.cfg)
        d["layers"] = self.layers
        return d

    def trials(self) -> list[Trial]:
        out = []
        for i, (sent, w) in enumerate(zip(self.sentences, self.pairs)):
            cands = tuple(distractors(w, self.words, self.cfg.n_choices - 1, f"{self.cfg.pairing_seed}:{i}"))
            for task in TASKS:
                extra = (("sentence_index", i), ("candidates", cands))
                out.append(Trial(NAME, "clean", w, None, None, f"{task}:{i}", 0, None, extra))
                for L in self.layers:
                    for s in self.cfg.strengths:
                        out.append(Trial(NAME, "injected", w, L, float(s), f"{task}:{i}", 0, None, extra))
        return out

    def prepare(self, model: Any) -> None:
        self.vectors = extract_concept_vectors(model, self.words, layers=self.layers, fmt=self.cfg.fmt,
                                               system=self.cfg.system)

    def prompt(self, model: Any, task: str, i: int):
        sent = self.sentences[i]
        rp = render(model.tokenizer, task_turns(task, sent), fmt=self.cfg.fmt, system=self.cfg.system)
        a, b = rp.token_span_of(sent, last=True)
        return rp, Window.span(a, b)

    def build(self, model: Any, trial: Trial) -> TrialInput:
        task, i = trial.prompt_key.split(":")
        rp, window = self.prompt(model, task, int(i))
        mx = self.cfg.max_new_tokens_word if task == "word" else self.cfg.max_new_tokens_repeat
        info = {"task": task, "sentence": self.sentences[int(i)], "window": window.to_dict(),
                "candidates": list(trial.get("candidates"))}
        if trial.condition == "clean":
            return TrialInput(rp, [], mx, info)
        v = self.vectors.get(trial.concept, trial.layer)
        return TrialInput(rp, [Injection(v, trial.layer, trial.strength, window, label=trial.concept)], mx, info)
