"""The experiment registry: every ``ExperimentSpec`` by name, the one list the CLI and the report loop over.

The paper's four experiments register themselves here (each folder's ``SPEC``); another one is added with
``register(spec)`` from its own module, and then has ``introspect-mech run CLI_NAME``, a report and
``report --compare`` without any other file changing.
"""

from __future__ import annotations

from ..errors import ArtifactError, ConfigError
from . import injected_thoughts, intentional_control, prefill_intent, thoughts_vs_text
from .spec import ExperimentSpec

_SPECS: dict[str, ExperimentSpec] = {}


def register(spec: ExperimentSpec) -> ExperimentSpec:
    """Add ``spec``; its name and CLI name must be new."""
    for other in _SPECS.values():
        if {spec.name, spec.cli_name} & {other.name, other.cli_name}:
            raise ConfigError(f"experiment {spec.name!r} ({spec.cli_name}) clashes with {other.name!r} "
                              f"({other.cli_name}); give it another name")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _SPECS.pop(name, None)


def specs() -> list[ExperimentSpec]:
    return list(_SPECS.values())


def get(name: str) -> ExperimentSpec:
    """The spec of a stored run's ``experiment`` (manifest or record)."""
    if name not in _SPECS:
        raise ArtifactError(f"unknown experiment {name!r}; expected one of {', '.join(_SPECS)}")
    return _SPECS[name]


def by_cli_name(cli_name: str) -> ExperimentSpec:
    for s in _SPECS.values():
        if s.cli_name == cli_name:
            return s
    raise ConfigError(f"unknown experiment {cli_name!r}; choose from {', '.join(s.cli_name for s in _SPECS.values())}")


for _spec in (injected_thoughts.SPEC, thoughts_vs_text.SPEC, prefill_intent.SPEC, intentional_control.SPEC):
    register(_spec)
