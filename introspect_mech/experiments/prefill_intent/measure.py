"""Exp 3's logit measure: log P(an intent reply) − log P(an apology reply), teacher-forced after the prompt.

One home for the experiment (``PrefillIntent``'s logit measure) and the concordance analysis's metric, so the
two cannot drift apart.
"""

from __future__ import annotations

from typing import Sequence

import torch

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
