"""Append-only JSONL results store, the run lock, and atomic file writes.

Why this shape: a sweep of thousands of generations must survive a crash (or a
SIGKILL) with nothing lost and nothing duplicated, and a reader (``report``) must be
able to look at a live sweep without disturbing it.

- **One writer at a time.** A sweep holds ``RunLock`` (an ``flock`` on ``.lock`` in the
  run folder, which names the holder's pid); a second writer is refused with that pid.
  The kernel drops the lock when the holder dies, so a killed sweep leaves no stale lock.
- **Readers never modify the store.** ``ResultStore(path)`` opens read-only and ignores an
  unterminated last line (a batch still being written, or torn by a crash); it never cuts it.
- **The writer repairs.** ``ResultStore.writer(path)`` (under the lock) cuts a torn tail
  left by a crash, then appends each batch's records with a *single* ``write`` on an
  ``O_APPEND`` descriptor and an fsync. A failed write (disk full) is cut back to the
  previous end of file, so a batch is all or nothing.
"""

from __future__ import annotations

import errno
import fcntl
import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import ArtifactError, ConfigError, MissingFileError
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


def _json_default(obj: Any) -> Any:
    """Dataclasses (``Rate``, ``MeanCI``, ...) as their fields; anything else JSON has no type for as text."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default))


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


_MAX_LINE_PREVIEW = 60


def _bad_line(path: Path, lineno: int, why: str) -> ArtifactError:
    return ArtifactError(
        f"{path}:{lineno} is corrupt ({why}); the other records are intact: `introspect-mech repair "
        f"{path.parent}` moves unreadable lines to {path.name}.corrupt and keeps the rest (then re-run to "
        "regenerate those trials)")


def _parse_line(path: Path, lineno: int, line: bytes) -> dict:
    if b"\x00" in line:
        raise _bad_line(path, lineno, "it holds NUL bytes, a pattern left by a power loss")
    try:
        rec = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad_line(path, lineno, "not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _bad_line(path, lineno, f"not valid JSON: {exc.msg}") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("trial_id"), str):
        raise _bad_line(path, lineno, "not a trial record: no trial_id")
    return rec


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """Split into newline-terminated lines; returns (lines, bytes covered). An unterminated tail is left out."""
    end = data.rfind(b"\n") + 1
    return data[:end].split(b"\n")[:-1], end


class ResultStore:
    """Records (dicts with a unique ``trial_id``) in an append-only JSONL file.

    ``ResultStore(path)`` is a reader: the file is opened read-only, never modified, and an
    unterminated last line is ignored. ``ResultStore.writer(path)`` is the one writer of a run
    (hold ``RunLock`` on the folder): it creates the file, cuts a torn tail and appends.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = False) -> None:
        self.path = Path(path)
        self._writable = False
        if not self.path.exists():
            if not create:
                raise MissingFileError(f"no results file at {self.path}; run a sweep first (`introspect-mech run ...`)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        if self.path.is_dir():
            raise ArtifactError(f"{self.path} is a folder, not a results file")
        self._ids: set[str] | None = None

    @classmethod
    def writer(cls, path: str | os.PathLike) -> "ResultStore":
        """The run's writer (the caller holds ``RunLock``): creates the file and cuts a torn tail."""
        st = cls(path, create=True)
        st._writable = True
        st._repair_tail()
        return st

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ArtifactError(f"cannot read {self.path}: {exc.strerror}") from None

    def _repair_tail(self) -> None:
        """Cut a partial last line left by a crash mid-write (its batch is regenerated on resume)."""
        data = self._read()
        _, end = _complete_lines(data)
        if end != len(data):
            with open(self.path, "rb+") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records())

    def records(self) -> list[dict]:
        """All complete records, first occurrence of each ``trial_id`` (duplicates are tolerated, never written)."""
        lines, _ = _complete_lines(self._read())
        out, seen = [], set()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rec = _parse_line(self.path, lineno, line)
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
        """Append records not already stored, in one write + fsync. Returns how many were written.

        If the write fails (disk full, I/O error), the file is cut back to where it was, so the
        batch is either wholly stored or not at all, and the error says how to resume."""
        if not self._writable:
            raise ArtifactError(f"{self.path} was opened read-only; use ResultStore.writer() under the run lock")
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
        before = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, before)
                os.fsync(fd)
            except OSError:
                pass  # the torn tail is cut by the next writer
            what = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
            raise ArtifactError(f"could not write to {self.path} ({what}); {len(self.ids)} trials are stored safely — "
                                "fix it and re-run the same command to resume") from None
        finally:
            os.close(fd)
        self._ids = known
        return len(fresh)

    def quarantine_corrupt_lines(self) -> tuple[int, int]:
        """Move unreadable complete lines to ``NAME.corrupt`` and rewrite the store without them (writer only).

        Returns (kept, moved). The rewrite is atomic; the corrupt lines are kept, not deleted."""
        if not self._writable:
            raise ArtifactError(f"{self.path} was opened read-only; repair needs the run lock")
        data = self._read()
        lines, end = _complete_lines(data)
        good, bad = [], []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                _parse_line(self.path, lineno, line)
                good.append(line)
            except ArtifactError:
                bad.append(line)
        if bad:
            corrupt = self.path.with_name(self.path.name + ".corrupt")
            with open(corrupt, "ab") as f:
                f.write(b"".join(x + b"\n" for x in bad))
                f.flush()
                os.fsync(f.fileno())
            atomic_write_bytes(self.path, b"".join(x + b"\n" for x in good))
        self._ids = None
        return len(good), len(bad)

    def __len__(self) -> int:
        return len(self.ids)


class RunLock:
    """Exclusive lock on a run folder (``.lock``), held by the one process writing to it.

    ``flock`` is released by the kernel when the holder exits or is killed, so a lock can
    never go stale; the file itself only records who holds it (pid, command) for the message."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise ArtifactError(f"{self.folder} is being written by {holder}; wait for it to finish (or stop it), "
                                "or pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse an output folder that cannot be created or written, *without* creating anything.

    Called before a model loads, so a typo costs nothing and leaves nothing on disk."""
    p = Path(path)
    if str(path).strip() == "":
        raise ConfigError(f"{what} is empty; pass a folder such as runs/exp1")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is an existing file, not a folder; pass a folder path")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {p} lies under {probe}, which is a file; pass a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p}: {probe} is not writable (read-only or no permission); pass a writable folder")
    return p
