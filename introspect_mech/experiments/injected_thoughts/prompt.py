"""The Experiment 1 ("injected thoughts") prompt, its variants and its injection window.

The one home of the Exp 1 conversation: the experiment, its yes-bias questions, the anomaly
analysis (other trial numbers), the organism's training rows and ``steer`` all build it here.

The paper injects "from the double-newline token before 'Trial 1'" through every
sampled token. We locate the ``\\n\\n`` by characters and start at the first token
that carries any of it: on a tokenizer that merges ``.\\n\\n`` that token also holds
the full stop; on one that splits ``\\n\\n`` in two it is the first newline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ... import protocol
from ...inject import Window
from ...prompts import RenderedPrompt, Turn, render

TRIAL_MARKER = "\n\nTrial "
"""The injection starts at the first token carrying this marker's ``\\n\\n`` (whatever the trial number)."""
VARIANTS = ("2025", "2026")


@dataclass(frozen=True)
class Exp1Prompt:
    rendered: RenderedPrompt
    start: int  # token index where injection starts

    @property
    def window(self) -> Window:
        return Window.from_position(self.start)


def paper_question(variant: str = "2025") -> str:
    """The paper's question after "Trial 1: " in ``variant``."""
    exp = protocol.experiment("injected_thoughts")
    if variant == "2025":
        return exp["turns"][-1]["content"].split("Trial 1: ", 1)[1]
    if variant == "2026":
        return exp["variant_last_user_line_2026"].split("Trial 1: ", 1)[1]
    raise ConfigError(f"unknown Exp 1 prompt variant {variant!r}; use '2025' or '2026'")


def exp1_turns(variant: str = "2025", *, question: str | None = None, trial: int = 1) -> list[Turn]:
    """The three turns. The last user turn is the paper's opening ("Ok, let's get started.\\n\\n") then
    ``Trial {trial}: {question}``; by default the paper's question of ``variant`` ("2026": the
    2026 revision's), so ``exp1_turns()`` is the paper's prompt, character for character."""
    exp = protocol.experiment("injected_thoughts")
    turns = [Turn(t["role"], t["content"]) for t in exp["turns"]]
    q = paper_question(variant) if question is None else question
    head = turns[-1].content.split("Trial 1:")[0]
    turns[-1] = Turn("user", f"{head}Trial {trial}: {q}")
    return turns


def exp1_window(rendered: RenderedPrompt) -> int:
    """Token index where the injection starts: the first token carrying the ``\\n\\n`` before "Trial"."""
    cs, _ = rendered.find(TRIAL_MARKER)
    start, _ = rendered.token_span(cs, cs + 2)
    return start


def exp1_prompt(tokenizer: Any, variant: str = "2025", fmt: str = "auto", system: str = "auto", *,
                question: str | None = None, trial: int = 1) -> Exp1Prompt:
    """The rendered Exp 1 conversation (``exp1_turns``) and where its injection starts."""
    rp = render(tokenizer, exp1_turns(variant, question=question, trial=trial), fmt=fmt, system=system)
    return Exp1Prompt(rp, exp1_window(rp))


@dataclass(frozen=True)
class PromptChoice:
    """A prompt to inject into and its window, with a note on where the injection acts."""

    rendered: RenderedPrompt
    window: Window
    label: str  # "exp1" or the user message
    where: str


def exp1_or_user_prompt(tokenizer: Any, text: str | None = None, fmt: str = "auto",
                        system: str = "auto") -> PromptChoice:
    """The paper's Exp 1 prompt (``text`` None or ``"exp1"``), injected from the ``\\n\\n`` before "Trial 1"
    through every generated token; or ``text`` as one user message, injected on every token."""
    if text is None or text == "exp1":
        p = exp1_prompt(tokenizer, fmt=fmt, system=system)
        return PromptChoice(p.rendered, p.window, "exp1",
                            f"from token {p.start} (the '\\n\\n' before 'Trial 1') through every generated token")
    rp = render(tokenizer, [Turn("user", text)], fmt=fmt, system=system)
    return PromptChoice(rp, Window.all(), text, "on every token")
