"""Thought-control decomposition on the real model: attention + MLP writes account for the residual change."""

from __future__ import annotations

import pytest

from analyses.thought_control import contributions

from _real import smol  # noqa: F401

pytestmark = pytest.mark.integration


def test_writes_sum_to_residual_change(smol):
    c, meta = contributions(smol, n_pairs=3)
    assert meta["n_pairs"] == 3 and len(c.residual) == smol.arch.n_layers == len(c.delta)
    for L in range(1, smol.arch.n_layers):
        # pre-norm Llama block: r_L − r_{L−1} = attn_L + mlp_L, so the think − don't differences of their
        # projections on layer L's direction agree (float noise only)
        lhs = c.delta[L]["mean"]
        rhs = c.attention[L]["mean"] + c.mlp[L]["mean"]
        assert lhs == pytest.approx(rhs, abs=1e-3 + 1e-4 * abs(lhs)), L
