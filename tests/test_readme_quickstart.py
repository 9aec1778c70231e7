"""The README's quick-start Python block runs as printed (on the real embedded model), so the first code a
reader copies cannot go stale when a module moves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README's Quick start has no python block"
    return m.group(1)


def test_quickstart_block_is_found():
    code = quickstart_code()
    assert "im.load_model()" in code and "im.generate" in code


@pytest.mark.integration
def test_readme_quickstart_runs(capsys):
    code = quickstart_code()
    ns: dict = {}
    exec(compile(code, str(README) + ":quick-start", "exec"), ns)  # noqa: S102 - the README's own code
    out = ns["out"]
    assert len(out.texts) == 2 and out.texts[0] != out.texts[1]
    assert not out.doses[0] and out.doses[1][0] > 0  # the injected row got a dose; the clean row none
    assert ns["rec"].residual[ns["layer"]].shape[-1] == ns["model"].arch.d_model
