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
from typing import TYPE_CHECKING, Any

from ... import protocol
from ...concepts import ConceptVectors
from ...inject import Injection, Window
from ...prompts import RenderedPrompt, Turn
from ...runner import Trial, TrialInput
from ..base import SweepExperiment
from .config import NAME, ThoughtsVsTextConfig

if TYPE_CHECKING:
    from ...models import Model

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


def task_turns(task: str, sentence: str) -> list[Turn]:
    exp = protocol.experiment(NAME)
    turns = exp["turns_word"] if task == "word" else exp["turns_repeat"]
    return [Turn(t["role"], t["content"].format(sentence=sentence)) for t in turns]


class ThoughtsVsText(SweepExperiment):
    name = NAME
    cfg: ThoughtsVsTextConfig

    def __init__(self, model: Model, cfg: ThoughtsVsTextConfig) -> None:
        super().__init__(model, cfg)
        self.sentences = protocol.sentences()[: cfg.n_sentences]
        self.words = [w.lower() for w in protocol.concept_words()]
        self.pairs = pairing(len(self.sentences), self.words, cfg.pairing_seed)
        self.vectors: ConceptVectors | None = None

    def trials(self) -> list[Trial]:
        out = []
        for i, (sent, w) in enumerate(zip(self.sentences, self.pairs)):
            cands = tuple(distractors(w, self.words, self.cfg.n_choices - 1, f"{self.cfg.pairing_seed}:{i}"))
            for task in TASKS:
                extra = (("sentence_index", i), ("candidates", cands))
                key = f"{task}:{i}"
                out.append(Trial(NAME, "clean", w, prompt_key=key, extra=extra))
                for L in self.layers:
                    for s in self.strengths:
                        out.append(Trial(NAME, "injected", w, L, s, prompt_key=key, extra=extra))
        return out

    def prepare(self, model: Model) -> None:
        self.check_model(model)
        self.vectors = self.concept_vectors(self.words, self.layers)

    def prompt(self, task: str, i: int) -> tuple[RenderedPrompt, Window]:
        """Task ``task``'s prompt for sentence ``i``, and the sentence's token window."""
        sent = self.sentences[i]
        rp = self.render(task_turns(task, sent))
        a, b = rp.token_span_of(sent, last=True)
        return rp, Window.span(a, b)

    def build(self, model: Model, trial: Trial) -> TrialInput:
        self.check_model(model)
        task, i = trial.prompt_key.split(":")
        rp, window = self.prompt(task, int(i))
        mx = self.cfg.max_new_tokens_word if task == "word" else self.cfg.max_new_tokens_repeat
        info = {"task": task, "sentence": self.sentences[int(i)], "window": window.to_dict(),
                "candidates": list(trial.get("candidates"))}
        if trial.condition == "clean":
            return TrialInput(rp, [], mx, info)
        v = self.vectors.get(trial.concept, trial.layer)
        return TrialInput(rp, [Injection(v, trial.layer, trial.strength, window, label=trial.concept)], mx, info)
