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
from .model_options import add_model_args, load_model_from_args


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
    model = load_model_from_args(args)
    t0 = time.perf_counter()
    cv = extract_concept_vectors(model, _words(args.words), layers=args.layers, cache=not args.no_cache,
                                 batch_size=args.batch_size, system=args.system, dedupe_baseline=args.dedupe_baseline)
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
    from .experiments.injected_thoughts.prompt import exp1_or_user_prompt
    from .inject import Injection, check_strength

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
    model = load_model_from_args(args)
    layer = model.arch.resolve_layer(args.layer)
    if args.vectors:
        cv = ConceptVectors.load(args.vectors, model)
    else:
        cv = extract_concept_vectors(model, [args.concept], layers=[layer], system=args.system)
    vec = cv.get(args.concept, layer)
    choice = exp1_or_user_prompt(model.tokenizer, args.prompt, fmt=args.format, system=args.system)
    prompt, where = choice.rendered, choice.where
    inj = Injection(vec, layer, args.strength, choice.window, label=args.concept)
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


def experiment_config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The chosen experiment's spec and its config from the options the user gave (defaults live only in the
    config dataclass); validated, before anything is loaded or written."""
    from .experiments.options import config_from_options, given_options

    spec = args.spec
    given = given_options(spec.config, args)
    if spec.check_given is not None:
        spec.check_given(given)
    return spec, config_from_options(spec.config, given)


def _batch_size(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    if not text.strip().isdigit():
        raise ConfigError(f"--batch-size must be an integer >= 1 or 'auto', got {text!r}")
    return int(text)


def _since_process_start() -> float:
    """Seconds since this process started (Linux /proc; falls back to time since the CLI was imported); in a
    command served by the warm server, since the caller's process started."""
    from . import warm

    if warm.served_t0 is not None:
        return time.time() - warm.served_t0
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
    spec, cfg = experiment_config(args)
    check_out_dir(args.out)
    bs = _batch_size(args.batch_size)
    check_run_settings(bs, args.temperature, args.seed, args.decode)
    marks["options_checked"] = _since_process_start()
    model = load_model_from_args(args)
    marks["model_loaded"] = _since_process_start()
    exp = spec.make_protocol(model, cfg)
    res = run_sweep(exp, model, args.out, batch_size=bs, temperature=args.temperature, seed=args.seed,
                    progress=not args.no_progress, decode=args.decode)
    marks["sweep_returned"] = _since_process_start()
    print(f"{res.n_trials} trials in {args.out}/results.jsonl ({res.n_done_before} already done, "
          f"{res.n_generated} generated in {res.seconds:.1f} s"
          + (f", {res.trials_per_second:.2f} trials/s)" if res.n_generated else ")"))
    print(f"next: introspect-mech report {args.out}")
    if env_flag("INTROSPECT_MECH_TIMING"):  # start-up breakdown for benchmarks/bench_startup.py
        marks["generation_s"] = res.seconds
        marks["startup_s"] = marks["sweep_returned"] - res.seconds
        print(json.dumps({"timing": marks}), file=sys.stderr)
    return 0


def unused_options_error(spec: Any, extras: Sequence[str]) -> ConfigError | None:
    """``run CLI_NAME`` given options of other experiments: one line naming them and this one's options."""
    from .experiments import registry
    from .experiments.options import cli_options

    mine = {o.flag for o in cli_options(spec.config)}
    others = {o.flag for s in registry.specs() for o in cli_options(s.config)} - mine
    given = sorted({x.split("=", 1)[0] for x in extras if x.startswith("--")} & others)
    if not given:
        return None
    return ConfigError(f"{spec.cli_name} does not use {', '.join(given)}; remove it (its options: "
                       f"{', '.join(o.flag for o in cli_options(spec.config))})")


def cmd_warm(args: argparse.Namespace) -> int:
    """``warm start|stop|status``: the resident process of ``warm.py``."""
    from . import warm

    if args.action == "start":
        pid = warm.start()
        print(f"warm server running (pid {pid}, socket {warm.socket_path()}); commands of this user now start "
              "without re-importing torch; `introspect-mech warm stop` stops it")
    elif args.action == "stop":
        print("warm server stopped" if warm.stop() else "no warm server was running")
    else:
        pid = warm.server_pid()
        print(f"warm server running (pid {pid}, socket {warm.socket_path()})" if pid else "no warm server is running")
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

    if args.compare is not None and not args.compare:
        raise ConfigError("--compare names no run; pass the run folders to put beside this one (or drop --compare)")
    out = write_report(args.run, grader=args.grader, figures_dir=args.figures_dir, png=not args.no_png,
                       judge_url=args.judge_url, compare=args.compare or ())
    print(out["table"])
    print("\nfigures:")
    for name, paths in out["figures"].items():
        print(f"  {name}: {', '.join(v for k, v in paths.items() if k != 'json')}")
    print(f"summary: {args.run}/summary.json; report: {out['html']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .grading.calibrate import run

    return run(args)


ANALYSES = {"anomaly": "anomaly_detection", "concordance": "concordance", "thought-control": "thought_control",
            "attention": "attention_plots", "circuits": "exp1_circuits"}


def cmd_analyze(args: argparse.Namespace) -> int:
    """Dispatch to ``analyses.<module>.main(argv)``; each analysis owns its options (``analyze NAME --help``)."""
    import importlib

    mod = importlib.import_module(f"analyses.{ANALYSES[args.analysis]}")
    return int(mod.main(list(args.rest)) or 0)


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """The options of every ``run`` command that are not the experiment's: where, how, how fast."""
    p.add_argument("--out", required=True, help="run folder (re-run the same command to resume)")
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


class OneLineParser(argparse.ArgumentParser):
    """argparse with the toolkit's error format: one line starting ``error:`` that names the option and points to
    ``--help`` (exit status 2), instead of a usage block then ``PROG: error: ...`` (subcommands inherit the class)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    from .experiments import registry
    from .experiments.options import SYSTEM_HELP, add_config_arguments
    from .grading.factory import JUDGE_HELP

    parser = OneLineParser(prog="introspect-mech", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("vectors", help="extract concept vectors (mean subtraction) and save them")
    add_model_args(p)
    p.add_argument("--words", default="paper",
                   help="'paper' (the 50 concept words), a category name, or a comma-separated list")
    p.add_argument("--layers", default=None, help="comma-separated indices or depth fractions (default: all)")
    p.add_argument("--out", required=True, help="output path (writes OUT.safetensors and OUT.json)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached vectors")
    p.add_argument("--system", default="auto", help=SYSTEM_HELP)
    p.add_argument("--dedupe-baseline", action="store_true",
                   help="average the 99 unique baseline words instead of the paper's published 100-entry list "
                        "('Butterflies' twice); recorded in the vectors' metadata")
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("steer", help="generate with an injected concept, next to the un-injected text")
    add_model_args(p)
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
    p.add_argument("--system", default="auto", help=SYSTEM_HELP)
    p.set_defaults(func=cmd_steer)

    run = sub.add_parser("run", help="run (or resume) an experiment sweep into a results store")
    exps = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for spec in registry.specs():
        p = exps.add_parser(spec.cli_name, help=spec.help, description=spec.title)
        add_config_arguments(p, spec.config)
        add_model_args(p)
        add_sweep_args(p)
        p.set_defaults(func=cmd_run, spec=spec)

    p = sub.add_parser("report", help="grade a run, write summary tables with CIs and figures")
    p.add_argument("run", help="run folder")
    p.add_argument("--grader", default="rules", help="'rules' (offline) or a judge: " + JUDGE_HELP)
    p.add_argument("--judge-url", default=None, help="base URL of an OpenAI-compatible endpoint")
    p.add_argument("--figures-dir", default=None, help="where to write figures (default RUN/figures)")
    p.add_argument("--no-png", action="store_true", help="HTML figures only")
    p.add_argument("--compare", nargs="*", default=None,
                   help="other runs of the same experiment (other models or adapters) side by side: tables, "
                        "figures and the HTML report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("analyze", help="mechanism analyses (anomaly, concordance, thought-control, attention, circuits)",
                       add_help=False)
    p.add_argument("analysis", choices=sorted(ANALYSES))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the analysis (see analyze NAME --help)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("warm", help="keep torch and transformers imported in a resident process: commands start in ~1 s")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=cmd_warm)

    p = sub.add_parser("repair", help="move unreadable lines of a run's results.jsonl aside, keeping the rest")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=cmd_repair)

    from .organism.cli import add_organism_parser

    add_organism_parser(sub)

    from .grading.calibrate import add_arguments as add_calibrate_arguments

    p = sub.add_parser("calibrate", help="score a grader against labelled responses")
    add_calibrate_arguments(p)
    p.set_defaults(func=cmd_calibrate)
    _add_verbose(sub)
    return parser


def _add_verbose(sub: argparse._SubParsersAction) -> None:
    """``--verbose`` on every leaf command (``run EXPERIMENT``, ``organism train``, ...), where it is typed."""
    for sp in sub.choices.values():
        nested = [a for a in sp._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _add_verbose(nested[0])
        else:
            sp.add_argument("--verbose", action="store_true",
                            help="show library chatter hidden by default (transformers deprecation notes, the GGUF "
                                 "conversion bar); also INTROSPECT_MECH_VERBOSE=1")


def _set_threads(threads: str | None) -> None:
    """``INTROSPECT_MECH_THREADS=N``: e.g. 1 when several jobs share a small CPU (oversubscribed OpenMP threads
    thrash badly). Checked like an option: a bad value is a one-line error, not a torch traceback."""
    if threads is None or threads.strip() == "":
        return
    if not threads.strip().isdigit() or int(threads) < 1:
        raise ConfigError(f"INTROSPECT_MECH_THREADS must be a whole number >= 1 (e.g. 1), got {threads!r}; "
                          "fix or unset it")
    import torch

    torch.set_num_threads(int(threads))


def env_flag(name: str) -> bool:
    """An on/off environment variable: unset, empty or 0 is off (as INTROSPECT_MECH_VERBOSE)."""
    return os.environ.get(name, "").strip() not in ("", "0")


ANALYZE_HELP = """usage: introspect-mech analyze ANALYSIS [options]

mechanism analyses; each owns its options: introspect-mech analyze ANALYSIS --help

analyses:
{rows}
"""


def main(argv: Sequence[str] | None = None) -> int:
    entry = argv is None  # the process's own command (console script, python -m); in-process calls are never served
    argv = list(sys.argv[1:] if argv is None else argv)
    if entry and argv[:1] != ["warm"]:
        from .warm import try_served

        status = try_served(argv, time.time() - _since_process_start())
        if status is not None:  # a warm server ran it (warm.py)
            return status
    if argv[:1] == ["analyze"] and argv[1:] in (["-h"], ["--help"]):  # its parser passes --help on to the analysis
        print(ANALYZE_HELP.format(rows="\n".join(f"  {n:<16} (analyses.{m})" for n, m in sorted(ANALYSES.items()))))
        return 0
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        err = unused_options_error(args.spec, extras) if getattr(args, "spec", None) is not None else None
        if err is None:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        print(f"error: {err}", file=sys.stderr)
        return 2
    if getattr(args, "verbose", False):
        from .verbosity import set_verbose

        set_verbose(True)
    try:
        _set_threads(os.environ.get("INTROSPECT_MECH_THREADS"))
        from .allocator import keep_freed_memory

        keep_freed_memory()
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
