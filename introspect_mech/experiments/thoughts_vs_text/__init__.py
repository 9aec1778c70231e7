"""Experiment 2 — thoughts vs text: can the model name a concept injected on a sentence while still
repeating the sentence correctly? (``protocol.py``: trials and prompts; ``report.py``: 10-way word choice,
repetition, both.)"""

from __future__ import annotations

from ...records import TrialRecord
from ..spec import ExperimentSpec
from .config import NAME, ThoughtsVsTextConfig


class ThoughtsVsTextRecord(TrialRecord):
    """An Exp 2 trial: which task, the sentence, the 10 candidate words (the injected one among them), the reply."""

    response: str
    task: str
    sentence: str
    candidates: list[str]


SPEC = ExperimentSpec(
    name=NAME, cli_name="thoughts-vs-text", title="Experiment 2 — thoughts vs text",
    help="Exp 2: name the injected word while repeating the sentence it was injected on",
    config=ThoughtsVsTextConfig, protocol=f"{__name__}.protocol:ThoughtsVsText", record=ThoughtsVsTextRecord,
    report=f"{__name__}.report:ThoughtsVsTextReport", figures="figures/exp2")
