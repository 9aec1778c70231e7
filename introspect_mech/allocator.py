"""The C allocator's settings for a sweep process: keep freed large blocks for the next decode step.

Why: a decode step allocates and frees the same few hundred tensors of 0.1-30 MB every time (hidden
states, MLP activations, attention scores, logits). glibc serves blocks above its mmap threshold with
fresh ``mmap`` calls and returns them to the kernel on ``free``, so every step page-faults its working
set back in: measured on SmolLM2 at 128 rows on this CPU, element-wise kernels ran at a fraction of
memory bandwidth and the system time of a sweep fell by a quarter with the settings below (a 128-row
Exp 1 decode 0.90x wall, 1 thread; ``benchmarks/``). The same settings as the documented environment
variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_``, applied from
inside the process because a command cannot set its own environment before the C library reads it.
The cost: up to ``TRIM`` bytes of freed memory stay with the process instead of going back to the OS.

Applied by the command line only (a library should not retune its host's allocator); API users can
call ``keep_freed_memory()`` themselves. ``INTROSPECT_MECH_KEEP_FREED=0`` turns it off (A/B runs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit: blocks below it come from the heap
TRIM = 2**30  # freed heap memory kept before it is returned to the OS
TOP_PAD = 256 * 2**20


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed large blocks (see the module docstring); False where it cannot
    (not Linux/glibc, or turned off with ``INTROSPECT_MECH_KEEP_FREED=0``), True when applied."""
    if os.environ.get("INTROSPECT_MECH_KEEP_FREED", "").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM),
                                                  (M_TOP_PAD, TOP_PAD)))
