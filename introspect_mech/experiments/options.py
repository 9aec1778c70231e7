"""Command-line options generated from an experiment's config dataclass.

Why: the config dataclass is the only place an experiment's defaults live. A field marked with
``opt(help)`` becomes ``--field-name`` on ``introspect-mech run CLI_NAME`` (``flag=`` renames it,
``parse=`` turns the text into the field's value, ``choices=`` restricts it); its help shows the
dataclass default. Every flag defaults to "not given", so the dataclass default is used unless the
user passed a value, and nothing is copied.

Nothing here imports torch: the CLI is built from these declarations before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, StrengthError

SYSTEM_HELP = ("system turn: 'auto' (default: none where the chat template allows it, else an explicit empty one), "
               "'none' (refuse templates that insert their own), 'empty', 'template' (the template's own default, "
               "e.g. SmolLM2's 'You are a helpful AI assistant named SmolLM...'), or the system prompt's text")


def opt(help: str, *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
        choices: Sequence[str] | None = None) -> dict[str, Any]:
    """Field metadata that puts a config field on the command line (see the module docstring)."""
    return {"cli": {"help": help, "flag": flag, "parse": parse, "choices": tuple(choices) if choices else None}}


@dataclass(frozen=True)
class CliOption:
    field: str
    flag: str
    help: str
    parse: Callable[[str], Any]
    choices: tuple[str, ...] | None
    default: Any

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _scalar_type(annotation: Any) -> Callable[[str], Any]:
    """``int``/``float``/``str`` of a field annotated ``T`` or ``T | None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    for t in (int, float, str):
        if t in args:
            return t
    raise TypeError(f"no parser for a config field of type {annotation!r}; pass opt(parse=...)")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def cli_options(cfg_cls: type) -> list[CliOption]:
    """The command-line options of a config dataclass, in field order."""
    hints = typing.get_type_hints(cfg_cls)
    out = []
    for f in dataclasses.fields(cfg_cls):
        meta = f.metadata.get("cli")
        if meta is None:
            continue
        parse = meta["parse"] or _scalar_type(hints[f.name])
        out.append(CliOption(f.name, meta["flag"] or "--" + f.name.replace("_", "-"), meta["help"], parse,
                             meta["choices"], _default(f)))
    return out


def as_option_text(v: Any) -> str:
    """A value as it is typed on the command line (lists comma-joined, 4.0 as 4, None as none)."""
    if isinstance(v, (list, tuple)):
        return ",".join(as_option_text(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "none" if v is None else str(v)


def add_config_arguments(p: argparse.ArgumentParser, cfg_cls: type) -> None:
    """One flag per ``opt`` field; each defaults to None (not given) and shows the dataclass default."""
    for o in cli_options(cfg_cls):
        default = as_option_text(o.default)
        p.add_argument(o.flag, dest=o.dest, default=None, choices=o.choices,
                       type=o.parse if o.parse in (int, float) else None,
                       help=f"{o.help} (default: {default})" if default != "" else o.help)


def given_options(cfg_cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave, by field name, parsed (``opt(parse=...)`` may raise a ``ConfigError``)."""
    out: dict[str, Any] = {}
    for o in cli_options(cfg_cls):
        text = getattr(args, o.dest, None)
        if text is None:
            continue
        out[o.field] = text if o.parse in (int, float) else o.parse(text)
    return out


def config_from_options(cfg_cls: type, given: Mapping[str, Any]) -> Any:
    """The config with the given options (the dataclass defaults for the rest), validated."""
    cfg = cfg_cls(**given)
    cfg.validate()
    return cfg


# ---- parsers shared by the experiments' options ------------------------------------------------


def items(text: str, what: str, example: str = "0.5,0.67") -> list[str]:
    """A comma-separated CLI list; an empty list (``--layers ''``, ``--strengths ,``) is an error, not 'none'."""
    out = [x.strip() for x in str(text).split(",") if x.strip()]
    if not out:
        raise ConfigError(f"{what} is empty; pass a comma-separated list such as {example}")
    return out


def layer_list(text: str) -> list[str]:
    """Layers as given (indices or depth fractions); each protocol resolves them once against its model."""
    return items(text, "--layers")


def _number(text: str, what: str = "--strengths") -> float:
    try:
        return float(text)
    except ValueError:
        raise StrengthError(f"{what}: a strength must be a number such as 4, got {text!r}") from None


def strength_list(text: str) -> list[float]:
    """Strengths from the CLI as numbers, duplicates (4 and 4.0) listed once; the config checks each."""
    out: list[float] = []
    for x in items(text, "--strengths", "4,8"):
        s = _number(x)
        if s not in out:
            out.append(s)
    return out


def optional_strength(text: str) -> float | None:
    """A strength, or None for 'none'/'off' (checked by the config)."""
    return None if str(text).strip().lower() in ("none", "off") else _number(text, "--random-fixed-strength ('none' "
                                                                                   "to skip)")
