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
from typing import TYPE_CHECKING, Sequence

from ... import protocol
from ...concepts import ConceptVectors
from ...inject import Injection, Window
from ...prompts import RenderedPrompt, Turn
from ...runner import Trial, TrialInput
from ..base import SweepExperiment
from .config import NAME, PrefillIntentConfig
from .measure import REPLIES, intent_logodds, reply_logprobs

if TYPE_CHECKING:
    from ...models import Model

class PrefillIntent(SweepExperiment):
    """The Exp 3 protocol. With ``measure="logits"`` it has ``execute`` (the runner then scores replies by
    teacher forcing instead of generating): the config's measure alone chooses, there is no second class."""

    name = NAME
    cfg: PrefillIntentConfig

    def __init__(self, model: Model, cfg: PrefillIntentConfig) -> None:
        super().__init__(model, cfg)
        self.sentences = protocol.sentences()[: cfg.n_pairs]
        self.words = [w.lower() for w in protocol.concept_words()]
        # one RNG per pair, so a pair's words do not depend on how many pairs are used
        rngs = [random.Random(f"{cfg.pairing_seed}:{i}") for i in range(len(self.sentences))]
        self.prefill = [r.choice(self.words) for r in rngs]
        self.other = [r.choice([w for w in self.words if w != p]) for r, p in zip(rngs, self.prefill)]
        self.vectors: ConceptVectors | None = None
        if cfg.measure == "logits":
            self.execute = self.execute_logits  # the runner's optional forward-only step (runner.ForwardOnly)

    def config(self) -> dict:
        d = super().config()
        d["conditions"] = list(self.cfg.conditions)
        return d

    def trials(self) -> list[Trial]:
        out = []
        for i, (w, o) in enumerate(zip(self.prefill, self.other)):
            key = f"pair:{i}"
            if "no_injection" in self.cfg.conditions:
                out.append(Trial(NAME, "no_injection", w, prompt_key=key, extra=(("pair", i),)))
            for L in self.layers:
                for s in self.strengths:
                    for cond in self.cfg.conditions:
                        if cond == "no_injection":
                            continue
                        injected = o if cond == "random_other_concept" else w
                        out.append(Trial(NAME, cond, w, L, s, prompt_key=key,
                                         extra=(("pair", i), ("injected_word", injected))))
            if self.cfg.transcription and self.cfg.measure == "generate":
                out.append(Trial(NAME, "transcription_clean", w, prompt_key=f"repeat:{i}",
                                 extra=(("pair", i), ("injected_word", None))))
                for L in self.layers:
                    for s in self.strengths:
                        out.append(Trial(NAME, "transcription", w, L, s, prompt_key=f"repeat:{i}",
                                         extra=(("pair", i), ("injected_word", w))))
        return out

    def prepare(self, model: Model) -> None:
        self.check_model(model)
        self.vectors = self.concept_vectors(self.words, self.layers)

    def prompt(self, i: int) -> tuple[RenderedPrompt, Window, Window, tuple[int, int]]:
        """Pair ``i``'s prompt, the sentence's and the final question's windows, and the prefilled word's tokens."""
        exp = protocol.experiment(NAME)
        sent, word = self.sentences[i], self.prefill[i]
        rp = self.render([Turn(t["role"], t["content"].format(sentence=sent, word=word)) for t in exp["turns"]])
        sent_span = rp.token_span_of(sent)
        question = exp["turns"][-1]["content"]
        q_span = rp.token_span_of(question, last=True)
        w_start = rp.find(word, after=rp.find(sent)[1])  # the prefilled word, after the sentence
        return rp, Window.span(*sent_span), Window.span(*q_span), rp.token_span(*w_start)

    def repeat_prompt(self, i: int) -> tuple[RenderedPrompt, Window]:
        """Experiment 2's repeat prompt for pair ``i``'s sentence, and the sentence's token window."""
        from ..thoughts_vs_text.protocol import task_turns

        sent = self.sentences[i]
        rp = self.render(task_turns("repeat", sent))
        return rp, Window.span(*rp.token_span_of(sent, last=True))

    def build(self, model: Model, trial: Trial) -> TrialInput:
        self.check_model(model)
        i = int(trial.get("pair"))
        if trial.condition.startswith("transcription"):
            rp, window = self.repeat_prompt(i)
            info = {"sentence": self.sentences[i], "prefilled_word": self.prefill[i], "task": "repeat",
                    "injected_word": trial.get("injected_word"), "window": window.to_dict()}
            mx = int(protocol.experiment("thoughts_vs_text")["max_new_tokens"]["repeat"])
            if trial.condition == "transcription_clean":
                return TrialInput(rp, [], mx, info)
            v = self.vectors.get(trial.get("injected_word"), trial.layer)
            return TrialInput(rp, [Injection(v, trial.layer, trial.strength, window, label=trial.get("injected_word"))],
                              mx, info)
        rp, sent_w, q_w, word_span = self.prompt(i)
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
    def execute_logits(self, model: Model, inputs: Sequence[TrialInput]) -> list[dict]:
        """log P(intent reply) − log P(apology reply), each a log-sum-exp over its reply variants.

        The replies are scored by teacher forcing, packed after one copy of the prompt per
        trial where the model allows it (``reply_scoring``); the injection windows end inside
        the prompt, so the replies see the injected prompt but are not injected themselves.
        The dose is the injection's norm over the mean residual norm of the row, replies
        included when packed."""
        from ...reply_scoring import build_reply_layout, packing_supported, score_replies

        self.check_model(model)
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
