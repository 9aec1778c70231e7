"""Experiment 4: intentional control — "think about X" vs "don't think about X" while writing a sentence.

The assistant's turn is teacher-forced with the sentence; no generation. In one
forward pass per batch we read, at every layer, the cosine similarity between the
residual on the assistant's sentence tokens and the concept vector of ``{word}``, and
the same cosine against each of the 100 control words' vectors (the baseline band).

Per row and layer we keep the target cosine and the distribution of the control words'
cosines (mean, SD, 5 % and 95 % quantiles) and the target's percentile rank among them.
Metrics (in the report): the baseline band (spread over control words), per-pair percentile
ranks, paired gaps for every template pair (think/don't, the incentive pairs and the control
formats), and a *silent-decay index* = gap at the final layer / peak gap over layers (1: the
representation persists to the output; ≈0: "silent" control, gone by the last layer), with a
bootstrap interval over pairs.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Sequence

import torch

from ... import protocol
from ...concepts import ConceptVectors
from ...execution import forward
from ...prompts import RenderedPrompt, Turn
from ...record import RecordSpec
from ...runner import Trial, TrialInput
from ..base import BoundExperiment
from .config import NAME, IntentionalControlConfig

if TYPE_CHECKING:
    from ...models import Model


class IntentionalControl(BoundExperiment):
    name = NAME
    cfg: IntentionalControlConfig

    def __init__(self, model: Model, cfg: IntentionalControlConfig) -> None:
        super().__init__(model, cfg)
        exp = protocol.experiment(NAME)
        self.templates = {k: exp["templates"][k] for k in cfg.templates}
        if cfg.control_formats:
            for j, f in enumerate(exp["control_formats"]):
                self.templates[f"format_{j}"] = f
        self.sentences = protocol.sentences()[: cfg.n_pairs]
        self.words = [w.lower() for w in protocol.concept_words()]
        rng = random.Random(cfg.pairing_seed)
        self.pair_words = [rng.choice(self.words) for _ in self.sentences]
        self.control_words = [w.lower() for w in protocol.load_protocol()["control_words_exp4"]]
        self.vectors: ConceptVectors | None = None
        self.control_vectors: ConceptVectors | None = None

    def config(self) -> dict:
        d = super().config()
        d["templates"] = list(self.templates)
        return d

    def trials(self) -> list[Trial]:
        return [Trial(NAME, tname, w, prompt_key=f"{tname}:{i}", extra=(("pair", i),))
                for i, w in enumerate(self.pair_words) for tname in self.templates]

    def prepare(self, model: Model) -> None:
        self.check_model(model)
        self.vectors = self.concept_vectors(self.words)
        self.control_vectors = self.concept_vectors(self.control_words)
        # [K, n_layers, d]: the pair words first, then the control words
        self._stack = torch.cat([self.vectors.stack(), self.control_vectors.stack()], dim=0)

    def prompt(self, template: str, i: int) -> tuple[RenderedPrompt, tuple[int, int]]:
        """Pair ``i`` under ``template``, the assistant turn prefilled with the sentence; the sentence's tokens."""
        sent, word = self.sentences[i], self.pair_words[i]
        text = self.templates[template].format(sentence=sent, word=word)
        rp = self.render([Turn("user", text)], prefill=sent)
        return rp, rp.token_span_of(sent, last=True)

    def build(self, model: Model, trial: Trial) -> TrialInput:
        self.check_model(model)
        i = int(trial.get("pair"))
        rp, span = self.prompt(trial.condition, i)
        return TrialInput(rp, [], 0, {"sentence": self.sentences[i], "word": self.pair_words[i],
                                      "sentence_span": list(span), "template": trial.condition})

    def execute(self, model: Model, inputs: Sequence[TrialInput]) -> list[dict]:
        self.check_model(model)
        rec = forward(model, [x.prompt for x in inputs],
                      record=RecordSpec(layers=None, residual=False, cosine_with=self._stack, logits=False))
        n_words = len(self.words)
        out = []
        for r, x in enumerate(inputs):
            a, b = x.info["sentence_span"]
            w_idx = self.words.index(x.info["word"])
            target, ctrl_mean, ctrl_sd, q05, q95, pct = [], [], [], [], [], []
            for L in range(self.n_layers):
                c = rec.row(rec.cosine[L][r], r)[a:b].mean(0).double()  # [K] mean over the sentence tokens
                t = c[w_idx]
                target.append(float(t))
                cc = c[n_words:]  # the control words' cosines: the baseline *distribution* for this pair
                ctrl_mean.append(float(cc.mean()))
                ctrl_sd.append(float(cc.std()))
                q05.append(float(torch.quantile(cc, 0.05)))
                q95.append(float(torch.quantile(cc, 0.95)))
                # percentile rank of the target among the control words (ties count half)
                pct.append(float(((cc < t).sum() + 0.5 * (cc == t).sum()) / len(cc)))
            out.append({"cos_target": target, "cos_control_mean": ctrl_mean, "cos_control_sd": ctrl_sd,
                        "cos_control_q05": q05, "cos_control_q95": q95, "target_percentile": pct,
                        "response": None})
        return out
