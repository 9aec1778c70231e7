"""What a stored trial record must hold, per experiment, checked before a report reads it.

Why: reports read records back by key. A record edited by hand, written by another tool or
damaged on disk (``condition`` missing, ``response: null``, ``layer: "14"``) used to surface
as a ``KeyError``/``TypeError`` traceback deep inside a summary. Checking every record
against its experiment's fields first turns that into one line naming the record and field.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import ArtifactError

_NUM = (int, float)
_OPT = type(None)

COMMON: dict[str, tuple[type, ...]] = {
    "trial_id": (str,),
    "experiment": (str,),
    "condition": (str,),
    "concept": (str, _OPT),
    "layer": (int, _OPT),
    "strength": (*_NUM, _OPT),
    "prompt_key": (str,),
    "sample": (int,),
    "category": (str, _OPT),
    "extra": (dict,),
    "dose": (*_NUM, _OPT),
}

FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "injected_thoughts": {"response": (str,), "prompt": (str,)},
    "thoughts_vs_text": {"response": (str,), "task": (str,), "sentence": (str,), "candidates": (list,)},
    # generated replies (measure "generate") or the log-odds (measure "logits"): one of the two is present
    "prefill_intent": {"?response": (str, _OPT), "prefilled_word": (str,), "sentence": (str,),
                       "?intent_logodds": (*_NUM, _OPT)},
    "intentional_control": {"cos_target": (list,), "cos_control_mean": (list,), "cos_control_sd": (list,),
                            "?cos_control_q05": (list, _OPT), "?cos_control_q95": (list, _OPT),
                            "?target_percentile": (list, _OPT), "word": (str,), "template": (str,)},
}

KNOWN_EXPERIMENTS = tuple(FIELDS)
"""A field name starting with "?" may be absent; when present it must have the listed type."""


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is _OPT else t.__name__ for t in types)


def check_records(records: Sequence[dict], experiment: str, where: str) -> None:
    """Every record belongs to ``experiment`` and has each of its fields with the right type."""
    if experiment not in FIELDS:
        raise ArtifactError(f"{where}: unknown experiment {experiment!r}; expected one of {', '.join(FIELDS)}")
    fields = {**COMMON, **FIELDS[experiment]}
    for i, r in enumerate(records, 1):
        if r.get("experiment") != experiment:
            raise ArtifactError(f"{where}: record {i} ({r.get('trial_id')}) is from experiment "
                                f"{r.get('experiment')!r}, but the manifest says {experiment!r}; the manifest "
                                "does not belong to these results — restore the run's own manifest")
        for key, types in fields.items():
            name = key.lstrip("?")
            if name not in r and key.startswith("?"):
                continue
            if name not in r:
                raise ArtifactError(f"{where}: record {i} ({r['trial_id']}) has no {name!r} field; it was edited or "
                                    "written by another tool — restore it, or `introspect-mech repair` and re-run")
            v: Any = r[name]
            if isinstance(v, bool) or not isinstance(v, types):
                raise ArtifactError(f"{where}: record {i} ({r['trial_id']}) field {name!r} is {v!r:.60}, expected "
                                    f"{_type_names(types)}; restore the record, or `introspect-mech repair` and re-run")


def check_manifest(manifest: Any, where: str) -> str:
    """The manifest is an object naming a known experiment (and, if present, a model object); returns it."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where} is not a run manifest (expected a JSON object, got {type(manifest).__name__}); "
                            "restore it from the run")
    exp = manifest.get("experiment")
    if exp not in FIELDS:
        raise ArtifactError(f"{where} names no known experiment ({exp!r}); expected one of {', '.join(FIELDS)} — "
                            "restore the manifest from the run")
    if "model" in manifest and not isinstance(manifest["model"], dict):
        raise ArtifactError(f"{where}: 'model' must be an object (name, fingerprint, ...), got "
                            f"{type(manifest['model']).__name__}; restore the manifest from the run")
    if not isinstance(manifest.get("config", {}), dict):
        raise ArtifactError(f"{where}: 'config' must be an object; restore the manifest from the run")
    return exp
