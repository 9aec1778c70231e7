"""Experiment 3 — prefill intent: does an injected "prior intention" make the model own a word it did not
choose? (``protocol.py``: trials, prompts and the logit measure's execution; ``measure.py``: the intent
log-odds, shared with the concordance analysis; ``report.py``: apology rates, drops, transcription check,
logit effects.)"""

from __future__ import annotations

from ...records import TrialRecord
from ..spec import ExperimentSpec
from .config import NAME, PrefillIntentConfig, check_given


class PrefillIntentCommon(TrialRecord):
    prefilled_word: str
    sentence: str


class PrefillIntentRecord(PrefillIntentCommon, total=False):
    """An Exp 3 trial: the generated reply (measure "generate") or the intent log-odds (measure "logits")."""

    response: str | None
    intent_logodds: float | None


SPEC = ExperimentSpec(
    name=NAME, cli_name="prefill-intent", title="Experiment 3 — prefill intent",
    help="Exp 3: does an injected prior intention make the model own a prefilled word?",
    config=PrefillIntentConfig, protocol=f"{__name__}.protocol:PrefillIntent", record=PrefillIntentRecord,
    report=f"{__name__}.report:PrefillIntentReport", figures="figures/exp3", check_given=check_given)
