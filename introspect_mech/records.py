"""What a stored trial record holds, and the check that runs before a report reads one.

Each experiment declares its record as a ``TypedDict`` extending ``TrialRecord`` (the fields every
sweep writes); keys a record may lack are declared in a ``total=False`` part. The same declaration
is the contract between the two halves of an experiment — the protocol fills the fields (through
``TrialInput.info`` and ``execute``), the report reads them — and what ``check_records`` verifies.

Why check at all: reports read records back by key. A record edited by hand, written by another
tool or damaged on disk (``condition`` missing, ``response: null``, ``layer: "14"``) used to surface
as a ``KeyError``/``TypeError`` traceback deep inside a summary. Checking every record against its
experiment's declared fields first turns that into one line naming the record and field.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Sequence, TypedDict

from .errors import ArtifactError


class TrialRecord(TypedDict):
    """The fields of every sweep record that reports read (the runner writes these and more)."""

    trial_id: str
    experiment: str
    condition: str
    concept: str | None
    layer: int | None
    strength: float | None
    prompt_key: str
    sample: int
    category: str | None
    extra: dict
    dose: float | None


def _accepted(annotation: Any) -> tuple[type, ...]:
    """The runtime types a declared field type accepts (``float`` takes ``int`` too; containers by kind)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _accepted(a))
    if annotation is type(None):
        return (type(None),)
    if annotation is float:
        return (int, float)
    if origin is not None:
        return (origin,)
    return (annotation,)


def _type_names(types_: tuple[type, ...]) -> str:
    names = []
    for t in types_:
        n = "null" if t is type(None) else t.__name__
        if n not in names:
            names.append(n)
    return " or ".join(names)


def record_fields(record_type: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Field → (accepted types, required) of a record ``TypedDict``."""
    hints = typing.get_type_hints(record_type)
    required = getattr(record_type, "__required_keys__", frozenset(hints))
    return {k: (_accepted(t), k in required) for k, t in hints.items()}


def check_records(records: Sequence[dict], record_type: type, experiment: str, where: str) -> None:
    """Every record belongs to ``experiment`` and has each declared field with a declared type."""
    fields = record_fields(record_type)
    for i, r in enumerate(records, 1):
        if r.get("experiment") != experiment:
            raise ArtifactError(f"{where}: record {i} ({r.get('trial_id')}) is from experiment "
                                f"{r.get('experiment')!r}, but the manifest says {experiment!r}; the manifest "
                                "does not belong to these results — restore the run's own manifest")
        for name, (accepted, required) in fields.items():
            if name not in r:
                if not required:
                    continue
                raise ArtifactError(f"{where}: record {i} ({r.get('trial_id')}) has no {name!r} field; it was edited "
                                    "or written by another tool — restore it, or `introspect-mech repair` and re-run")
            v: Any = r[name]
            if isinstance(v, bool) or not isinstance(v, accepted):
                raise ArtifactError(f"{where}: record {i} ({r.get('trial_id')}) field {name!r} is {v!r:.60}, expected "
                                    f"{_type_names(accepted)}; restore the record, or `introspect-mech repair` and re-run")


def check_manifest(manifest: Any, where: str, known: Sequence[str]) -> str:
    """The manifest is an object naming one of the ``known`` experiments (and, if present, a model object)."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where} is not a run manifest (expected a JSON object, got {type(manifest).__name__}); "
                            "restore it from the run")
    exp = manifest.get("experiment")
    if exp not in known:
        raise ArtifactError(f"{where} names no known experiment ({exp!r}); expected one of {', '.join(known)} — "
                            "restore the manifest from the run")
    if "model" in manifest and not isinstance(manifest["model"], dict):
        raise ArtifactError(f"{where}: 'model' must be an object (name, fingerprint, ...), got "
                            f"{type(manifest['model']).__name__}; restore the manifest from the run")
    if not isinstance(manifest.get("config", {}), dict):
        raise ArtifactError(f"{where}: 'config' must be an object; restore the manifest from the run")
    return exp
