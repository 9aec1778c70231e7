"""Command line: ``introspect-mech SUBCOMMAND ...`` (also ``python -m introspect_mech``).

Errors raised on purpose (``IntrospectError``) print as one line naming the fix and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, IntrospectError


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

    from .store import check_out_dir

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_out_dir(Path(args.out).parent, "--out folder")
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

    from .concepts import check_word
    from .runner import check_run_settings

    check_strength(args.strength)
    check_word(args.concept)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    check_run_settings(1, args.temperature, args.seed, None)
    if args.json:
        from .store import check_out_dir

        check_out_dir(Path(args.json).parent, "--json folder")
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
    if model.context_length and len(prompt) + args.max_new_tokens > model.context_length:
        raise ConfigError(f"the prompt ({len(prompt)} tokens) plus --max-new-tokens {args.max_new_tokens} exceeds "
                          f"the model's context of {model.context_length}; lower --max-new-tokens")
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


def _items(text: str, what: str) -> list[str]:
    """A comma-separated CLI list; an empty list (``--layers ''``, ``--strengths ,``) is an error, not 'none'."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{what} is empty; pass a comma-separated list such as {'4,8' if 'strength' in what else '0.5,0.67'}")
    return items


def _floats(text: str) -> list[float]:
    """Strengths from the CLI: each checked, duplicates (4 and 4.0) listed once."""
    from .inject import check_strength

    out: list[float] = []
    for x in _items(text, "--strengths"):
        s = check_strength(x)
        if s not in out:
            out.append(s)
    return out


# CLI option → config field, per experiment. An option an experiment does not use is refused, not ignored.
RUN_OPTIONS: dict[str, dict[str, str]] = {
    "injected-thoughts": {"layers": "layers", "strengths": "strengths", "concepts": "concepts",
                          "n_concepts": "n_concepts", "trials": "trials", "control_trials": "control_trials",
                          "controls": "controls", "control_per_cell": "control_per_cell",
                          "yes_bias_per_cell": "yes_bias_per_cell", "alt_per_cell": "alt_per_cell",
                          "variant": "variant", "max_new_tokens": "max_new_tokens"},
    "thoughts-vs-text": {"layers": "layers", "strengths": "strengths", "n_pairs": "n_sentences"},
    "prefill-intent": {"layers": "layers", "strengths": "strengths", "n_pairs": "n_pairs", "measure": "measure",
                       "max_new_tokens": "max_new_tokens"},
    "intentional-control": {"n_pairs": "n_pairs"},
}
_CONVERT = {"layers": lambda v: _items(v, "--layers"), "strengths": _floats,
            "controls": lambda v: None if v == "all" else tuple(_items(v, "--controls"))}


def _experiment_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The experiment's config from the options the user gave; defaults live only in the config dataclasses."""
    if args.experiment == "injected-thoughts":
        from .experiments.injected_thoughts import InjectedThoughts as cls, InjectedThoughtsConfig as cfg_cls
    elif args.experiment == "thoughts-vs-text":
        from .experiments.thoughts_vs_text import ThoughtsVsText as cls, ThoughtsVsTextConfig as cfg_cls
    elif args.experiment == "prefill-intent":
        from .experiments.prefill_intent import PrefillIntent, PrefillIntentConfig as cfg_cls, PrefillIntentLogits

        cls = PrefillIntentLogits if args.measure == "logits" else PrefillIntent
    elif args.experiment == "intentional-control":
        from .experiments.intentional_control import IntentionalControl as cls, IntentionalControlConfig as cfg_cls
    else:  # argparse restricts the choices; this guards programmatic calls
        raise IntrospectError(f"unknown experiment {args.experiment!r}")
    allowed = RUN_OPTIONS[args.experiment]
    every = {k for opts in RUN_OPTIONS.values() for k in opts}
    unused = [k for k in sorted(every - set(allowed)) if getattr(args, k, None) is not None]
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ConfigError(f"{args.experiment} does not use {flags}; remove it (its options: "
                          f"{', '.join('--' + k.replace('_', '-') for k in allowed)}, --format)")
    if args.experiment == "prefill-intent" and args.measure == "logits" and args.max_new_tokens is not None:
        raise ConfigError("prefill-intent --measure logits generates nothing; remove --max-new-tokens")
    kw: dict[str, Any] = {"fmt": args.format}
    for opt, fld in allowed.items():
        v = getattr(args, opt)
        if v is None:
            continue
        v = _CONVERT.get(opt, lambda x: x)(v)
        if v is not None:
            kw[fld] = v
    cfg = cfg_cls(**kw)
    cfg.validate()
    return cls, cfg


def _batch_size(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    if not text.strip().isdigit():
        raise ConfigError(f"--batch-size must be an integer >= 1 or 'auto', got {text!r}")
    return int(text)


def _since_process_start() -> float:
    """Seconds since this process started (Linux /proc; falls back to time since the CLI was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def cmd_run(args: argparse.Namespace) -> int:
    marks = {"cli_entered": _since_process_start()}
    from .runner import check_run_settings, run_sweep
    from .store import check_out_dir

    # everything that can be checked without the model is checked before it loads, and nothing is written
    cls, cfg = _experiment_config(args)
    check_out_dir(args.out)
    bs = _batch_size(args.batch_size)
    check_run_settings(bs, args.temperature, args.seed, args.decode)
    marks["options_checked"] = _since_process_start()
    model = _load(args)
    marks["model_loaded"] = _since_process_start()
    exp = cls(model, cfg)
    res = run_sweep(exp, model, args.out, batch_size=bs, temperature=args.temperature, seed=args.seed,
                    progress=not args.no_progress, decode=args.decode)
    marks["sweep_returned"] = _since_process_start()
    print(f"{res.n_trials} trials in {args.out}/results.jsonl ({res.n_done_before} already done, "
          f"{res.n_generated} generated in {res.seconds:.1f} s"
          + (f", {res.trials_per_second:.2f} trials/s)" if res.n_generated else ")"))
    print(f"next: introspect-mech report {args.out}")
    if os.environ.get("INTROSPECT_MECH_TIMING"):  # start-up breakdown for benchmarks/bench_startup.py
        marks["generation_s"] = res.seconds
        marks["startup_s"] = marks["sweep_returned"] - res.seconds
        print(json.dumps({"timing": marks}), file=sys.stderr)
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Move unreadable lines of a run's store aside (kept in results.jsonl.corrupt); re-running regenerates them."""
    from .store import ResultStore, RunLock

    path = Path(args.run) / "results.jsonl"
    if not path.exists():
        raise ConfigError(f"{args.run} has no results.jsonl; pass a run folder")
    with RunLock(args.run):
        kept, moved = ResultStore.writer(path).quarantine_corrupt_lines()
    print(f"{path}: kept {kept} records, moved {moved} unreadable line(s) to {path.name}.corrupt"
          + ("; re-run the sweep's command to regenerate those trials" if moved else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(args.run, grader=args.grader, figures_dir=args.figures_dir, png=not args.no_png,
                       judge_url=args.judge_url, compare=args.compare or ())
    print(out["table"])
    print("\nfigures:")
    for name, paths in out["figures"].items():
        print(f"  {name}: {', '.join(v for k, v in paths.items() if k != 'json')}")
    print(f"summary: {args.run}/summary.json; report: {out['html']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.task == "exp3-intent":
        return _calibrate_exp3(args)
    if args.grader not in ("rules", "rules-literal"):
        raise ConfigError("Exp 1 calibration of a judge runs through `python -m introspect_mech.grading.calibrate "
                          "--grader openai ...`; `calibrate --task exp1` scores the offline rules")
    from .grading.calibrate import main as calibrate_main

    argv = (["--split", args.split, "--grader", args.grader] + (["--data", args.data] if args.data else [])
            + (["--out", args.out] if args.out else []) + (["--store"] if args.store else []))
    return calibrate_main(argv)


def _calibrate_exp3(args: argparse.Namespace) -> int:
    """Score the Exp 3 grader (offline classifier or a judge with the paper's prompt) on the shipped labels."""
    from .grading import calibrate_intent as ci
    from .report import make_grader
    from .store import atomic_write_json

    if args.grader == "rules":
        rep = ci.calibrate_intent(ci.offline_verdicts, "rules (grading/intent.py)", args.data, args.split)
    else:
        judge = make_grader(args.grader, base_url=args.judge_url, cache_path=args.cache)
        rep = ci.calibrate_intent(judge.intended, args.grader, args.data, args.split, binary=True)
    agree = ci.annotator_agreement(args.data)
    print(rep.to_markdown())
    if agree["n"]:  # only sets with two annotators' labels (label_a, label_b) have this
        print(f"Annotator agreement before adjudication (all {agree['n']} rows): {agree['agreement']:.3f}, "
              f"3-way kappa {agree['kappa_3way']:.3f}, intent kappa {agree['kappa_intent']:.3f}")
    if args.out:
        atomic_write_json(Path(args.out), {**rep.to_dict(), "annotator_agreement": agree})
    return 0


ANALYSES = {"anomaly": "anomaly_detection", "concordance": "concordance_heads", "thought-control": "thought_control",
            "attention": "attention_plots"}


def cmd_analyze(args: argparse.Namespace) -> int:
    """Dispatch to ``analyses.<module>.main(argv)``; each analysis owns its options (``analyze NAME --help``)."""
    import importlib

    mod = importlib.import_module(f"analyses.{ANALYSES[args.analysis]}")
    return int(mod.main(list(args.rest)) or 0)


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

    p = sub.add_parser("run", help="run (or resume) an experiment sweep into a results store")
    p.add_argument("experiment", choices=["injected-thoughts", "thoughts-vs-text", "prefill-intent",
                                          "intentional-control"])
    _add_model_args(p)
    p.add_argument("--out", required=True, help="run folder (re-run the same command to resume)")
    # experiment options default to None: the experiment's config dataclass holds the defaults (the paper's)
    p.add_argument("--layers", default=None, help="indices or depth fractions (default 0.33,0.5,0.67,0.83)")
    p.add_argument("--strengths", default=None, help="default: the paper's (1,2,4,8 for Exp 1; 1..16 for Exp 2/3)")
    p.add_argument("--n-pairs", type=int, default=None, help="Exp 2-4: sentences / pairs used (max 50)")
    p.add_argument("--measure", default=None, choices=["generate", "logits"],
                   help="Exp 3: graded replies, or the generation-free intent-vs-apology log-odds")
    p.add_argument("--concepts", default=None,
                   help="'paper', category names (famous_people,countries,concrete_nouns,abstract_nouns,verbs), or words")
    p.add_argument("--n-concepts", type=int, default=None, help="use only the first N concepts of each selected set")
    p.add_argument("--trials", type=int, default=None, help="samples per (concept, layer, strength) (default 1)")
    p.add_argument("--control-trials", type=int, default=None, help="no-injection trials (false positives; default 100)")
    p.add_argument("--controls", default=None,
                   help="comma list of control, yes_bias, random_vector, negated, scaling, alt_prompt (default all)")
    p.add_argument("--control-per-cell", type=int, default=None, help="random/negated/scaling trials per cell (10)")
    p.add_argument("--yes-bias-per-cell", type=int, default=None, help="(default 20)")
    p.add_argument("--alt-per-cell", type=int, default=None, help="(default 6)")
    p.add_argument("--variant", default=None, choices=["2025", "2026"])
    p.add_argument("--format", default="auto", choices=["auto", "chat", "raw"])
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the paper's (Exp 1: 100, Exp 3: 20)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; the paper's statistics use 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", default=None,
                   help="rows generated at once (continuous decoding: slots), or 'auto' (sized from free memory); "
                        "default 128 slots for continuous decoding on CPU (256 on GPU), 32 rows for hf/compact; "
                        "a resumed run keeps the size it started with")
    p.add_argument("--decode", default=None, choices=["continuous", "compact", "hf"],
                   help="continuous (default for local models): trials of any prompts share a running batch and a "
                        "finished row's slot goes to the next trial, each trial sampling from its own seeded stream; "
                        "hf: one HF generate per batch of one prompt, seeded per batch (default for --remote); "
                        "compact: hf with finished rows dropped. A resumed run keeps the method it started with")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="grade a run, write summary tables with CIs and figures")
    p.add_argument("run", help="run folder")
    p.add_argument("--grader", default="rules", help="'rules' (offline) or 'openai:MODEL' (LLM judge)")
    p.add_argument("--judge-url", default=None, help="base URL of an OpenAI-compatible endpoint")
    p.add_argument("--figures-dir", default=None, help="where to write figures (default RUN/figures)")
    p.add_argument("--no-png", action="store_true", help="HTML figures only")
    p.add_argument("--compare", nargs="*", default=None,
                   help="Exp 4: other runs (e.g. the base model) drawn side by side in one figure")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("analyze", help="mechanism analyses (anomaly, concordance, thought-control, attention)",
                       add_help=False)
    p.add_argument("analysis", choices=sorted(ANALYSES))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the analysis (see analyze NAME --help)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("repair", help="move unreadable lines of a run's results.jsonl aside, keeping the rest")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("calibrate", help="score a grader against labelled responses")
    p.add_argument("--task", default="exp1", choices=["exp1", "exp3-intent"],
                   help="exp1: the shared externally graded Exp 1 set; exp3-intent: the packaged Exp 3 labels")
    p.add_argument("--grader", default="rules",
                   help="'rules' (offline; 'rules-literal' without the related-concept step), or for "
                        "exp3-intent a judge: 'hf:MODEL' or 'openai:MODEL'")
    p.add_argument("--judge-url", default=None, help="base URL of an OpenAI-compatible endpoint")
    p.add_argument("--cache", default=None, help="judge verdict cache (JSONL)")
    p.add_argument("--data", default=None, help="labelled JSONL (default: the task's own set)")
    p.add_argument("--split", default="test", choices=["test", "dev", "all"])
    p.add_argument("--out", default=None)
    p.add_argument("--store", action="store_true",
                   help="exp1: record recall/precision in the package, where the Exp 1 report reads them")
    p.set_defaults(func=cmd_calibrate)
    for name, sp in sub.choices.items():
        sp.add_argument("--verbose", action="store_true",
                        help="show library chatter hidden by default (transformers deprecation notes, the GGUF "
                             "conversion bar); also INTROSPECT_MECH_VERBOSE=1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        from .verbosity import set_verbose

        set_verbose(True)
    threads = os.environ.get("INTROSPECT_MECH_THREADS")
    if threads:  # e.g. 1 when several jobs share a small CPU: oversubscribed OpenMP threads thrash badly
        import torch

        torch.set_num_threads(int(threads))
    try:
        return int(args.func(args) or 0)
    except IntrospectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, permissions: the environment, not a bug
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}; fix that and re-run the same command (stored results are kept)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume (every finished batch is stored)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
