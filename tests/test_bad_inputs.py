"""Every bad input in the catalogue gets a one-line error that names the problem (and exit status 2)."""

from __future__ import annotations

import pytest

from bad_inputs import CASES, run_case

pytestmark = pytest.mark.integration


def test_catalogue_is_large():
    assert len(CASES) >= 60
    assert len({c.what for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input(case, tmp_path):
    code, msg = run_case(case, tmp_path)
    assert code == 2, msg
    assert msg.startswith("error: "), msg
    assert case.needle in msg, msg
    assert "Traceback" not in msg
    # validated before touching disk: a refused run leaves no manifest behind, so the corrected command works
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_a_refused_system_choice_writes_nothing(tmp_path):
    """Options are validated before the run folder is created."""
    case = next(c for c in CASES if c.what.startswith("system 'none'"))
    code, msg = run_case(case, tmp_path)
    assert code == 2 and not (tmp_path / "r").exists(), msg
