"""Inputs of the concordance analysis: Exp 3 prompts with their token windows and concept vectors."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import torch

from introspect_mech.inject import Injection, Window
from introspect_mech.prompts import RenderedPrompt

if TYPE_CHECKING:
    from introspect_mech.experiments.prefill_intent.protocol import PrefillIntent

CONDITIONS = ("none", "matched")
"""No injection, and the prefilled word's own concept vector on the sentence."""


@dataclass(frozen=True, eq=False)
class PairInput:
    """One Exp 3 prompt with its token windows (unpadded, half-open) and the matching concept vector."""

    prompt: RenderedPrompt
    sentence: tuple[int, int]
    word: tuple[int, int]
    vector: torch.Tensor  # the prefilled word's concept vector at the injection layer
    label: str = ""  # the prefilled word
    other_vector: torch.Tensor | None = None  # control: another concept's vector (Exp 3's random_other_concept)
    other_label: str = ""

    def __post_init__(self) -> None:
        n = len(self.prompt)
        s0, s1 = self.sentence
        w0, w1 = self.word
        if not (0 <= s0 < s1 <= w0 < w1 <= n - 1):
            raise ValueError(f"windows must satisfy sentence < word < last token: sentence {self.sentence}, "
                             f"word {self.word}, prompt length {n}")

    @property
    def answer(self) -> int:
        return len(self.prompt) - 1

    def injection(self, layer: int, strength: float, other: bool = False) -> Injection:
        if other and self.other_vector is None:
            raise ValueError("this pair has no control (other-concept) vector")
        v, lab = (self.other_vector, self.other_label) if other else (self.vector, self.label)
        return Injection(v, layer, strength, Window.span(*self.sentence), label=lab)

    def as_other(self) -> "PairInput":
        """The same pair with the control vector in the matched slot (to score the other-concept condition)."""
        if self.other_vector is None:
            raise ValueError("this pair has no control (other-concept) vector")
        return replace(self, vector=self.other_vector, label=self.other_label, other_vector=None, other_label="")


def exp3_pairs(exp: PrefillIntent, pairs: Sequence[int], injection_layer: int) -> list[PairInput]:
    """``PairInput``s for pairs ``pairs`` of a ``PrefillIntent``; concept vectors at ``injection_layer``
    come from ``exp.vectors`` when they hold that layer, else they are extracted (and cached). The
    control vector is ``exp.other[i]``'s (a different concept word)."""
    vectors = exp.vectors
    if vectors is None or injection_layer not in vectors.layers:
        vectors = exp.concept_vectors(exp.words, [injection_layer])
    out = []
    for i in pairs:
        rp, sent_w, _q_w, word_span = exp.prompt(int(i))
        word, other = exp.prefill[int(i)], exp.other[int(i)]
        out.append(PairInput(rp, (sent_w.start, sent_w.end), tuple(word_span), vectors.get(word, injection_layer),
                             word, vectors.get(other, injection_layer), other))
    return out


def pair_inputs(exp: PrefillIntent | None, pairs: Sequence[Any], injection_layer: int) -> list[PairInput]:
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs given")
    if all(isinstance(p, PairInput) for p in pairs):
        return pairs
    if exp is None:
        raise ValueError("pass a PrefillIntent as `exp` to use pair indices, or pass PairInput objects")
    return exp3_pairs(exp, [int(p) for p in pairs], injection_layer)
