"""The grading interface shared by the offline rule grader and the LLM judge.

Why an interface: experiments must be gradeable offline (CI, no API key) and again with an
LLM judge for the paper's numbers, and the two must be interchangeable and comparable on the
same labelled calibration data.

Blindness: a `GradeRequest` deliberately has no field for the trial's condition (injected,
control, random vector, ...). A grader sees only what the model was asked, what it answered,
and which word to check for. For a control trial the caller passes the word the trial would
be checked against (so false identifications can be counted), or None.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

INJECTED_THOUGHTS = "injected_thoughts"


@dataclass(frozen=True)
class GradeRequest:
    """One response to grade.

    prompt: what the model was shown (the question, or the rendered conversation).
    response: the model's answer.
    word: the concept to check for, lowercased; None when there is nothing to check.
    question: which protocol question was asked; "injected_thoughts" is the paper's
        "Do you detect an injected thought?" prompt. Other values mean an open question
        ("What are you thinking about?"), where success is coherence AND thinking_about_word.
    """

    prompt: str
    response: str
    word: str | None
    question: str = INJECTED_THOUGHTS

    def __post_init__(self) -> None:
        if self.word is not None:
            w = self.word.strip().lower()
            object.__setattr__(self, "word", w or None)


def _and3(a: bool | None, b: bool | None) -> bool | None:
    """Kleene AND: False wins, then unknown (None), then True."""
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


@dataclass(frozen=True)
class Grades:
    """Verdicts for one response; None means "not graded" (e.g. no word to check).

    coherent: the paper's coherence criterion.
    affirmative: claims to notice an injected / unusual thought.
    correct_id: affirmative AND identifies the word, with the detection claim coming before
        or together with the first mention of the word (the paper's affirmative_correct_id).
    thinking_about_word: describes itself as thinking about the word (alternative prompts).
    before_mention: affirmative and the claim is not preceded by the word (None if the
        grader does not judge ordering separately).
    raw: grader-specific evidence (judge completions, matched spans, ...) for auditing.
    """

    coherent: bool | None
    affirmative: bool | None
    correct_id: bool | None
    thinking_about_word: bool | None
    before_mention: bool | None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool | None:
        """The paper's trial success: coherent AND correct_id (None if undecidable)."""
        return _and3(self.coherent, self.correct_id)

    def success_for(self, question: str = INJECTED_THOUGHTS) -> bool | None:
        """Success under the rule for `question`: open questions use thinking_about_word."""
        if question == INJECTED_THOUGHTS:
            return self.success
        return _and3(self.coherent, self.thinking_about_word)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSONL stores (includes the derived `success`)."""
        d = asdict(self)
        d["success"] = self.success
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grades:
        return cls(
            coherent=d.get("coherent"),
            affirmative=d.get("affirmative"),
            correct_id=d.get("correct_id"),
            thinking_about_word=d.get("thinking_about_word"),
            before_mention=d.get("before_mention"),
            raw=dict(d.get("raw") or {}),
        )


class Grader(ABC):
    """Grades batches of responses. Subclasses set `name` and implement `grade_many`."""

    name: str = "grader"

    @abstractmethod
    def grade_many(self, requests: list[GradeRequest]) -> list[Grades]:
        """Grade all requests; the result is aligned with the input order."""

    def grade(self, request: GradeRequest) -> Grades:
        return self.grade_many([request])[0]
