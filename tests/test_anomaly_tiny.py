"""Anomaly-probe mechanics on a tiny model: a planted shared direction is recovered by held-out-concept probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.anomaly_detection import AnomalyConfig, _folds, collect, probe_layer
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
    res = probe_layer(rows, L, _folds(rows, 4, 0), cfg.strengths)
    cos_u = abs(float(np.array(res["direction"]) @ u.numpy()))
    # measured: planted AUC 0.99, |cos(probe, u)| 0.40; unplanted AUC 0.38, |cos| 0.09 (random in 64-d: ~0.1)
    if planted:
        assert res["auc_held_out_concepts"] > 0.9
        assert cos_u > 0.3
    else:
        # no shared direction: a probe cannot generalise to held-out concepts
        assert res["auc_held_out_concepts"] < 0.7
        assert cos_u < 0.2
