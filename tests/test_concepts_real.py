"""Concept vectors on the embedded model: the paper's recipe, all layers in one run, artefacts, errors."""

from __future__ import annotations

import json

import pytest
import torch

import introspect_mech as im
from introspect_mech import protocol
from introspect_mech.concepts import ConceptVectors, concept_prompt, extract_concept_vectors, extract_contrastive
from introspect_mech.errors import ArtifactError, ConceptError, LayerError, MissingFileError, StrengthError, VectorError

from _real import smol, smol_vectors  # noqa: F401

pytestmark = pytest.mark.integration


def test_paper_words_all_layers(smol, smol_vectors):
    cv = smol_vectors
    assert cv.vectors.shape == (50, 30, 576)
    assert cv.words == [w.lower() for w in protocol.concept_words()]
    assert cv.layers == list(range(30))
    assert torch.isfinite(cv.vectors).all()
    assert cv.meta["method"] == "mean_subtraction" and cv.meta["model_fingerprint"] == smol.fingerprint
    # the published list: 100 entries, 'Butterflies' twice; no system turn beyond SmolLM2's forced empty one
    assert cv.meta["baseline_size"] == 100 and cv.meta["baseline_unique_words"] == 99
    assert cv.meta["baseline_deduplicated"] is False
    assert cv.meta["system_choice"] == "auto" and cv.meta["system_prompt"] == ""


def test_matches_independent_recipe(smol, smol_vectors):
    """Recompute one vector with plain HF hidden states (no toolkit recording code)."""
    layer = 12
    def last(word):
        p = concept_prompt(smol.tokenizer, word)
        with torch.no_grad():
            hs = smol.hf(torch.tensor([p.input_ids]), output_hidden_states=True).hidden_states
        return hs[layer + 1][0, -1]
    published = protocol.load_protocol()["baseline_words"]  # as published: 100 entries
    assert len(published) == 100 and published.count("Butterflies") == 2
    base = torch.stack([last(w) for w in published]).mean(0)
    ref = last("Dust") - base
    assert (smol_vectors.get("dust", layer) - ref).abs().max().item() < 1e-3
    # the prompt is the paper's, with the word lowercased and the generation prompt appended, and an
    # explicit empty system turn (SmolLM2's template would otherwise insert its own default system prompt)
    assert concept_prompt(smol.tokenizer, "Dust").text == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nTell me about dust<|im_end|>\n<|im_start|>assistant\n")


def test_deduplicated_baseline_is_an_option_recorded_in_metadata(smol):
    base = ["Butterflies", "Apple", "butterflies"]  # a repeat, as in the published list
    kw = dict(layers=[12], cache=False)
    dup = extract_concept_vectors(smol, ["dust"], baseline=base, **kw)
    ded = extract_concept_vectors(smol, ["dust"], baseline=base, dedupe_baseline=True, **kw)
    ref = extract_concept_vectors(smol, ["dust"], baseline=["Butterflies", "Apple"], **kw)
    assert dup.meta["baseline_size"] == 3 and dup.meta["baseline_deduplicated"] is False
    assert ded.meta["baseline_size"] == 2 and ded.meta["baseline_deduplicated"] is True
    assert dup.meta["baseline_unique_words"] == ded.meta["baseline_unique_words"] == 2
    assert torch.allclose(ded.get("dust", 12), ref.get("dust", 12), atol=1e-5)  # the repeat is dropped
    assert not torch.allclose(dup.get("dust", 12), ref.get("dust", 12), atol=1e-3)  # ... and it mattered


def test_save_load_roundtrip_and_validation(smol, smol_vectors, tmp_path):
    path = smol_vectors.save(tmp_path / "vecs")
    assert path.suffix == ".safetensors" and (tmp_path / "vecs.json").exists()
    cfg = json.loads((tmp_path / "vecs.json").read_text())
    assert cfg["model_fingerprint"] == smol.fingerprint and len(cfg["words"]) == 50
    back = ConceptVectors.load(tmp_path / "vecs", smol)
    assert torch.equal(back.vectors, smol_vectors.vectors) and back.words == smol_vectors.words
    # corrupt file
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "bad.json").write_text(json.dumps({"words": ["a"], "layers": [0]}))
    with pytest.raises(ArtifactError, match="corrupt"):
        ConceptVectors.load(tmp_path / "bad")
    with pytest.raises(MissingFileError, match="introspect-mech vectors"):
        ConceptVectors.load(tmp_path / "missing")
    # another model's vectors
    other = ConceptVectors(["x"], [0], torch.zeros(1, 1, 576), {"model_fingerprint": "deadbeef"})
    other.save(tmp_path / "other")
    with pytest.raises(ArtifactError, match="re-extract"):
        ConceptVectors.load(tmp_path / "other", smol)
    wrong_dim = ConceptVectors(["x"], [0], torch.zeros(1, 1, 8), {})
    with pytest.raises(VectorError, match="d_model"):
        wrong_dim.check_model(smol)


@pytest.mark.parametrize("word", ["", "   ", None, 3])
def test_bad_words(smol, word):
    with pytest.raises(ConceptError):
        extract_concept_vectors(smol, ["dust", word], layers=[3], cache=False)


def test_bad_layer_and_strength(smol, smol_vectors):
    with pytest.raises(LayerError, match="30 layers"):
        extract_concept_vectors(smol, ["dust"], layers=[30], cache=False)
    with pytest.raises(LayerError, match="depth fraction"):
        smol.arch.resolve_layer(1.5)
    v = smol_vectors.get("dust", 3)
    for bad in (float("nan"), float("inf"), "strong"):
        with pytest.raises(StrengthError):
            im.Injection(v, 3, bad)
    with pytest.raises(VectorError, match="d_model"):
        im.forward(smol, ["hi"], [im.Injection(torch.ones(8), 3, 1.0)])
    with pytest.raises(ConceptError, match="no vector"):
        smol_vectors.get("unicorns", 3)


def test_contrastive_pairs(smol):
    cv = extract_contrastive(smol, [("I feel very happy today", "I feel very sad today"),
                                    ("What a joyful day", "What a miserable day")], name="happy", layers=[5, 20])
    assert cv.vectors.shape == (1, 2, 576) and cv.meta["method"] == "contrastive"
    assert cv.get("happy", 20).norm() > 0
