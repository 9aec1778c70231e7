"""The benchmark's floors (``benchmarks/floor.py``): the counts they rest on, checked by brute force on a tiny model.

The numbers in RESULTS.md's *Speed* section are fractions of these floors, so a wrong count would make
every fraction wrong; timings themselves are measured in benchmarks/, never asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import floor  # noqa: E402


@pytest.mark.usefixtures("single_thread")
def test_own_kv_bytes_count_every_column_each_fed_token_reads(tiny_model_of):
    m = tiny_model_of("llama")
    a = m.arch
    per = 2 * a.n_layers * a.n_kv_heads * a.head_dim * 4  # float32 keys and values, every layer
    assert floor.kv_bytes_per_position(m) == per
    own, new = [3, 0, 5], [4, 1, 0]
    cols = 0
    for o, n in zip(own, new):
        for j in range(1, n):  # the j-th generated token, fed back, sees the own prompt and j reply tokens
            cols += o + j
    assert floor.own_kv_read_bytes(m, own, new) == cols * per
    vocab = m.hf.get_output_embeddings().weight.shape[0]
    assert floor.logits_bytes(m, new) == 2 * 4 * vocab * sum(new)


def test_read_bandwidth_is_a_rate():
    bw = floor.read_bandwidth(megabytes=8, repeats=1)
    assert 1e8 < bw < 1e13  # bytes/s: between 0.1 GB/s and 10 TB/s on any machine this runs on


@pytest.mark.usefixtures("single_thread")
def test_minimal_decode_step_computes_the_models_logits(tiny_model_of):
    """The decode-step bound (benchmarks/minimal_step.py) is only a bound on *this* model's step if it computes
    it: its logits for one decode step equal HF's over the same cache (float32 rounding apart)."""
    import minimal_step

    hf = tiny_model_of("llama").hf
    assert minimal_step.check_against_hf(hf, rows=3, columns=6) < 1e-4
    dec = minimal_step.MinimalDecoder(hf, rows=3, columns=6)
    other = hf.config.__class__.from_dict({**hf.config.to_dict(), "model_type": "gemma3_text"})
    with pytest.raises(ValueError, match="Llama-family"):
        minimal_step.MinimalDecoder(type("M", (), {"config": other})(), rows=1, columns=1)
    assert len(dec.keys) == hf.config.num_hidden_layers
