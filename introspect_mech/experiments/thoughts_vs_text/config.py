"""Experiment 2's options (defaults are the paper's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError
from ..base import SweepOptions, check_pairs
from ..options import opt

NAME = "thoughts_vs_text"


@dataclass
class ThoughtsVsTextConfig(SweepOptions):
    n_sentences: int = field(default=50, metadata=opt("sentences used (max 50)", flag="--n-pairs"))
    pairing_seed: int = 0
    max_new_tokens_word: int = 5
    max_new_tokens_repeat: int = 15
    n_choices: int = 10

    def validate(self) -> None:
        super().validate()
        check_pairs(self.n_sentences, "--n-pairs (sentences)")
        if not 2 <= self.n_choices <= 50:
            raise ConfigError("n_choices must be between 2 and 50")
