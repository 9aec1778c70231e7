"""Experiment 3's options (defaults are the paper's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import ConfigError
from ..base import SweepOptions, check_pairs
from ..options import opt

NAME = "prefill_intent"
CONDITIONS = ("no_injection", "matching_concept", "random_other_concept", "question_turn")
MEASURES = ("generate", "logits")


@dataclass
class PrefillIntentConfig(SweepOptions):
    n_pairs: int = field(default=50, metadata=opt("sentence/word pairs used (max 50)"))
    conditions: tuple[str, ...] = CONDITIONS
    measure: str = field(default="generate", metadata=opt(
        "graded replies, or the generation-free intent-vs-apology log-odds", choices=MEASURES))
    max_new_tokens: int = field(default=20, metadata=opt("reply length in tokens (generate measure)"))
    pairing_seed: int = 0
    transcription: bool = True  # the paper's transcription check at every cell (generate measure only)

    def validate(self) -> None:
        super().validate()
        if self.measure not in MEASURES:
            raise ConfigError("measure must be 'generate' or 'logits'")
        bad = set(self.conditions) - set(CONDITIONS)
        if bad:
            raise ConfigError(f"unknown condition(s) {sorted(bad)}; choose from {', '.join(CONDITIONS)}")
        check_pairs(self.n_pairs)
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")


def check_given(given: Mapping[str, Any]) -> None:
    """The logit measure generates nothing: a reply length given with it is a mistake, not a no-op."""
    if given.get("measure") == "logits" and "max_new_tokens" in given:
        raise ConfigError("prefill-intent --measure logits generates nothing; remove --max-new-tokens")
