"""Error types. Each message names what went wrong *and* the fix.

They subclass the matching builtin (ValueError, FileNotFoundError, ...) so callers that
already catch those keep working, and ``IntrospectError`` so the CLI can print them as
one-line messages instead of tracebacks.
"""

from __future__ import annotations


class IntrospectError(Exception):
    """Base class of every error raised on purpose by introspect_mech."""


class ModelLoadError(IntrospectError, ValueError):
    """A model name is not an alias, a path, nor loadable."""


class ArchitectureError(IntrospectError, ValueError):
    """The model's module tree is not one we can map."""


class LayerError(IntrospectError, ValueError):
    """A layer index or depth fraction is out of range."""


class StrengthError(IntrospectError, ValueError):
    """An injection strength is NaN, infinite, or otherwise unusable."""


class ConceptError(IntrospectError, ValueError):
    """A concept word is empty, not a string, or unknown."""


class WindowError(IntrospectError, ValueError):
    """A token window cannot be located in, or does not fit, a prompt."""


class VectorError(IntrospectError, ValueError):
    """A vector has the wrong shape, dtype, or holds NaN/inf."""


class ArtifactError(IntrospectError, ValueError):
    """A saved file (vectors, results) is corrupt or belongs to another model."""


class MissingFileError(IntrospectError, FileNotFoundError):
    """A file the caller named does not exist."""


class ChatTemplateError(IntrospectError, ValueError):
    """A chat format was requested for a tokenizer that has no chat template."""


class ConfigError(IntrospectError, ValueError):
    """An experiment or run option is out of range or unknown."""
