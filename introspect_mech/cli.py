"""Command line: ``introspect-mech SUBCOMMAND ...`` (also ``python -m introspect_mech``).

Errors raised on purpose (``IntrospectError``) print as one line naming the fix and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import IntrospectError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="embedded alias (smollm2-135m-instruct [default], gemma-3-270m), local path or HF id")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--remote", action="store_true", help="run on NDIF via nnsight (needs NDIF_API_KEY)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")


def _load(args: argparse.Namespace, attention: bool = False):
    from .models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, remote=args.remote,
                      trust_remote_code=args.trust_remote_code, attention=attention)


def _words(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from . import protocol

    if text == "paper":
        return protocol.concept_words()
    cats = protocol.category_words()
    if text in cats:
        return cats[text]
    return [w for w in (s.strip() for s in text.split(","))]


def cmd_vectors(args: argparse.Namespace) -> int:
    from .concepts import extract_concept_vectors

    model = _load(args)
    t0 = time.perf_counter()
    cv = extract_concept_vectors(model, _words(args.words), layers=args.layers, cache=not args.no_cache,
                                 batch_size=args.batch_size)
    dt = time.perf_counter() - t0
    out = cv.save(args.out)
    how = "loaded from cache" if cv.meta.pop("loaded_from_cache", None) else f"extracted in {dt:.1f} s"
    print(f"{len(cv.words)} concept vectors × {len(cv.layers)} layers (d={cv.d_model}) from {model.name}, "
          f"{how} → {out} (+ .json)")
    mid = cv.layers[len(cv.layers) * 2 // 3]
    print(f"mean ‖v‖ at layer {mid}: {float(cv.norms()[:, cv.layers.index(mid)].mean()):.2f}; "
          f"mean ‖h‖ there: {float(cv.mean_norms[cv.layers.index(mid)]):.2f}")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    from .concepts import ConceptVectors, extract_concept_vectors
    from .execution import generate
    from .experiments.exp1_prompt import exp1_prompt
    from .inject import Injection, Window, check_strength
    from .prompts import Turn, render

    check_strength(args.strength)
    model = _load(args)
    layer = model.arch.resolve_layer(args.layer)
    if args.vectors:
        cv = ConceptVectors.load(args.vectors, model)
    else:
        cv = extract_concept_vectors(model, [args.concept], layers=[layer])
    vec = cv.get(args.concept, layer)
    if args.prompt is None:
        p = exp1_prompt(model.tokenizer, fmt=args.format)
        prompt, window = p.rendered, p.window
        where = f"from token {p.start} (the '\\n\\n' before 'Trial 1') through every generated token"
    else:
        prompt = render(model.tokenizer, [Turn("user", args.prompt)], fmt=args.format)
        window, where = Window.all(), "on every token"
    inj = Injection(vec, layer, args.strength, window, label=args.concept)
    gen = generate(model, [prompt, prompt], [None, inj], max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, seed=args.seed)
    dose = gen.doses[1][0]
    print(f"model: {model.name}  layer: {layer}/{model.arch.n_layers - 1}  concept: {args.concept!r}  "
          f"strength: {args.strength}  effective dose ‖s·v‖/mean‖h‖: {dose:.3f}")
    print(f"injection {where}\n")
    print("── without injection " + "─" * 40)
    print(gen.texts[0].strip())
    print("── with injection " + "─" * 43)
    print(gen.texts[1].strip())
    if args.json:
        Path(args.json).write_text(json.dumps({"clean": gen.texts[0], "injected": gen.texts[1], "dose": dose,
                                               "layer": layer, "strength": args.strength, "concept": args.concept}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="introspect-mech", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("vectors", help="extract concept vectors (mean subtraction) and save them")
    _add_model_args(p)
    p.add_argument("--words", default="paper",
                   help="'paper' (the 50 concept words), a category name, or a comma-separated list")
    p.add_argument("--layers", default=None, help="comma-separated indices or depth fractions (default: all)")
    p.add_argument("--out", required=True, help="output path (writes OUT.safetensors and OUT.json)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached vectors")
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("steer", help="generate with an injected concept, next to the un-injected text")
    _add_model_args(p)
    p.add_argument("--concept", default="dust")
    p.add_argument("--layer", default="0.67", help="layer index or depth fraction (default 0.67)")
    p.add_argument("--strength", type=float, default=4.0)
    p.add_argument("--prompt", default=None,
                   help="a user message (injected on all tokens); default: the paper's Exp 1 prompt")
    p.add_argument("--format", default="auto", choices=["auto", "chat", "raw"])
    p.add_argument("--vectors", default=None, help="saved concept vectors to use (default: extract, cached)")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.set_defaults(func=cmd_steer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except IntrospectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
