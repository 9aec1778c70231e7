"""Thought-control decomposition: attention + MLP writes on one fixed direction account for the
residual change, so they telescope over layers; post-norm blocks (Gemma 3) included."""

from __future__ import annotations

import pytest

from analyses.thought_control import Contributions, contributions, summarize_model
from introspect_mech.stats import MeanCI

from _real import smol  # noqa: F401


def _check_identity(c, n_layers):
    for L in range(1, n_layers):
        lhs = c.delta[L].mean
        rhs = c.attention[L].mean + c.mlp[L].mean
        assert lhs == pytest.approx(rhs, abs=1e-3 + 1e-4 * abs(lhs)), L
    # one direction for every layer: the writes telescope to the change of the gap over any range
    res = [x.mean for x in c.residual]
    writes = sum(c.attention[L].mean + c.mlp[L].mean for L in range(1, n_layers))
    assert writes == pytest.approx(res[-1] - res[0], abs=1e-3 + 1e-4 * abs(res[-1] - res[0]))


@pytest.mark.integration
def test_writes_sum_to_residual_change(smol):
    c, meta = contributions(smol, n_pairs=3)
    assert meta["n_pairs"] == 3 and len(c.residual) == smol.arch.n_layers == len(c.delta)
    assert meta["direction_layer"] == smol.arch.n_layers - 1
    # pre-norm Llama block: r_L − r_{L−1} = attn_L + mlp_L
    _check_identity(c, smol.arch.n_layers)
    assert c.identity_error < 1e-3


@pytest.mark.usefixtures("single_thread")
def test_post_norm_blocks_use_the_normed_writes(tiny_model_of):
    """Tiny Gemma 3 (post-attention and post-FFN norms): the writes are taken after those norms, and
    the identity holds; the raw module outputs would not add up."""
    m = tiny_model_of("gemma3")
    assert m.arch.block.attn_write and m.arch.block.mlp_write  # recorded writes are the post-norms' outputs
    assert not tiny_model_of("llama").arch.block.mlp_write
    c, meta = contributions(m, n_pairs=2, direction_layer=1)
    assert meta["direction_layer"] == 1
    _check_identity(c, m.arch.n_layers)
    s = summarize_model(c, meta, m.arch.n_layers)
    assert s["decomposition_valid"] and s["attention_contribution"] is not None


def test_summary_reports_the_split_only_when_the_identity_holds():
    L = 8
    flat = lambda v: [MeanCI(v, v, v, 2) for _ in range(L)]  # noqa: E731
    res = [MeanCI(float(k), float(k), float(k), 2) for k in range(L)]  # grows by 1 per layer
    c = Contributions(res, flat(0.25), flat(0.75), flat(1.0), res, 0.0, {0: [float(k) for k in range(L)],
                                                                          1: [float(k) for k in range(L)]})
    s = summarize_model(c, {"direction_layer": L - 1}, L)
    # last quarter = layers 6, 7: the gap grows 5 -> 7 (+2) = attention 0.5 + MLP 1.5
    assert s["last_quarter_gap_growth"] == pytest.approx(2.0)
    assert s["last_quarter_attention_sum"] + s["last_quarter_mlp_sum"] == pytest.approx(2.0)
    assert s["projection_decay_index"] == pytest.approx(1.0)  # the peak is the last layer
    bad = Contributions(res, flat(0.25), flat(0.75), flat(1.0), res, 0.5, c.per_pair_residual)
    s = summarize_model(bad, {"direction_layer": L - 1}, L)
    assert not s["decomposition_valid"] and s["attention_contribution"] is None
    assert s["last_quarter_attention_sum"] is None and s["last_quarter_mlp_sum"] is None
