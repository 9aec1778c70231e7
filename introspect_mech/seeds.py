"""Integer seeds derived from labels: the one way the toolkit turns "what this draw is for" into a seed.

Why a hash and not ``hash()`` or a running RNG: a seed must be the same in every process and on
every resume (Python's ``hash`` of a string is salted per process), and it must not depend on how
many other draws came before it (a random-vector control keeps its direction when other trials are
added or removed). SHA-256 of the parts joined by ``:``, first 32 bits.
"""

from __future__ import annotations

import hashlib
from typing import Any


def seed_from(*parts: Any) -> int:
    """A 32-bit seed from ``parts`` (each turned into text with ``str``), stable across processes and runs."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)
