"""Owner-tagged temporary names, and the removal of the ones a killed process left behind.

Why: every artefact is written under a temporary name beside its final path and renamed into
place, so a kill never leaves a half-written file under the final name -- but it does leave the
temporary one (a zero-byte ``.exp1_x.png`` temp from the PNG exporter, a 540 MB model export
folder). Each temporary name now carries its writer's host and pid, so the next writer can tell
litter (its writer is dead) from a file that another live process is still writing, and removes
only the former. Names without a checkable owner (the older format, another host sharing the
folder) are removed only once nothing in them has changed for ``STALE_AFTER_S``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

STALE_AFTER_S = 3600.0  # no writer takes an hour to write one temp file or export folder
REUSED_PID_AFTER_S = 24 * 3600.0  # a "live" owner this old is a recycled pid, not the writer
# mkstemp/mkdtemp append 8 characters from this alphabet.
RANDOM_PART = r"[a-z0-9_]{8}"
_OWNER = re.compile(r"tmp-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-")


def _host() -> str:
    """This host's name reduced to [A-Za-z0-9] (so the tag parses unambiguously)."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]


def owner_tag() -> str:
    """``tmp-HOST-PID-``: put into a temporary name so that a later run can check its writer."""
    return f"tmp-{_host()}-{os.getpid()}-"


OWNER_TAG_PATTERN = r"tmp-[A-Za-z0-9]*-\d+-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def _newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` or anything under it (a folder being filled changes inside)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    continue
    return newest


def is_stale(path: Path, now: float | None = None) -> bool:
    """True when the temporary ``path`` is litter: its writer (same host) is dead, or it is old enough."""
    now = time.time() if now is None else now
    try:
        age = now - _newest_mtime(path)
    except FileNotFoundError:
        return False  # already gone (renamed into place or removed by another cleaner)
    m = _OWNER.search(path.name)
    if m and m.group("host") == _host():
        pid = int(m.group("pid"))
        if pid != os.getpid() and not _pid_alive(pid):
            return True
        return age > REUSED_PID_AFTER_S
    return age > STALE_AFTER_S


def remove_stale(folder: Path, name: re.Pattern[str]) -> list[Path]:
    """Remove the entries of ``folder`` whose name fully matches ``name`` and that are stale.

    Never raises for a folder that does not exist or an entry that vanishes meanwhile: a cleanup
    must not turn a working command into a failing one.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not name.fullmatch(entry.name):
            continue
        path = Path(entry.path)
        if not is_stale(path, now):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            continue  # read-only folder, permissions: leave it
        removed.append(path)
    return removed
