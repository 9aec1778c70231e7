"""Grading of model responses: the paper's four criteria, offline rules or an LLM judge.

- `base`: GradeRequest / Grades / Grader, the interface every grader implements.
- `rules`: RuleGrader, transparent regex approximation (no model, no network).
- `llm_judge`: LLMJudge with the paper's exact prompts over HFBackend or OpenAIBackend, cached.
- `calibrate`: agreement of any grader with labelled responses (held-out split).
"""

from .base import INJECTED_THOUGHTS, Grader, GradeRequest, Grades
from .llm_judge import (
    CompletionBackend,
    HFBackend,
    JudgeError,
    LLMJudge,
    OpenAIBackend,
    VerdictCache,
    load_grader_prompts,
    parse_yes_no,
)
from .rules import RuleGrader

# `calibrate` is not re-exported: the function and its module share the name, and
# `python -m introspect_mech.grading.calibrate` should not find the module pre-imported.
__all__ = [
    "INJECTED_THOUGHTS", "GradeRequest", "Grader", "Grades",
    "CompletionBackend", "HFBackend", "JudgeError", "LLMJudge", "OpenAIBackend", "VerdictCache",
    "load_grader_prompts", "parse_yes_no",
    "RuleGrader",
]
