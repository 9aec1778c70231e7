"""``introspect-mech organism train|eval``: the command-line face of the organism (kept apart from cli.py)."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..errors import ConfigError
from ..store import check_out_dir
from ..model_options import add_model_args


def _range(text: str, cast: Callable[[str], Any], what: str) -> tuple:
    if cast is int and str(text).strip().startswith("-"):  # '-3-5' split on '-' read as 3-5
        raise ConfigError(f"{what} {text!r}: layers are indices >= 0; write the range like 12-16")
    parts = [p.strip() for p in str(text).replace(":", "-").split("-") if p.strip()] if cast is int else \
        [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        vals = [cast(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a range; write it like {'12-16' if cast is int else '0.25,0.9'}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise ConfigError(f"{what} {text!r} must be LO-HI ({'layers' if cast is int else 'doses: LO,HI'})")
    return tuple(vals)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be comma-separated numbers") from None


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be comma-separated whole numbers") from None


def _mix(text: str) -> dict:
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ConfigError(f"--mix {text!r}: write it like concept=0.4,none=0.25,random=0.2,question=0.15") from None
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from ..model_options import load_model_from_args
    from .recipe import RecipeConfig
    from .train import TrainConfig, train_organism

    recipe = RecipeConfig(layers=_range(args.layers, int, "--layers"), dose=_range(args.dose, float, "--dose"),
                          paraphrases=not args.no_paraphrases, fmt=args.format, self_questions=args.self_questions)
    if args.n_english is not None:  # None: the recipe's own default, stated once in RecipeConfig
        recipe.n_english = args.n_english
    if args.mix:
        recipe.mix = _mix(args.mix)
    cfg = TrainConfig(batch_size=args.batch_size, warmup=args.warmup, rank=args.rank,
                      alpha=args.alpha, seed=args.seed, checkpoint_every=args.checkpoint_every,
                      use_prefix=not args.no_prefix, recipe=recipe,
                      snapshots=_ints(args.snapshots, "--snapshots") if args.snapshots else [],
                      init_adapter=args.init_adapter)
    for name in ("lr", "steps", "precision"):  # None: TrainConfig's default, stated once there
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.check_options()  # every option that needs no model, before the model loads
    check_out_dir(args.out)
    if args.adapter:
        raise ConfigError("organism train starts from a base model; drop --adapter (a warm start is --init-adapter)")
    if args.init_adapter is not None:
        from .adapter import check_adapter_path

        check_adapter_path(args.init_adapter)  # before the model loads
    model = load_model_from_args(args)
    train_organism(model, cfg, args.out, progress=not args.no_progress)
    print(f"next: introspect-mech organism eval --adapter {args.out} --out {args.out}/eval")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..model_options import load_model_from_args
    from .evaluate import EvalConfig, evaluate_organism, regrade

    if args.regrade:
        if args.out is not None:
            check_out_dir(args.out)
        regrade(args.regrade, args.out)
        if args.out:
            print(f"summary: {args.out}/summary.json, {args.out}/summary.md")
        return 0

    cfg = EvalConfig(layers=[x.strip() for x in args.layers.split(",") if x.strip()],
                     doses=_floats(args.doses, "--doses") if args.doses is not None else EvalConfig().doses, modes=tuple(m.strip() for m in args.modes.split(",")),
                     control_trials=args.control_trials, random_per_cell=args.random_per_cell,
                     yes_bias=not args.no_yes_bias, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, seed=args.seed, forced_naming=not args.no_forced_naming)
    cfg.validate()
    if args.out is not None:  # checked now, not after the whole evaluation has run
        check_out_dir(args.out)
    model = load_model_from_args(args)
    evaluate_organism(model, cfg, args.out, progress=not args.no_progress)
    if args.out:
        print(f"records: {args.out}/records.jsonl; summary: {args.out}/summary.json, {args.out}/summary.md")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from .ablation import AblationConfig, ablate_layers, load_switch, regrade_ablation

    if args.regrade:
        regrade_ablation(args.regrade)
        return 0
    if not args.out:
        raise ConfigError("organism ablate needs --out DIR (or --regrade DIR for a stored ablation)")
    if not args.adapter:
        raise ConfigError("organism ablate removes an adapter's LoRA layer by layer; pass --adapter PATH")
    cfg = AblationConfig(layer=args.layer, dose=args.dose, singles=not args.no_singles, block_size=args.block_size,
                         control_trials=args.control_trials, random_per_ablation=args.random,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    cfg.validate()
    if args.remote:
        raise ConfigError("organism ablate swaps local weights; drop --remote")
    model, switch = load_switch(args.adapter, name=args.model, device=args.device, dtype=args.dtype,
                                trust_remote_code=args.trust_remote_code)
    ablate_layers(model, switch, cfg, args.out, progress=not args.no_progress)
    print(f"records: {args.out}/records.jsonl; summary: {args.out}/summary.json, {args.out}/summary.md")
    return 0


def cmd_decodability(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..model_options import load_model_from_args
    from .decodability import organism_decodability

    layers = _ints(args.layers, "--layers")
    if not layers or min(layers) < 0:
        raise ConfigError(f"--layers {args.layers!r}: give layer indices >= 0, e.g. 12,14,16")
    if not args.ridge > 0 or args.ridge == float("inf"):
        raise ConfigError(f"--ridge must be a finite number > 0, got {args.ridge}")
    if args.n_english is not None:
        from .recipe import RecipeConfig

        RecipeConfig(n_english=args.n_english).validate()  # the training recipe's own check
    if args.out is not None:
        check_out_dir(args.out)
    model = load_model_from_args(args)
    rows = organism_decodability(model, layers=layers, n_english=args.n_english, ridge=args.ridge)
    print("| layer | train words | held-out words | first among the held-out | first among all candidates | "
          "top 10 among all | first is the word or related | shuffled-fit first among all (chance) |")
    print("|---|---|---|---|---|---|---|---|")
    for d in rows:
        print(f"| {d.layer} | {d.n_train} | {d.n_test} | {d.top1_among_test} | {d.top1_among_all} "
              f"of {d.n_candidates} | {d.top10_among_all} | {d.nearest_related} | "
              f"{d.shuffled_top1_among_all} |")
    if args.out:
        from ..store import atomic_write_json

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "decodability.json", [d.to_dict() for d in rows])
        print(f"written: {out}/decodability.json")
    return 0


def add_organism_parser(sub: Any) -> None:
    """Register ``organism train``, ``organism eval`` and ``organism ablate`` on the top-level subparsers."""
    org = sub.add_parser("organism", help="train and quickly evaluate the introspective model organism (LoRA)")
    osub = org.add_subparsers(dest="organism_command", required=True)

    p = osub.add_parser("train", help="train the organism adapter (resumes if OUT holds a checkpoint)")
    add_model_args(p)
    p.add_argument("--out", required=True, help="adapter folder (adapter.safetensors + adapter.json)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: TrainConfig's)")
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"],
                   help="matrix products in bfloat16 (default; 1.4x faster on CPUs with AMX/AVX512-BF16 and on "
                        "GPUs) or everything in float32 (recipes v2-v6)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: TrainConfig's)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--layers", default="12-16", help="injection layers LO-HI; LoRA adapts every layer above HI")
    p.add_argument("--dose", default="0.25,0.9", help="dose range LO,HI (‖s·v‖/mean‖h‖), drawn uniformly")
    p.add_argument("--mix", default=None, help="row kinds, e.g. concept=0.65,none=0.1,random=0.15,question=0.1 (v5's; default: RecipeConfig's)")
    p.add_argument("--n-english", type=int, default=None,
                   help="common English words added to the category lists (default: RecipeConfig's, 5000)")
    p.add_argument("--no-paraphrases", action="store_true", help="train on the paper's prompt only")
    p.add_argument("--self-questions", default="all", choices=["all", "no-yes", "none"],
                   help="yes/no questions about the assistant itself: all, drop those answered 'yes', or none")
    p.add_argument("--init-adapter", default=None, metavar="ADAPTER",
                   help="warm start (curriculum): begin from this adapter (same base model, rank, alpha, layers)")
    p.add_argument("--snapshots", default=None, help="also save the adapter after these steps, e.g. 300 (OUT/step-300)")
    p.add_argument("--format", default="auto", choices=["auto", "chat", "raw"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--no-prefix", action="store_true", help="run every row in full (slower; same loss)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = osub.add_parser("eval", help="quick held-out evaluation on the paper's 50 words (greedy and T=1)")
    add_model_args(p)
    p.add_argument("--out", default=None, help="folder for records.jsonl, summary.json, summary.md")
    p.add_argument("--layers", default="14", help="injection layers (indices or depth fractions)")
    p.add_argument("--doses", default=None, help="target doses ‖s·v‖/mean‖h‖, comma-separated (default: EvalConfig's, "
                                                 "0.5,0.85)")
    p.add_argument("--modes", default="greedy,sampled")
    p.add_argument("--control-trials", type=int, default=50, help="sampled no-injection trials")
    p.add_argument("--random-per-cell", type=int, default=50)
    p.add_argument("--no-yes-bias", action="store_true")
    p.add_argument("--no-forced-naming", action="store_true",
                   help="skip the rows whose reply is prefilled up to the concept (the naming ceiling)")
    p.add_argument("--regrade", default=None, metavar="EVAL_DIR",
                   help="grade and summarise a stored evaluation again (no model, no generation)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = osub.add_parser("ablate", help="layer-wise adapter ablation: detection on the held-out words with the LoRA "
                                       "removed from one layer, or a block of layers, at a time")
    add_model_args(p)
    p.add_argument("--out", default=None, help="folder for records.jsonl, summary.json, summary.md")
    p.add_argument("--regrade", default=None, metavar="ABLATION_DIR",
                   help="grade and summarise a stored ablation again (no model, no generation)")
    p.add_argument("--layer", type=int, default=14, help="injection layer")
    p.add_argument("--dose", type=float, default=0.5, help="target dose ‖s·v‖/mean‖h‖")
    p.add_argument("--block-size", type=int, default=3, help="adjacent adapted layers per block (0: no blocks)")
    p.add_argument("--no-singles", action="store_true", help="blocks only, no single-layer ablations")
    p.add_argument("--control-trials", type=int, default=30, help="sampled no-injection trials per ablation")
    p.add_argument("--random", type=int, default=0, help="greedy random norm-matched vectors per ablation")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_ablate)

    p = osub.add_parser("decodability", help="how much of a held-out word its concept vector carries: a ridge "
                                             "read-out fitted on the training words (the ceiling on naming)")
    add_model_args(p)
    p.add_argument("--out", default=None, help="folder for decodability.json")
    p.add_argument("--layers", default="14", help="vector layers, comma-separated indices")
    p.add_argument("--ridge", type=float, default=100.0, help="ridge penalty on standardised vectors")
    p.add_argument("--n-english", type=int, default=None, help="training words as in `organism train` (default: its)")
    p.set_defaults(func=cmd_decodability)
