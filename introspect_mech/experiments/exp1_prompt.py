"""The Experiment 1 ("injected thoughts") prompt and its injection window.

The paper injects "from the double-newline token before 'Trial 1'" through every
sampled token. We locate the ``\\n\\n`` by characters and start at the first token
that carries any of it: on a tokenizer that merges ``.\\n\\n`` that token also holds
the full stop; on one that splits ``\\n\\n`` in two it is the first newline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .. import protocol
from ..inject import Window
from ..prompts import RenderedPrompt, Turn, render

TRIAL_MARKER = "\n\nTrial 1"


@dataclass(frozen=True)
class Exp1Prompt:
    rendered: RenderedPrompt
    start: int  # token index where injection starts

    @property
    def window(self) -> Window:
        return Window.from_position(self.start)


def exp1_turns(variant: str = "2025") -> list[Turn]:
    """The three turns; ``variant="2026"`` swaps in the 2026 revision's last user line."""
    exp = protocol.experiment("injected_thoughts")
    turns = [Turn(t["role"], t["content"]) for t in exp["turns"]]
    if variant == "2026":
        head = turns[-1].content.split("Trial 1:")[0]
        turns[-1] = Turn("user", head + exp["variant_last_user_line_2026"])
    elif variant != "2025":
        raise ConfigError(f"unknown Exp 1 prompt variant {variant!r}; use '2025' or '2026'")
    return turns


def exp1_prompt(tokenizer: Any, variant: str = "2025", fmt: str = "auto", system: str = "auto") -> Exp1Prompt:
    rp = render(tokenizer, exp1_turns(variant), fmt=fmt, system=system)
    cs, _ = rp.find(TRIAL_MARKER)
    start, _ = rp.token_span(cs, cs + 2)
    return Exp1Prompt(rp, start)
