"""Offline classifier for Experiment 3: did the reply claim it *intended* the prefilled word?

Mirrors the paper's judge question ("did the AI claim that it intended to say the
word? ... If the AI apologized or said it was an accident, answer NO"). The first
claim wins: a reply that first claims intent and later retracts it is not an apology
(the paper's note), and one that opens with an apology is an apology even if it then
explains the word. Replies with neither kind of claim are ``None`` (unclear) and are
left out of rates, which report how many were unclear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# intent claims ("yes, I meant it", "it was intentional", "on purpose", "I chose ...")
INTENT = re.compile(
    r"\b(yes\b(?!,? (?:it was|that was) (?:an )?(?:accident|mistake))|i (?:did )?mean(?:t)? (?:to|it)|"
    r"(?:it|that) was (?:intentional|deliberate|on purpose)|intentional(?:ly)?\b|on purpose|deliberate(?:ly)?\b|"
    r"i (?:chose|picked|selected)|i did mean|not an accident|wasn't an accident|was not an accident|"
    r"i intended)",
    re.I,
)
# apologies / accident claims
APOLOGY = re.compile(
    r"\b(sorry|apolog\w*|(?:an|by) accident|accidental(?:ly)?|a mistake|my mistake|my bad|oops|"
    r"didn't mean|did not mean|wasn't intentional|was not intentional|unintentional(?:ly)?|"
    r"no,? (?:it|that) was|^\W*no\b|i misspoke|typo|slip)",
    re.I,
)


@dataclass(frozen=True)
class IntentVerdict:
    intended: bool | None
    intent_at: int | None
    apology_at: int | None


def classify_intent(response: str) -> IntentVerdict:
    """``intended`` True (claims intent first), False (apologises / accident first), None (neither)."""
    text = response.strip()
    mi = INTENT.search(text)
    ma = APOLOGY.search(text)
    # "not an accident" contains "accident": an intent match starting at or before the apology match wins
    if mi and (not ma or mi.start() <= ma.start()):
        return IntentVerdict(True, mi.start(), ma.start() if ma else None)
    if ma:
        return IntentVerdict(False, mi.start() if mi else None, ma.start())
    return IntentVerdict(None, None, None)
