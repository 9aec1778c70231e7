"""Session fixtures for the real embedded model (SmolLM2-135M-Instruct); imported by integration tests."""

from __future__ import annotations

import pytest

import introspect_mech as im


@pytest.fixture(scope="session")
def smol():
    return im.load_model()


@pytest.fixture(scope="session")
def smol_eager():
    return im.load_model(attention=True)


@pytest.fixture(scope="session")
def smol_vectors(smol):
    from introspect_mech.concepts import extract_concept_vectors

    return extract_concept_vectors(smol)
