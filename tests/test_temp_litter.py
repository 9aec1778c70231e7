"""Temp files and export folders left by a killed process are removed by the next writer, never
ones a live process is still writing; a truncated cached model is re-exported (review cases 5-7)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from introspect_mech import models
from introspect_mech.errors import ModelLoadError
from introspect_mech.store import atomic_write_text, atomic_write_with
from introspect_mech.tempfiles import owner_tag

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _dead_tag() -> str:
    return owner_tag().replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")


class Writer:
    """A subprocess stopped inside a write: ``code`` runs with ``hold()`` printing READY and sleeping."""

    def __init__(self, code: str) -> None:
        prog = "import sys, time\n" \
               "def hold(*_):\n    print('READY', flush=True)\n    time.sleep(120)\n" + textwrap.dedent(code)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.p = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()
        assert line.strip() == "READY", line

    def kill(self) -> None:
        self.p.kill()
        self.p.wait()
        self.p.stdout.close()


def _dot_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_png_temp_left_by_a_killed_report_is_removed_by_the_next_write(tmp_path):
    """Case 5: a report killed while exporting a PNG leaves a temp file; the next write removes it."""
    target = tmp_path / "figures" / "exp1_success.png"
    w = Writer(f"""
        from pathlib import Path
        from introspect_mech.store import atomic_write_with
        atomic_write_with({str(target)!r}, lambda p: (Path(p).write_bytes(b""), hold()))
    """)
    w.kill()
    litter = _dot_files(target.parent)
    assert len(litter) == 1 and litter[0].startswith(".exp1_success.") and litter[0].endswith(".png")
    atomic_write_with(target, lambda p: p.write_bytes(b"\x89PNG"))
    assert _dot_files(target.parent) == [] and target.read_bytes() == b"\x89PNG"


def test_a_temp_file_of_a_live_writer_is_left_alone(tmp_path):
    target = tmp_path / "exp1_success.png"
    w = Writer(f"""
        from pathlib import Path
        from introspect_mech.store import atomic_write_with
        atomic_write_with({str(target)!r}, lambda p: (Path(p).write_bytes(b"half"), hold()))
    """)
    try:
        live = _dot_files(tmp_path)
        atomic_write_with(target, lambda p: p.write_bytes(b"mine"))
        assert _dot_files(tmp_path) == live  # still being written by the other process
        atomic_write_text(tmp_path / "summary.json", "{}")
        assert _dot_files(tmp_path) == live
    finally:
        w.kill()
    atomic_write_with(target, lambda p: p.write_bytes(b"mine"))
    assert _dot_files(tmp_path) == []


def test_text_temp_files_and_untagged_old_ones(tmp_path):
    (tmp_path / f".summary.json.{_dead_tag()}abcd1234.tmp").write_text("{")
    old = tmp_path / ".summary.json.zz9_ab12.tmp"  # the format before owner tags: removed once an hour old
    recent = tmp_path / ".summary.json.yy8_cd34.tmp"
    old_png = tmp_path / ".fig.qq7_ef56.png"
    for p in (old, recent, old_png):
        p.write_text("")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(old_png, (two_hours_ago, two_hours_ago))
    other = tmp_path / ".other.json.zz9_ab12.tmp"  # another target's temp file: not this writer's business
    other.write_text("")
    os.utime(other, (two_hours_ago, two_hours_ago))
    atomic_write_text(tmp_path / "summary.json", "{}")
    assert _dot_files(tmp_path) == sorted([recent.name, old_png.name, other.name])
    atomic_write_with(tmp_path / "fig.png", lambda p: p.write_bytes(b"x"))
    assert _dot_files(tmp_path) == sorted([recent.name, other.name])


# ------------------------------------------------------------------------------------------
# The model export cache
# ------------------------------------------------------------------------------------------


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    """An embedded alias whose GGUF is a dummy file; exporting writes a small valid safetensors folder."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(models.EMBEDDED, "fake-model", models.EmbeddedModel("fake-model", lambda: gguf, "test"))
    exports: list[Path] = []

    def export(final: Path, write) -> None:  # stands in for the GGUF -> safetensors conversion
        from safetensors.torch import save_file

        exports.append(final)

        def fake_write(tmp: Path) -> None:
            save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(tmp / "model.safetensors"))

        real_atomic_dir_write(final, fake_write)

    real_atomic_dir_write = models.atomic_dir_write
    monkeypatch.setattr(models, "atomic_dir_write", export)
    return exports


def test_export_folders_left_by_a_killed_export_are_removed_on_the_next_load(tmp_path, fake_embedded):
    """Case 6: export folders of a killed first load are removed by the next load."""
    final = models.export_embedded("fake-model")
    models_dir = final.parent
    w = Writer(f"""
        from pathlib import Path
        from introspect_mech.models import atomic_dir_write
        def write(tmp):
            (Path(tmp) / "model.safetensors").write_bytes(b"\\0" * 4096)
            hold()
        atomic_dir_write(Path({str(final)!r}), write)
    """)
    litter = [p for p in models_dir.iterdir() if ".tmp-" in p.name]
    assert len(litter) == 1 and (litter[0] / "model.safetensors").exists()
    assert models.export_embedded("fake-model") == final
    assert litter[0].exists()  # its writer is alive: maybe a slow export, left alone
    w.kill()
    untagged = models_dir / f"{final.name}.tmp-ab12cd34"  # the older name format, a day old
    untagged.mkdir()
    day_ago = time.time() - 86400
    os.utime(untagged, (day_ago, day_ago))
    assert models.export_embedded("fake-model") == final  # the cache exists: a plain load
    assert sorted(p.name for p in models_dir.iterdir()) == [final.name]
    assert len(fake_embedded) == 1  # never re-exported


def test_a_truncated_cached_export_is_exported_again(fake_embedded):
    """Case 7: a truncated cached model.safetensors is exported again, not a traceback."""
    final = models.export_embedded("fake-model")
    weights = final / "model.safetensors"
    assert models.safetensors_problem(weights) is None
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) - 5])
    assert "truncated" in models.safetensors_problem(weights)
    with pytest.warns(UserWarning, match="corrupt .*exporting it again"):
        again = models.export_embedded("fake-model")
    assert again == final and weights.read_bytes() == full and len(fake_embedded) == 2
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


@pytest.mark.parametrize("data", [b"", b"\x05\x00", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
                                  b"\x08\x00\x00\x00\x00\x00\x00\x00not json"])
def test_safetensors_problem_names_broken_headers(tmp_path, data):
    p = tmp_path / "model.safetensors"
    p.write_bytes(data)
    assert models.safetensors_problem(p)


def test_a_truncated_model_folder_gives_a_one_line_error(tmp_path):
    from conftest import build_tiny_hf, make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    folder = tmp_path / "m"
    build_tiny_hf("llama", tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    weights = folder / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelLoadError, match="safetensors weights are corrupt .*save the model again") as err:
            models.load_model(str(folder))
    assert "\n" not in str(err.value)
