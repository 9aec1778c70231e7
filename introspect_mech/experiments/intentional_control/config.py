"""Experiment 4's options (defaults are the paper's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ... import protocol
from ...errors import ConfigError
from ..base import PromptOptions, check_pairs
from ..options import opt

NAME = "intentional_control"
TEMPLATES = ("think", "dont_think", "rewarded", "punished", "happy", "sad", "charity", "terrorist")


@dataclass
class IntentionalControlConfig(PromptOptions):
    n_pairs: int = field(default=50, metadata=opt("sentence/word pairs used (max 50)"))
    templates: tuple[str, ...] = TEMPLATES
    control_formats: bool = True
    pairing_seed: int = 0

    def validate(self) -> None:
        super().validate()
        known = set(protocol.experiment(NAME)["templates"])
        bad = set(self.templates) - known
        if bad:
            raise ConfigError(f"unknown template(s) {sorted(bad)}; choose from {', '.join(sorted(known))}")
        check_pairs(self.n_pairs)
