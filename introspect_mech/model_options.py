"""The model options of every command that runs a model: ``--model --device --dtype --remote --adapter
--trust-remote-code``.

Why one definition: the experiment commands, the organism commands and every analysis load the model
under study, and a choice that works for one (a GPU, bfloat16, NDIF, an organism adapter) must work
for all of them, with the same spelling and the same checks (``models.load_model``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .models import Model

MODEL_OPTIONS = ("--model", "--device", "--dtype", "--remote", "--adapter", "--trust-remote-code")
MODEL_HELP = "embedded alias (smollm2-135m-instruct [default], gemma-3-270m), local path or HF id"


def add_model_args(p: argparse.ArgumentParser, *, several: bool = False, default: str | None = None) -> None:
    """Add the model options to ``p``. ``several``: ``--model`` (and ``--adapter``) take comma lists, for
    analyses that compare models (``models_from_args``); ``default``: another default model (list)."""
    help_ = MODEL_HELP if default is None else MODEL_HELP.replace(" [default]", "") + f" (default: {default})"
    p.add_argument("--model", default=default, help=help_ + ("; a comma list for several models" if several else ""))
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--remote", action="store_true", help="run on NDIF via nnsight (needs NDIF_API_KEY)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")
    p.add_argument("--adapter", default=None,
                   help="organism adapter folder (from `organism train`) merged into the model's weights"
                        + ("; a comma list gives one per model (empty: none)" if several else ""))


def load_model_from_args(args: argparse.Namespace, attention: bool = False) -> Model:
    """The model the options name."""
    return _load(args, args.model, args.adapter, attention)


def _load(args: argparse.Namespace, model: str | None, adapter: str | None, attention: bool) -> Model:
    from .models import load_model

    return load_model(model, device=args.device, dtype=args.dtype, remote=args.remote,
                      trust_remote_code=args.trust_remote_code, attention=attention, adapter=adapter)


def models_from_args(args: argparse.Namespace, attention: bool = False) -> list[Model]:
    """Every model of a comma list ``--model A,B`` (``add_model_args(several=True)``), each loaded with the same
    device, dtype and remote options; ``--adapter`` is one folder for every model or a comma list aligned with
    the models (an empty entry: that model without an adapter, e.g. ``--model smollm2,smollm2 --adapter ,ORG``)."""
    names = [m.strip() for m in (args.model or "").split(",")]
    if not any(names):
        names = [""]
    adapters = [a.strip() for a in args.adapter.split(",")] if args.adapter else [""]
    if len(adapters) == 1:
        adapters = adapters * len(names)
    if len(adapters) != len(names):
        raise ConfigError(f"--adapter lists {len(adapters)} folders for {len(names)} models; give one per model "
                          "(an empty entry for none) or a single one for all")
    return [_load(args, n or None, a or None, attention) for n, a in zip(names, adapters)]
