"""Quiet by default: library chatter that says nothing about the user's run is hidden unless asked for.

Why: a sweep's terminal should show one progress bar and the run's own messages. transformers
prints deprecation notes about its own internals on every process (``past_key_values`` /
``cache_params`` renamed to ``cache``, raised by the library's own calls, not by anything a user
can change), and its GGUF loader draws a conversion bar on the first load. Both are hidden here
by message (nothing else is filtered: warnings about the user's inputs still show), and shown
again by ``--verbose`` or ``INTROSPECT_MECH_VERBOSE=1``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from typing import Iterator

VERBOSE_ENV = "INTROSPECT_MECH_VERBOSE"

# transformers deprecation notes about its own renamed cache argument (log lines and FutureWarnings)
HIDDEN = (
    r"`past_key_values`/`cache_params` are deprecated",
    r"`past_key_values` is deprecated and will be removed",
    r"`cache_params` is deprecated and will be removed",
)
_HIDDEN_RE = re.compile("|".join(HIDDEN))
_state = {"verbose": os.environ.get(VERBOSE_ENV, "") not in ("", "0"), "installed": False}


def verbose() -> bool:
    return bool(_state["verbose"])


class _HideChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not _HIDDEN_RE.search(record.getMessage())


def warning_filters() -> None:
    """Hide (or, verbose, show) the known library deprecation chatter; called wherever transformers is imported."""
    for pattern in HIDDEN:
        warnings.filterwarnings("ignore" if not verbose() else "default", message=f".*{pattern}", category=FutureWarning)


def install() -> None:
    """Attach the filters (idempotent): a filter on transformers' log handler, and warning filters by message."""
    if _state["installed"]:
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging._configure_library_root_logger()
    except (ImportError, AttributeError):  # pragma: no cover - transformers is a dependency
        hf_logging = None
    hide = _HideChatter()
    # on the logger that emits the notes (records from it are dropped before any handler sees them) and on
    # transformers' own handler (the same notes raised from elsewhere in the library)
    logging.getLogger("transformers.utils.generic").addFilter(hide)
    handler = getattr(hf_logging, "_default_handler", None)
    if handler is not None:
        handler.addFilter(hide)
    warning_filters()
    _state["installed"] = True


def set_verbose(on: bool) -> None:
    """Show (True) or hide (False) the chatter listed in ``HIDDEN`` and the GGUF conversion bar."""
    _state["verbose"] = bool(on)
    install()
    warning_filters()


@contextmanager
def no_gguf_bar() -> Iterator[None]:
    """Hide the "Converting and de-quantizing GGUF tensors" bar (drawn by transformers with a bare tqdm)."""
    if verbose():
        yield
        return
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover
        yield
        return
    from functools import partial

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original
