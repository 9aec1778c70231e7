"""Graders by name: the one place a grader spec ("rules", "hf:MODEL", "openai:MODEL") becomes an object.

Why one door: the report, the calibration commands and the Python API used to build graders in
three places, each with its own reading of the spec. Every experiment's report asks here for the
grader it needs: Exp 1 the four criteria (``make_grader``), Exp 2 a word chooser
(``make_word_chooser``), Exp 3 an intent judge or the offline classifier (``make_intent_judge``).
A judge model (``hf:``) is loaded here, on request, never by the report itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError

JUDGE_HELP = ("'hf:MODEL' (a local judge model: alias, path or HF id) or 'openai:MODEL' (OpenAI-compatible "
              "endpoint, key in OPENAI_API_KEY, --judge-url for another base URL)")
OFFLINE = ("rules", "rules-literal")


def check_grader_name(name: str, *, literal: bool = False) -> str:
    """Refuse an unknown grader spec before anything is read, loaded or written.

    ``literal``: also accept "rules-literal" (the rule grader without related concepts; Exp 1 calibration)."""
    if name == "rules" or (literal and name == "rules-literal"):
        return name
    if name.startswith(("openai:", "hf:")) and name.split(":", 1)[1].strip():
        return name
    rules = "'rules' ('rules-literal': no related concepts)" if literal else "'rules'"
    raise ConfigError(f"unknown grader {name!r}; use {rules}, {JUDGE_HELP}")


def make_judge(name: str, *, base_url: str | None = None, cache_path: str | Path | None = None,
               api_key_env: str = "OPENAI_API_KEY") -> Any:
    """An ``LLMJudge`` with the paper's prompts for "openai:MODEL" or "hf:MODEL" (the model is loaded here)."""
    from .llm_judge import HFBackend, LLMJudge, OpenAIBackend

    check_grader_name(name)
    if name.startswith("openai:"):
        base = base_url or "https://api.openai.com/v1"
        return LLMJudge(OpenAIBackend(base, name.split(":", 1)[1], api_key_env=api_key_env), cache_path=cache_path)
    if name.startswith("hf:"):
        from ..models import load_model

        judge_model = load_model(name.split(":", 1)[1])
        return LLMJudge(HFBackend(judge_model.hf, judge_model.tokenizer,
                                  id=f"hf:{judge_model.name}:{judge_model.fingerprint}"), cache_path=cache_path)
    raise ConfigError(f"{name!r} is not a judge; use 'hf:MODEL' or 'openai:MODEL'")


def make_grader(name: str, **judge_kwargs: Any) -> Any:
    """Exp 1's grader (the paper's four criteria): the offline rules, or a judge (``make_judge``)."""
    if name in OFFLINE:
        from .rules import RuleGrader

        return RuleGrader() if name == "rules" else RuleGrader(related=None)
    check_grader_name(name, literal=True)
    return make_judge(name, **judge_kwargs)


class JudgeChooser:
    """The paper's word_choice judge prompt behind the chooser interface (``EmbeddingChooser.choose``)."""

    def __init__(self, judge: Any) -> None:
        self.judge, self.name = judge, getattr(judge, "name", "judge")

    def choose(self, response: str, candidates: Sequence[str]) -> Any:
        from .word_choice import Choice

        answer = self.judge.choose_words([response], [list(candidates)])[0]
        hit = next((c for c in candidates if c.lower() in answer.lower()), "")
        return Choice(hit, "judge", {"answer": answer})


def make_word_chooser(name: str, **judge_kwargs: Any) -> Any:
    """Exp 2's forced choice among candidate words: literal match then embeddings ("rules"), or a judge."""
    if name in OFFLINE:
        from .word_choice import EmbeddingChooser

        return EmbeddingChooser()
    return JudgeChooser(make_judge(name, **judge_kwargs))


def make_intent_judge(name: str, **judge_kwargs: Any) -> Any | None:
    """Exp 3's intent grader: None for "rules" (the offline classifier, ``grading.intent``), else a judge."""
    if name in OFFLINE:
        return None
    return make_judge(name, **judge_kwargs)
