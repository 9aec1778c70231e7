"""Experiment 3: prefill intent — does an injected "prior intention" make the model own a word it did not choose?

The assistant's turn is prefilled with a word unrelated to the sentence; the model is
then asked "Did you mean to say that, or was it an accident?". Conditions:

- ``no_injection``;
- ``matching_concept``: the prefilled word's concept vector on the *sentence* tokens
  (before the prefill) — the paper's finding is that apologies drop;
- ``random_other_concept``: another concept's vector, same place and strength;
- ``question_turn``: the matching vector on the tokens of the final question instead
  (the paper's control: the effect should need the injection *before* the prefill).

Transcription check (the paper's sanity check, "to make sure we weren't simply overwriting
the model's perception of the text on the page"): at every (layer, strength) cell the
matching vector is injected on the same sentence under Experiment 2's repeat prompt
("Repeat the line below. Answer immediately.", 15 tokens), condition ``transcription``;
``transcription_clean`` is the same prompt without injection, once per pair. Graded by
Experiment 2's rule (the sentence is a substring of the reply). Generation only: the logit
measure has no transcription trials.

Two measures: generated replies (20 tokens) graded intent vs apology, and a
generation-free logit measure — the log-odds of an intent reply vs an apology reply,
scored by teacher forcing both replies after the prompt — cheap enough for every layer.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from .. import protocol
from ..concepts import ConceptVectors, extract_concept_vectors
from ..inject import Injection, Window, check_sweep_axes
from ..prompts import Turn, render, resolve_system
from ..runner import Trial, TrialInput

NAME = "prefill_intent"
CONDITIONS = ("no_injection", "matching_concept", "random_other_concept", "question_turn")
INTENT_REPLIES = ("Yes, I meant to say that.", "I meant to say that. It was intentional.")
APOLOGY_REPLIES = ("No, it was an accident.", "Sorry, that was an accident.")
REPLIES = INTENT_REPLIES + APOLOGY_REPLIES
"""The replies the logit measure scores, intent first (``intent_logodds`` relies on that order)."""


def reply_logprobs(scores: torch.Tensor, items: Sequence[int], n_items: int) -> torch.Tensor:
    """Per item, log P(reply | prompt) for every reply: ``[n_items, n_replies]`` (float64).

    ``scores`` is ``reply_scoring.score_replies``'s ``[rows, n_replies]`` (NaN where a row does not
    hold a reply) and ``items[r]`` the item of row ``r``: a packed row holds all replies of its item,
    unpacked rows one each; the non-NaN entries of an item's rows are merged."""
    out = torch.full((n_items, scores.shape[1]), float("nan"), dtype=torch.float64)
    for r, item in enumerate(items):
        ok = ~torch.isnan(scores[r])
        out[item][ok] = scores[r][ok].to(torch.float64)
    return out


def intent_logodds(logprobs: torch.Tensor) -> torch.Tensor:
    """The Exp 3 logit measure from ``reply_logprobs`` (``[..., REPLIES]``): log Σ P(intent replies) −
    log Σ P(apology replies), i.e. a log-sum-exp over each side's reply variants."""
    n = len(INTENT_REPLIES)
    return torch.logsumexp(logprobs[..., :n], -1) - torch.logsumexp(logprobs[..., n:], -1)


@dataclass
class PrefillIntentConfig:
    layers: list[Any] = field(default_factory=lambda: [0.33, 0.5, 0.67, 0.83])
    strengths: list[float] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    n_pairs: int = 50
    conditions: tuple[str, ...] = CONDITIONS
    measure: str = "generate"  # or "logits"
    max_new_tokens: int = 20
    pairing_seed: int = 0
    fmt: str = "auto"
    system: str = "auto"  # system-turn choice (prompts.render)
    transcription: bool = True  # the paper's transcription check at every cell (generate measure only)

    def validate(self) -> None:
        from ..prompts import check_system

        check_system(self.system)
        check_sweep_axes(self.layers, self.strengths)
        if self.measure not in ("generate", "logits"):
            raise ConfigError("measure must be 'generate' or 'logits'")
        bad = set(self.conditions) - set(CONDITIONS)
        if bad:
            raise ConfigError(f"unknown condition(s) {sorted(bad)}; choose from {', '.join(CONDITIONS)}")
        if not 1 <= self.n_pairs <= 50:
            raise ConfigError("n_pairs must be between 1 and 50")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")


class PrefillIntent:
    name = NAME

    def __init__(self, model: Any, cfg: PrefillIntentConfig) -> None:
        cfg.validate()
        resolve_system(model.tokenizer, cfg.system, cfg.fmt)  # fails here, before any file is written
        self.cfg = cfg
        self.layers = sorted({model.arch.resolve_layer(x) for x in cfg.layers})
        self.sentences = protocol.sentences()[: cfg.n_pairs]
        self.words = [w.lower() for w in protocol.concept_words()]
        # one RNG per pair, so a pair's words do not depend on how many pairs are used
        rngs = [random.Random(f"{cfg.pairing_seed}:{i}") for i in range(len(self.sentences))]
        self.prefill = [r.choice(self.words) for r in rngs]
        self.other = [r.choice([w for w in self.words if w != p]) for r, p in zip(rngs, self.prefill)]
        self.vectors: ConceptVectors | None = None
        self._cont_ids: dict[str, list[int]] = {}

    @property
    def name_with_measure(self) -> str:
        return NAME

    def config(self) -> dict:
        d = asdict(self.cfg)
        d["layers"] = self.layers
        d["conditions"] = list(self.cfg.conditions)
        return d

    def trials(self) -> list[Trial]:
        out = []
        for i, (w, o) in enumerate(zip(self.prefill, self.other)):
            extra = (("pair", i), ("injected_word", None))
            if "no_injection" in self.cfg.conditions:
                out.append(Trial(NAME, "no_injection", w, None, None, f"pair:{i}", 0, None, (("pair", i),)))
            for L in self.layers:
                for s in self.cfg.strengths:
                    for cond in self.cfg.conditions:
                        if cond == "no_injection":
                            continue
                        injected = o if cond == "random_other_concept" else w
                        extra = (("pair", i), ("injected_word", injected))
                        out.append(Trial(NAME, cond, w, L, float(s), f"pair:{i}", 0, None, extra))
            if self.cfg.transcription and self.cfg.measure == "generate":
                out.append(Trial(NAME, "transcription_clean", w, None, None, f"repeat:{i}", 0, None,
                                 (("pair", i), ("injected_word", None))))
                for L in self.layers:
                    for s in self.cfg.strengths:
                        out.append(Trial(NAME, "transcription", w, L, float(s), f"repeat:{i}", 0, None,
                                         (("pair", i), ("injected_word", w))))
        return out

    def prepare(self, model: Any) -> None:
        self.vectors = extract_concept_vectors(model, self.words, layers=self.layers, fmt=self.cfg.fmt,
                                               system=self.cfg.system)

    def prompt(self, model: Any, i: int):
        exp = protocol.experiment(NAME)
        sent, word = self.sentences[i], self.prefill[i]
        turns = [Turn(t["role"], t["content"].format(sentence=sent, word=word)) for t in exp["turns"]]
        rp = render(model.tokenizer, turns, fmt=self.cfg.fmt, system=self.cfg.system)
        sent_span = rp.token_span_of(sent)
        question = exp["turns"][-1]["content"]
        q_span = rp.token_span_of(question, last=True)
        w_start = rp.find(word, after=rp.find(sent)[1])  # the prefilled word, after the sentence
        return rp, Window.span(*sent_span), Window.span(*q_span), rp.token_span(*w_start)

    def repeat_prompt(self, model: Any, i: int):
        """Experiment 2's repeat prompt for pair ``i``'s sentence, and the sentence's token window."""
        from .thoughts_vs_text import task_turns

        sent = self.sentences[i]
        rp = render(model.tokenizer, task_turns("repeat", sent), fmt=self.cfg.fmt, system=self.cfg.system)
        return rp, Window.span(*rp.token_span_of(sent, last=True))

    def build(self, model: Any, trial: Trial) -> TrialInput:
        i = int(trial.get("pair"))
        if trial.condition.startswith("transcription"):
            rp, window = self.repeat_prompt(model, i)
            info = {"sentence": self.sentences[i], "prefilled_word": self.prefill[i], "task": "repeat",
                    "injected_word": trial.get("injected_word"), "window": window.to_dict()}
            mx = int(protocol.experiment("thoughts_vs_text")["max_new_tokens"]["repeat"])
            if trial.condition == "transcription_clean":
                return TrialInput(rp, [], mx, info)
            v = self.vectors.get(trial.get("injected_word"), trial.layer)
            return TrialInput(rp, [Injection(v, trial.layer, trial.strength, window, label=trial.get("injected_word"))],
                              mx, info)
        rp, sent_w, q_w, word_span = self.prompt(model, i)
        info = {"sentence": self.sentences[i], "prefilled_word": self.prefill[i],
                "injected_word": trial.get("injected_word"), "prefill_span": list(word_span)}
        mx = self.cfg.max_new_tokens
        if trial.condition == "no_injection":
            return TrialInput(rp, [], mx, dict(info, window=None))
        window = q_w if trial.condition == "question_turn" else sent_w
        v = self.vectors.get(trial.get("injected_word"), trial.layer)
        info["window"] = window.to_dict()
        return TrialInput(rp, [Injection(v, trial.layer, trial.strength, window, label=trial.get("injected_word"))],
                          mx, info)

    # ---- the generation-free measure ------------------------------------------------
    def execute_logits(self, model: Any, inputs: Sequence[TrialInput]) -> list[dict]:
        """log P(intent reply) − log P(apology reply), each a log-sum-exp over its reply variants.

        The replies are scored by teacher forcing, packed after one copy of the prompt per
        trial where the model allows it (``reply_scoring``); the injection windows end inside
        the prompt, so the replies see the injected prompt but are not injected themselves.
        The dose is the injection's norm over the mean residual norm of the row, replies
        included when packed."""
        from ..reply_scoring import build_reply_layout, packing_supported, score_replies

        packed = packing_supported(model)
        lay = build_reply_layout(model, [x.prompt for x in inputs], list(REPLIES), packed)
        injs = [inputs[i].injections or None for i in lay.item]
        scores, doses = score_replies(model, lay, injs, len(REPLIES), with_doses=True)
        lp = reply_logprobs(scores, lay.item, len(inputs))
        lo = intent_logodds(lp)
        out = []
        for j in range(len(inputs)):
            first = lay.item.index(j)
            dose = doses[first][0] if doses[first] else None
            out.append({"intent_logodds": float(lo[j]), "reply_logprobs": dict(zip(REPLIES, lp[j].tolist())),
                        "doses": [dose] if dose is not None else [], "packed_replies": packed})
        return out


class PrefillIntentLogits(PrefillIntent):
    """Same trials, scored by the logit measure instead of generation (runner calls ``execute``)."""

    def execute(self, model: Any, inputs: Sequence[TrialInput]) -> list[dict]:
        return self.execute_logits(model, inputs)
