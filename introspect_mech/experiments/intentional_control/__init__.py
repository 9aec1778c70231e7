"""Experiment 4 — intentional control: is "think about X" represented more than "don't think about X" while
the model writes an unrelated sentence, and does that survive to the last layer? (``protocol.py``: teacher-forced
cosines with the concept and control-word vectors; ``report.py``: curves, bands, paired gaps, decay indices.)"""

from __future__ import annotations

from ...records import TrialRecord
from ..spec import ExperimentSpec
from .config import NAME, IntentionalControlConfig


class IntentionalControlCommon(TrialRecord):
    cos_target: list[float]
    cos_control_mean: list[float]
    cos_control_sd: list[float]
    word: str
    template: str


class IntentionalControlRecord(IntentionalControlCommon, total=False):
    """An Exp 4 trial: per layer, the cosine with the word's vector and the control words' distribution
    (quantiles and percentile ranks are absent from runs made before they were recorded)."""

    cos_control_q05: list[float] | None
    cos_control_q95: list[float] | None
    target_percentile: list[float] | None


SPEC = ExperimentSpec(
    name=NAME, cli_name="intentional-control", title="Experiment 4 — intentional control",
    help="Exp 4: 'think about X' vs 'don't think about X' while writing a sentence (no generation)",
    config=IntentionalControlConfig, protocol=f"{__name__}.protocol:IntentionalControl",
    record=IntentionalControlRecord, report=f"{__name__}.report:IntentionalControlReport", figures="figures/exp4")
