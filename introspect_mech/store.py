"""Append-only JSONL results store and atomic file writes.

Why this shape: a sweep of thousands of generations must survive a crash (or a
SIGKILL) with nothing lost and nothing duplicated. Each batch's records are written
with a *single* ``write`` on an ``O_APPEND`` descriptor and fsynced, so a batch is
either fully in the file or (if the process died mid-write) leaves one partial last
line. On open, a partial last line is cut off; records are keyed by ``trial_id`` so a
resumed run skips exactly the trials already stored.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import ArtifactError, MissingFileError
from .tempfiles import OWNER_TAG_PATTERN, RANDOM_PART, owner_tag, remove_stale


def _umask_mode() -> int:
    """mkstemp creates files 0600; artefacts should get the usual 0666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_name(prefix: str, suffix: str) -> re.Pattern[str]:
    """Names of this writer's temp files for one target: owner-tagged, or the older untagged format."""
    return re.compile(re.escape(prefix) + f"(?:{OWNER_TAG_PATTERN})?{RANDOM_PART}" + re.escape(suffix))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + ``os.replace`` (never half-written).

    Temp files of the same target left by a killed writer are removed first (see ``tempfiles``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, _temp_name(f".{path.name}.", ".tmp"))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Let ``write(tmp_path)`` produce the file (e.g. a PNG exporter), then move it into place.

    The temp file keeps ``path``'s suffix (exporters pick the format from it); ones of the same
    target left by a killed writer are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, _temp_name(f".{path.stem}.", path.suffix))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{owner_tag()}", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """Records (dicts with a unique ``trial_id``) in an append-only JSONL file."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise MissingFileError(f"no results file at {self.path}; run a sweep first (`introspect-mech run ...`)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        self._ids: set[str] | None = None
        self._repair_tail()

    def _repair_tail(self) -> None:
        """Cut a partial last line left by a crash mid-write (the batch it belonged to is re-run)."""
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            # find the last newline; everything after it is a partial record
            pos, chunk = size, 65536
            last_nl = -1
            while pos > 0 and last_nl < 0:
                start = max(0, pos - chunk)
                f.seek(start)
                buf = f.read(pos - start)
                i = buf.rfind(b"\n")
                if i >= 0:
                    last_nl = start + i
                pos = start
            f.truncate(last_nl + 1)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records())

    def records(self) -> list[dict]:
        """All records, first occurrence of each ``trial_id`` (duplicates cannot be written, but are tolerated)."""
        out, seen = [], set()
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ArtifactError(
                        f"{self.path}:{lineno} is not valid JSON ({exc.msg}); the results file is corrupt — "
                        "move it aside and re-run the sweep (completed trials in a good copy are kept)"
                    ) from None
                if not isinstance(rec, dict) or "trial_id" not in rec:
                    raise ArtifactError(f"{self.path}:{lineno} is not a trial record (no trial_id)")
                if rec["trial_id"] in seen:
                    continue
                seen.add(rec["trial_id"])
                out.append(rec)
        self._ids = seen
        return out

    @property
    def ids(self) -> set[str]:
        if self._ids is None:
            self.records()
        return set(self._ids or ())

    def append(self, records: Iterable[dict]) -> int:
        """Append records not already stored, in one write + fsync. Returns how many were written."""
        known = self.ids
        fresh = []
        for r in records:
            if r["trial_id"] in known:
                continue
            known.add(r["trial_id"])
            fresh.append(r)
        if not fresh:
            return 0
        data = "".join(json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) + "\n" for r in fresh).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self._ids = known
        return len(fresh)

    def __len__(self) -> int:
        return len(self.ids)
