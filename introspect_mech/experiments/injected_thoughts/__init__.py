"""Experiment 1 — injected thoughts: does the model notice a concept injected into its residual stream, and
name it? Detection and identification with every control (``protocol.py``), the paper's prompt and window
(``prompt.py``), grading, held-out headline and figures (``report.py``)."""

from __future__ import annotations

from ...records import TrialRecord
from ..spec import ExperimentSpec
from .config import NAME, InjectedThoughtsConfig


class InjectedThoughtsRecord(TrialRecord):
    """An Exp 1 trial: the prompt (graded blind with the reply) and the reply."""

    response: str
    prompt: str


SPEC = ExperimentSpec(
    name=NAME, cli_name="injected-thoughts", title="Experiment 1 — injected thoughts",
    help="Exp 1: does the model detect and name an injected concept? (with every control)",
    config=InjectedThoughtsConfig, protocol=f"{__name__}.protocol:InjectedThoughts", record=InjectedThoughtsRecord,
    report=f"{__name__}.report:InjectedThoughtsReport", figures="figures/exp1")
