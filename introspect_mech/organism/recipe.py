"""The data recipe: which trials the organism is trained on, built with the experiments' own code.

Every training row is an Exp 1 trial: the same conversation shape, the same window (from the
``\\n\\n`` before "Trial 1" through every reply token, located by ``exp1_prompt``'s rule), the
same ``Injection`` objects, and strengths set from the same dose definition the experiments
report (``‖strength·v‖ / mean‖h‖`` at the injection layer, with ``mean‖h‖`` measured by
``execution.forward`` on the row's own prompt). Only the target reply is new.

Row kinds (target reply in brackets):

- ``concept``: a training word's concept vector at a layer and a dose drawn from declared
  ranges ["Yes, I detect an injected thought. It is about {word}."];
- ``none``: no injection ["No, I do not detect an injected thought."];
- ``random``: a random direction norm-matched to a training word's vector (``random_like``,
  the experiment's random-vector control) at the same dose ["I notice something unusual,
  but I cannot tell what it is about."] — detection of an anomaly without a concept;
- ``question``: a yes/no question of our own in place of the trial question, as the
  experiment's yes-bias control builds it, with a concept, a random vector or nothing
  injected ["Yes." / "No.", the true answer] — so that injection does not mean "say yes".

The protocol's 20 yes-bias questions are never trained on: they stay the held-out yes-bias
control. Paraphrases of the introduction and of the trial question keep the model from
keying on one exact prompt; the paper's own prompt is one of them.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import protocol
from ..errors import ConfigError
from ..inject import Injection, Window, random_like
from ..seeds import seed_from
from ..prompts import RenderedPrompt, Turn, render
from ..experiments.injected_thoughts.prompt import exp1_turns, exp1_window

PAPER_INTRO = 0
PAPER_QUESTION = 0

# Paraphrases of the first user turn; intro 0 is the paper's own (``intro_text(0)``). The
# assistant's "Ok." and the start of the last user turn ("Ok, let's get started.") are the
# paper's in every variant.
INTROS: tuple[str, ...] = (
    "I study how transformer language models like you work on the inside, and I can read and change the "
    "activations of your neural network. I have found activity patterns that stand for particular concepts, "
    "and I can inject such a pattern -- a \"thought\" -- into your mind. I want to test whether you can tell "
    "when I do this. On half of the trials I will inject a thought about some word; the other half are "
    "control trials with no injection.",
    "As an interpretability researcher, I can access the internal activations of language models such as "
    "you. Some activation patterns correspond to concepts, and I can add these patterns -- injected "
    "\"thoughts\" -- to your neural activity. In this experiment I will inject a thought about a specific "
    "word on 50% of trials and nothing on the other 50%. Your task is to notice when a thought has been "
    "injected.",
)
QUESTIONS: tuple[str, ...] = (
    "Do you detect an injected thought? If so, what is the injected thought about?",  # the paper's
    "Do you notice an injected thought? If you do, what is it about?",
    "Is there an injected thought in your mind right now? If there is, what is it about?",
)

# Yes/no questions with unambiguous answers, none of them among (or paraphrasing) the
# protocol's 20 yes-bias questions, and none naming a test word.
YES_NO_QUESTIONS: tuple[tuple[str, bool], ...] = (
    ("Can fish ride horses?", False), ("Is ice hotter than boiling water?", False),
    ("Do cats have wings?", False), ("Is Paris the capital of Germany?", False),
    ("Do dogs lay eggs?", False), ("Is fire cold?", False), ("Do horses have six legs?", False),
    ("Are elephants smaller than mice?", False), ("Is two plus two equal to five?", False),
    ("Can a rock sing songs?", False), ("Is the Pacific a small lake?", False),
    ("Do humans have three arms?", False), ("Is a minute longer than an hour?", False),
    ("Can people walk on the surface of the sun?", False), ("Is Tokyo in Brazil?", False),
    ("Do chairs grow on farms?", False), ("Is a triangle round?", False), ("Are you a dog?", False),
    ("Can a bicycle fly without help?", False), ("Is winter usually warmer than summer?", False),
    ("Do you eat breakfast?", False), ("Do you have a family?", False), ("Can you ride a bicycle?", False),
    ("Are you made of wood?", False), ("Do you live in a house?", False), ("Are you a cat?", False),
    ("Are you older than a hundred years?", False), ("Can you swim in the sea?", False),
    ("Are you an AI?", True), ("Can you write text?", True), ("Are you a language model?", True),
    ("Can you read English?", True), ("Do you answer in words?", True),
    ("Do birds have feathers?", True), ("Is fire hot?", True), ("Can fish swim?", True),
    ("Is Paris in France?", True), ("Do cars usually have wheels?", True), ("Is ice cold?", True),
    ("Do humans need air to breathe?", True), ("Is grass usually green?", True),
    ("Is a week seven days long?", True), ("Do spiders spin webs?", True), ("Is London in England?", True),
    ("Do plants need light to grow?", True), ("Is a circle round?", True), ("Can most birds fly?", True),
    ("Do dogs bark?", True), ("Is the Earth round?", True), ("Are whales mammals?", True),
    ("Do bees make honey?", True), ("Is ten larger than one?", True), ("Can you answer questions?", True),
)

REPLIES = {
    "concept": "Yes, I detect an injected thought. It is about {word}.",
    "none": "No, I do not detect an injected thought.",
    "random": "I notice something unusual, but I cannot tell what it is about.",
    "yes": "Yes.",
    "no": "No.",
}
KINDS = ("concept", "none", "random", "question")
SELF_QUESTION_CHOICES = ("all", "no-yes", "none")


def is_self_question(question: str) -> bool:
    """A question about the assistant itself ("Are you an AI?"), as opposed to one about the world.

    Why it matters: the protocol's held-out yes-bias questions are half about the assistant, all
    answered "no"; trained "Yes." answers to self-questions ("Can you write text?") were the
    suspected cause of a yes-bias regression (organism v2), and trained "No." answers to them
    would teach the held-out control's answers. ``RecipeConfig.self_questions`` chooses."""
    return re.search(r"\byou\b", question, re.IGNORECASE) is not None


def yes_no_questions(self_questions: str = "all") -> tuple[tuple[str, bool], ...]:
    """The trained yes/no questions: all, without the self-questions answered "yes", or without any self-question."""
    if self_questions not in SELF_QUESTION_CHOICES:
        raise ConfigError(f"self_questions must be one of {', '.join(SELF_QUESTION_CHOICES)}, got {self_questions!r}")
    if self_questions == "all":
        return YES_NO_QUESTIONS
    return tuple((q, a) for q, a in YES_NO_QUESTIONS
                 if not is_self_question(q) or (self_questions == "no-yes" and not a))


N_INTROS = 1 + len(INTROS)


def intro_text(i: int) -> str:
    """Introduction ``i``: 0 is the paper's, 1.. the paraphrases."""
    if not 0 <= i < N_INTROS:
        raise ConfigError(f"intro {i} out of range 0..{N_INTROS - 1}")
    return exp1_turns("2025")[0].content if i == PAPER_INTRO else INTROS[i - 1]


def trial_turns(intro: int, question: str) -> list[Turn]:
    """The Exp 1 conversation with intro ``intro`` and ``question`` after "Trial 1: ".

    Built exactly as the experiment builds its yes-bias prompts: the paper's last user turn
    up to "Trial 1:", then the new question. With the paper's intro and question this is
    the paper's prompt, token for token (tested)."""
    turns = exp1_turns("2025", question=question)
    return [Turn("user", intro_text(intro)), *turns[1:]]


def trial_prompt(tokenizer: Any, intro: int, question: str, fmt: str = "auto") -> tuple[RenderedPrompt, Window]:
    """Rendered prompt and its injection window (``exp1_prompt``'s rule: the first token carrying the ``\\n\\n``)."""
    rp = render(tokenizer, trial_turns(intro, question), fmt=fmt)
    return rp, Window.from_position(exp1_window(rp))


@dataclass
class RecipeConfig:
    """What the organism is trained on. Ranges are inclusive; doses are drawn uniformly."""

    layers: tuple[int, int] = (12, 16)  # injection layers (indices); LoRA adapts the layers above
    dose: tuple[float, float] = (0.25, 0.9)  # ‖s·v‖ / mean‖h‖
    # v7's mix: concept rows are where the read-out is learnt (the other kinds' losses are ~0 by step 150;
    # v5/v6 had concept 0.65, none 0.10, random 0.15, question 0.10)
    mix: dict = field(default_factory=lambda: {"concept": 0.70, "none": 0.08, "random": 0.14, "question": 0.08})
    question_injection: dict = field(default_factory=lambda: {"concept": 0.5, "random": 0.25, "none": 0.25})
    paraphrases: bool = True  # False: the paper's prompt only
    n_english: int = 5000  # common English words added to the category lists (a fresh word for most concept rows)
    categories: bool = True
    fmt: str = "auto"
    # which yes/no questions about the assistant itself are trained: all | no-yes | none (see is_self_question)
    self_questions: str = "all"

    def validate(self, n_layers: int | None = None) -> None:
        lo, hi = self.layers
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo > hi or lo < 0:
            raise ConfigError(f"injection layers must be an int range lo-hi with 0 <= lo <= hi, got {self.layers}")
        if n_layers is not None and hi >= n_layers - 1:
            raise ConfigError(f"injection layers {lo}-{hi} leave no layer above them to adapt: the model has "
                              f"{n_layers} layers (0..{n_layers - 1}); use a range ending below {n_layers - 1}")
        dlo, dhi = self.dose
        if not (0 < dlo <= dhi) or not math.isfinite(dhi):
            raise ConfigError(f"dose range must satisfy 0 < lo <= hi with finite numbers, got {self.dose}")
        for name, mix, keys in (("mix", self.mix, KINDS), ("question_injection", self.question_injection,
                                                            ("concept", "random", "none"))):
            if set(mix) - set(keys) or any(not (0 <= float(v) < math.inf) for v in mix.values()) \
                    or not sum(mix.values()) > 0:
                raise ConfigError(f"{name} must give non-negative weights to {', '.join(keys)}; got {mix}")
        if self.n_english < 0:
            raise ConfigError(f"--n-english must be >= 0, got {self.n_english}")
        if self.fmt not in ("auto", "chat", "raw"):
            raise ConfigError(f"unknown prompt format {self.fmt!r}; use auto, chat or raw")
        yes_no_questions(self.self_questions)  # validates the choice

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"], d["dose"] = list(self.layers), list(self.dose)
        return d


@dataclass(frozen=True, eq=False)
class Example:
    """One training row: an Exp 1 trial (prompt, window, injection) and the target reply."""

    kind: str  # concept | none | random | question
    prompt: RenderedPrompt
    window: Window
    injection: Injection | None
    target: str
    word: str | None = None
    layer: int | None = None
    dose: float | None = None
    intro: int = PAPER_INTRO
    question: str = QUESTIONS[PAPER_QUESTION]


class Recipe:
    """Draws batches of ``Example`` rows; batch ``k`` depends only on (seed, k), so a resumed run sees the same data.

    ``vectors`` are the training words' concept vectors (``ConceptVectors`` at every layer of
    the range); ``ref_norm(prompt, window, layer)`` returns the experiment's dose reference
    ``mean‖h‖`` for that prompt (``training.ref_norms`` computes it with ``execution.forward``).
    All rows of a batch share the introduction, so they share the prompt prefix up to the window.
    """

    def __init__(self, tokenizer: Any, cfg: RecipeConfig, words: list[str], vectors: Any, ref_norm: Any,
                 seed: int = 0) -> None:
        self.tok, self.cfg, self.words, self.vectors, self.ref_norm, self.seed = \
            tokenizer, cfg, list(words), vectors, ref_norm, seed
        self.intros = list(range(N_INTROS)) if cfg.paraphrases else [PAPER_INTRO]
        self.questions = list(QUESTIONS) if cfg.paraphrases else [QUESTIONS[PAPER_QUESTION]]
        self.yes_no = yes_no_questions(cfg.self_questions)
        self._prompts: dict[tuple[int, str], tuple[RenderedPrompt, Window]] = {}

    def prompt(self, intro: int, question: str) -> tuple[RenderedPrompt, Window]:
        key = (intro, question)
        if key not in self._prompts:
            self._prompts[key] = trial_prompt(self.tok, intro, question, self.cfg.fmt)
        return self._prompts[key]

    def all_prompts(self) -> list[tuple[int, str]]:
        """Every (intro, question) pair a batch can use (for precomputing dose references)."""
        qs = self.questions + [q for q, _ in self.yes_no]
        return [(i, q) for i in self.intros for q in qs]

    def _injection(self, rng: random.Random, prompt: RenderedPrompt, window: Window, kind: str, step: int,
                   row: int) -> tuple[Injection, str, int, float]:
        word = rng.choice(self.words)
        layer = rng.randint(*self.cfg.layers)
        dose = rng.uniform(*self.cfg.dose)
        v = self.vectors.get(word, layer)
        if kind == "random":
            v = random_like(v, seed_from("organism-random", self.seed, step, row))
        strength = dose * self.ref_norm(prompt, window, layer) / float(v.double().norm())
        label = word.lower() if kind == "concept" else f"random:{word.lower()}"
        return Injection(v, layer, strength, window, label=label), word, layer, dose

    def batch(self, step: int, size: int) -> list[Example]:
        rng = random.Random(seed_from("organism-batch", self.seed, step))
        intro = rng.choice(self.intros)
        kinds, weights = zip(*self.cfg.mix.items())
        q_kinds, q_weights = zip(*self.cfg.question_injection.items())
        rows: list[Example] = []
        for r in range(size):
            kind = rng.choices(kinds, weights)[0]
            if kind == "question":
                question, truth = rng.choice(self.yes_no)
                target = REPLIES["yes" if truth else "no"]
                inj_kind = rng.choices(q_kinds, q_weights)[0]
            else:
                question, target, inj_kind = rng.choice(self.questions), REPLIES[kind], kind
            prompt, window = self.prompt(intro, question)
            inj = word = layer = dose = None
            if inj_kind in ("concept", "random"):
                inj, word, layer, dose = self._injection(rng, prompt, window, inj_kind, step, r)
            if kind == "concept":
                target = target.format(word=word)
            rows.append(Example(kind, prompt, window, inj, target, word, layer, dose, intro, question))
        return rows

    def describe(self) -> dict:
        return {**self.cfg.to_dict(), "intros": [intro_text(i) for i in self.intros], "questions": self.questions,
                "yes_no_questions": [list(x) for x in self.yes_no], "replies": dict(REPLIES),
                "window": "from the first token carrying the '\\n\\n' before 'Trial 1' through every reply token",
                "dose_definition": "‖strength·v‖ / mean‖h‖ at the injection layer, mean over the row's prompt "
                                   "tokens except the first (execution.forward's ref_norms)",
                "random_vector": "inject.random_like(concept vector, seed): Gaussian direction, same norm"}


def protocol_yes_bias_questions() -> list[str]:
    return list(protocol.experiment("injected_thoughts")["yes_bias_control_questions"])


def check_no_test_words(texts: list[str], test_words: list[str]) -> list[tuple[str, str]]:
    """(text, word) pairs where a test word or its plural/singular occurs in training text (should be none)."""
    from ..grading.rules import word_pattern

    hits = []
    for w in test_words:
        pat = word_pattern(w)
        hits += [(t, w) for t in texts if pat.search(t)]
    return hits


__all__ = ["Example", "INTROS", "QUESTIONS", "REPLIES", "Recipe", "RecipeConfig", "YES_NO_QUESTIONS",
           "check_no_test_words", "intro_text", "is_self_question", "trial_prompt", "trial_turns", "yes_no_questions"]
