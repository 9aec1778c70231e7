"""The CLI on the embedded model: vectors, steer, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from introspect_mech.cli import main

pytestmark = pytest.mark.integration


def test_vectors_then_steer(tmp_path, capsys):
    out = tmp_path / "vecs"
    assert main(["vectors", "--words", "dust,origami", "--layers", "0.67", "--out", str(out)]) == 0
    cfg = json.loads((tmp_path / "vecs.json").read_text())
    assert cfg["words"] == ["dust", "origami"] and cfg["layers"] == [19]
    res = tmp_path / "steer.json"
    assert main(["steer", "--concept", "dust", "--layer", "19", "--strength", "8", "--vectors", str(out),
                 "--max-new-tokens", "12", "--json", str(res)]) == 0
    text = capsys.readouterr().out
    assert "without injection" in text and "with injection" in text and "effective dose" in text
    data = json.loads(res.read_text())
    assert data["clean"] != data["injected"] and data["dose"] > 0


@pytest.mark.parametrize("argv,needle", [
    (["steer", "--layer", "42"], "out of range"),
    (["steer", "--layer", "1.7"], "outside [0, 1]"),
    (["steer", "--strength", "nan"], "not finite"),
    (["steer", "--concept", " "], "empty"),
    (["steer", "--model", "nope-model"], "unknown model"),
    (["steer", "--vectors", "/nonexistent/vecs"], "does not exist"),
])
def test_bad_input_gives_one_line_error(argv, needle, capsys):
    assert main(argv + ["--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
