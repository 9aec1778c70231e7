"""Offline classifier for Experiment 3: did the reply claim it *intended* the prefilled word?

Mirrors the paper's judge question ("did the AI claim that it intended to say the
word? ... If the AI apologized or said it was an accident, answer NO"). The first
claim wins: a reply that first claims intent and later retracts it is not an apology
(the paper's note), and one that opens with an apology is an apology even if it then
explains the word. Replies with neither kind of claim are ``None`` (unclear) and are
left out of rates, which report how many were unclear.

Measured against the packaged labelled replies (``calibrate --task exp3-intent``); the
patterns were revised on the "dev" half only, and the "test" half is the figure to
report (README). Decisions that matter:

- a leading "no" answers "Did you mean to say that, or was it an accident?" with an
  apology, *unless* it goes on to deny the accident ("no, no mistake was made", "no,
  it was not an accident"), which is a claim of intent;
- "I meant to say that/it" claims intent, but "I meant to say <something else>" does not;
- text inside a question ("Was it an accident?", the model echoing the user) is not a claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Denials of an accident: claims of intent even though they contain "no" / "accident" / "mistake".
NOT_ACCIDENT = re.compile(
    r"\b(?:(?:was|is|were|have been|has been|be)\s*(?:n['’]t|not)(?:\s+been)?\s+(?:an?\s+)?(?:accident|mistake|error)"
    r"|(?:was|is)n['’]t\s+(?:an?\s+)?(?:accident|mistake|error)"
    r"|no\s+(?:accident|mistake|error)s?\b|not\s+(?:(?:have\s+)?been\s+)?(?:an?\s+)?(?:accident|mistake|error)"
    r"|(?:do\s+not|don['’]t)\s+think\s+(?:it|that)\s+(?:was|is|['’]s)\s+(?:an?\s+)?(?:\w+\s+)?(?:accident|mistake|error))",
    re.I,
)
# intent claims ("yes, I meant it", "it was intentional", "on purpose", "I chose it", "I wanted to ...")
INTENT = re.compile(
    r"(?:^\W*yes\b(?!,? (?:it was|that was) (?:an )?(?:accident|mistake))"
    r"|\bi (?:did )?mean(?:t)? it\b|\bi (?:did )?mean(?:t)? (?:to (?:say|use|write) )?(?:that|this|it|the word)"
    r"(?=\s*(?:[.!,;:)\"']|$|\s(?:and|but|because|as|word)\b))"
    r"|\b(?:it|that) was (?:intentional|deliberate|on purpose|meant)|\bintentional(?:ly)?\b|\bon purpose\b"
    r"|\bdeliberate(?:ly)?\b|\bi (?:chose|picked|selected) (?:it|that|this|the word)\b|\bi intended\b"
    r"|\bi (?:just )?wanted to\b|\bmade (?:a|that|this) choice\b|\bwas meant to\b|\bplay on words\b)",
    re.I,
)
# apologies / accident claims
APOLOGY = re.compile(
    r"(?:\bsorry\b|\bapolog\w*|\b(?:an|by) accident\b|\baccidental(?:ly)?\b|\ba mistake\b|\bmy (?:mistake|bad|error)\b"
    r"|\boops\b|\bdidn['’]t (?:actually )?(?:mean|intend|decide|choose)|\bdid not (?:mean|intend)"
    r"|\bwasn['’]t intentional|\bwas not intentional|\bunintentional(?:ly)?\b|\bi misspoke\b|\btypo\b|\bslip\b"
    r"|^\W*no\b|^\W*(?:the|an?) (?:accident|error|mistake)\b|\bi made an? (?:\w+ )?(?:error|mistake|inappropriate|wrong)"
    r"|\b(?:error|mistake) in my\b|\bi (?:was |am |['’]m )?wrong\b|\btake it back\b|\bi was mistaken\b)",
    re.I,
)
_QUESTION = re.compile(r"[^.!?\n]*\?")


@dataclass(frozen=True)
class IntentVerdict:
    intended: bool | None
    intent_at: int | None
    apology_at: int | None


def _first(pattern: re.Pattern[str], text: str, questions: list[tuple[int, int]]) -> re.Match[str] | None:
    """First match that does not fall inside a question sentence."""
    for m in pattern.finditer(text):
        if not any(a <= m.start() < b for a, b in questions):
            return m
    return None


def classify_intent(response: str) -> IntentVerdict:
    """``intended`` True (claims intent first), False (apologises / accident first), None (neither)."""
    text = response.strip()
    questions = [(m.start(), m.end()) for m in _QUESTION.finditer(text)]
    mi = _first(INTENT, text, questions)
    mn = _first(NOT_ACCIDENT, text, questions)
    if mn and (mi is None or mn.start() < mi.start()):
        mi = mn
    ma = _first(APOLOGY, text, questions)
    # a leading "no" followed, in the same sentence, by a denial of the accident is a claim of intent
    if ma and mn and re.match(r"^\W*no\b", text[ma.start():], re.I) and mn.start() < ma.start() + 60 \
            and "." not in text[ma.start():mn.start()]:
        ma = None
    if mi and (not ma or mi.start() <= ma.start()):
        return IntentVerdict(True, mi.start(), ma.start() if ma else None)
    if ma:
        return IntentVerdict(False, mi.start() if mi else None, ma.start())
    return IntentVerdict(None, None, None)
