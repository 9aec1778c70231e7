"""Anomaly-probe mechanics on a tiny model: a planted shared direction is recovered by held-out-concept probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.anomaly_detection import AnomalyConfig, held_out_folds, collect, probe_layer
from introspect_mech.concepts import ConceptVectors

pytestmark = pytest.mark.usefixtures("single_thread")


def _vectors(model, words, layer, shared: torch.Tensor | None, scale=6.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.arch.d_model
    vs = torch.randn(len(words), 1, d, generator=g) * scale / d ** 0.5
    if shared is not None:
        vs = vs + shared[None, None, :] * scale
    return ConceptVectors(words, [layer], vs, {}, mean_norms=torch.tensor([10.0]))


@pytest.mark.parametrize("planted", [True, False])
def test_planted_direction_recovered_only_when_planted(tiny_model_of, planted):
    m = tiny_model_of("llama")
    L = 1
    words = [f"w{i}" for i in range(8)]
    u = torch.zeros(m.arch.d_model)
    u[3] = 1.0
    vecs = _vectors(m, words, L, u if planted else None)
    cfg = AnomalyConfig(injection_layer=L, n_concepts=8, strengths=[1.0, 2.0], n_trial_numbers=3,
                        n_random_concepts=2, n_folds=4)
    rows = collect(m, cfg, [L], L, words, vecs)
    res = probe_layer(rows, L, held_out_folds(rows, 4, 0), cfg.strengths)
    cos_u = abs(float(np.array(res["direction"]) @ u.numpy()))
    # measured: planted AUC 0.99, |cos(probe, u)| 0.40; unplanted AUC 0.38, |cos| 0.09 (random in 64-d: ~0.1)
    if planted:
        assert res["auc_held_out_concepts"] > 0.9
        assert cos_u > 0.3
    else:
        # no shared direction: a probe cannot generalise to held-out concepts
        assert res["auc_held_out_concepts"] < 0.7
        assert cos_u < 0.2


def test_causal_test_projects_from_the_window_with_a_shuffled_label_null(tiny_model_of):
    from analyses.anomaly_detection import causal_test, shuffled_probe_directions
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt

    m = tiny_model_of("llama")
    inj, layers = 0, [0, 2]
    words = [f"w{i}" for i in range(6)]
    vecs = _vectors(m, words, inj, torch.eye(m.arch.d_model)[5])
    cfg = AnomalyConfig(injection_layer=inj, n_concepts=6, strengths=[2.0], n_trial_numbers=2, n_random_concepts=1,
                        n_folds=3, causal_concepts=3, n_null=5, null="shuffled")
    rows = collect(m, cfg, layers, inj, words, vecs)
    folds = held_out_folds(rows, 3, 0)
    probes = {L: probe_layer(rows, L, folds, cfg.strengths) for L in layers}
    nulls = shuffled_probe_directions(rows, [2], 3, seed=0)
    assert all(np.allclose(a[2], b[2]) for a, b in zip(nulls, shuffled_probe_directions(rows, [2], 3, seed=0)))
    assert all(abs(np.linalg.norm(d[2]) - 1) < 1e-6 for d in nulls)
    assert all(abs(float(d[2] @ np.array(probes[2]["direction"]))) < 0.99 for d in nulls)  # not the real probe
    c = causal_test(m, cfg, inj, vecs, words, probes, rows)
    start = exp1_prompt(m.tokenizer).start
    assert start > 0 and c["hypothesis"]["start"] == start  # never the sink token at position 0
    assert c["n_null"] == 5 and c["min_p"] == pytest.approx(1 / 6) and 1 / 6 <= c["p_value"] <= 1
    assert "shuffled" in c["null_kind"] and len(c["null_effects"]) == 5
    assert [x["layer"] for x in c["hypothesis"]["components"]] == [2]  # only layers after the injection layer


def test_covariance_directions_live_in_the_data_span():
    from analyses.circuits import covariance_directions

    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 3, generator=g, dtype=torch.float64))[0]  # a 3-d subspace of R^64
    x = torch.randn(200, 3, generator=g, dtype=torch.float64) @ basis.T + 5.0  # offset: only the spread matters
    ds = covariance_directions(x, 10, seed=1)
    for d in ds:
        assert abs(float(d.norm()) - 1) < 1e-9
        assert float((d - basis @ (basis.T @ d)).norm()) < 1e-9  # nothing outside the data's span
    assert not torch.allclose(ds[0], ds[1])
