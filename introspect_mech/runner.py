"""Batched, resumable sweeps: trials in, one JSONL record per trial out.

A trial is data (``Trial``); an experiment turns it into a prompt, injections and a
generation length (``TrialInput``). The runner fixes the batch partition from the
*full* trial list (so an interrupted and resumed run generates the same batches as an
uninterrupted one), skips batches already stored, generates the rest, and appends each
batch's records atomically. Re-running the same command resumes; nothing is lost or
duplicated.

How the rest is generated is the run's ``decode`` method: ``continuous`` (default for local
models) streams the batches of a segment (``SEGMENT_BATCHES``) through ``batch_size`` slots
with one sampling stream per trial; ``hf`` and ``compact`` run one batch of one prompt at a
time with one seed per batch. A run keeps its method (and batch size) when resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import torch

from .errors import ArtifactError, ConfigError
from . import protocol
from .execution import MIN_PREFIX, check_temperature, generate
from .inject import Injection
from .prompts import RenderedPrompt
from .seeds import seed_from
from .store import ResultStore, RunLock, atomic_write_json, check_out_dir

if TYPE_CHECKING:
    from .models import Model


@dataclass(frozen=True)
class Trial:
    """One generation of one condition. ``trial_id`` is a hash of every field, so it is stable across runs."""

    experiment: str
    condition: str
    concept: str | None = None
    layer: int | None = None
    strength: float | None = None
    prompt_key: str = "default"
    sample: int = 0
    category: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def trial_id(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


@dataclass(frozen=True, eq=False)
class TrialInput:
    prompt: RenderedPrompt
    injections: list[Injection] = field(default_factory=list)
    max_new_tokens: int = 100
    info: dict = field(default_factory=dict)  # extra provenance (window, vector label, ...)


class Experiment(Protocol):
    """What ``run_sweep`` drives: a name, its settings, the full trial list, a one-off ``prepare`` (e.g. concept
    vectors) and ``build`` (a trial's prompt, injections and reply length). The paper's protocols are bound to
    their model at construction (``experiments.base``) and refuse another one passed here."""

    name: str

    def config(self) -> dict: ...

    def trials(self) -> list[Trial]: ...

    def prepare(self, model: Model) -> None: ...

    def build(self, model: Model, trial: Trial) -> TrialInput: ...


class ForwardOnlyExperiment(Experiment, Protocol):
    """An experiment that measures without generating (teacher forcing, logit measures): the runner calls
    ``execute`` on each batch's inputs instead of generating; each output dict is merged into its record
    (``doses``: the injections' doses)."""

    def execute(self, model: Model, inputs: Sequence[TrialInput]) -> list[dict]: ...


def _package_version() -> str:
    from . import __version__

    return __version__


@dataclass
class RunResult:
    out_dir: Path
    n_trials: int
    n_done_before: int
    n_generated: int
    seconds: float

    @property
    def trials_per_second(self) -> float:
        return self.n_generated / self.seconds if self.seconds > 0 else float("nan")


CPU_BATCH_CAP = 64  # measured on 2 cores: 64 rows gave 5.2 trials/s vs 4.25 at 32 (benchmarks/)
GPU_BATCH_CAP = 256
CONTINUOUS_CPU_SLOTS = 128
"""Default (and 'auto' cap of) slots for continuous decoding on CPU. Why more than HF generate's 64: with no
cache concatenation and no finished rows, a step's cost is a fixed part (the weights read once, Python) plus a
part per row; measured on SmolLM2 (1 thread, 200-token rows): 11.2 ms/row at 64 rows, 9.2 at 128, 9.2 at 256."""
CONTINUOUS_GPU_SLOTS = 256
DEFAULT_BATCH_SIZE = 32  # HF generate / compact: rows per batch of one prompt


def available_bytes(model: Any) -> int:
    """Free memory where the model's rows live (the GPU's free memory, or the host's available RAM): what an
    automatic batch size may plan to fill."""
    dev = model.device
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f}
        return info.get("MemAvailable", info.get("MemFree", 4 << 30))
    except OSError:
        return 4 << 30


def per_row_bytes(model: Any, prompt_tokens: int, new_tokens: int) -> int:
    """Memory one row (or slot) needs: its KV cache for prompt + reply, prefill activations, a row of logits.

    A deliberately conservative estimate (activations counted at ~24 × d_model floats per prompt
    token, logits twice in float32)."""
    a = model.arch
    elt = torch.finfo(model.dtype).bits // 8
    kv = 2 * a.n_layers * a.n_kv_heads * a.head_dim * (prompt_tokens + new_tokens) * elt
    act = 24 * a.d_model * prompt_tokens * 4
    vocab = getattr(model.config, "vocab_size", 50000) * 4 * 2
    return int(kv + act + vocab)


def auto_batch_size(model: Any, prompt_tokens: int, new_tokens: int, fraction: float = 0.4, decode: str = "hf") -> int:
    """Rows per ``generate`` (slots, for continuous decoding) whose ``per_row_bytes`` fit in ``fraction`` of
    the free memory, capped where larger batches stop paying on the device."""
    per_row = per_row_bytes(model, prompt_tokens, new_tokens)
    if decode == "continuous":
        cap = CONTINUOUS_GPU_SLOTS if model.device.type == "cuda" else CONTINUOUS_CPU_SLOTS
    else:
        cap = GPU_BATCH_CAP if model.device.type == "cuda" else CPU_BATCH_CAP
    return int(max(1, min(cap, (available_bytes(model) * fraction) // per_row)))


def default_batch_size(model: Any, decode: str) -> int:
    """Batch size of a new run when none is given: continuous slots by device, else ``DEFAULT_BATCH_SIZE``."""
    if decode == "continuous":
        return CONTINUOUS_GPU_SLOTS if model.device.type == "cuda" else CONTINUOUS_CPU_SLOTS
    return DEFAULT_BATCH_SIZE


def batch_seed(run_seed: int, batch_index: int) -> int:
    return seed_from(run_seed, batch_index)


def plan_batches(trials: Sequence[Trial], batch_size: int, key: Callable[[Trial], Any] | None = None,
                 mixed: bool = False) -> list[list[Trial]]:
    """Deterministic partition of the trials into batches (the units stored atomically).

    Default: trials with the same prompt go together (no padding, a shared prefix), each group
    chunked on its own. ``mixed=True`` (continuous decoding): one ordering by prompt, then trial id,
    cut into consecutive chunks, so a batch may hold several prompts (same-prompt trials stay
    neighbours, which keeps prefix reuse high) and no batch is small because its prompt is rare.
    Either way the partition depends on the trial list alone, so a resumed run has the same batches."""
    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    order = sorted(trials, key=lambda t: (str(key(t) if key else t.prompt_key), t.trial_id))
    if mixed:
        return [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    groups: dict[Any, list[Trial]] = {}
    for t in order:
        groups.setdefault(key(t) if key else t.prompt_key, []).append(t)
    out = []
    for g in groups.values():
        out += [list(g[i:i + batch_size]) for i in range(0, len(g), batch_size)]
    return out


SEGMENT_BATCHES = 8
"""Continuous decoding runs the batches of a run in segments of this many consecutive batches: one
stream of trials through ``batch_size`` slots. A segment is the unit of computation (a partly
stored segment is regenerated whole, as a partly stored batch is), a batch stays the unit of
storage. Why not one stream for the whole run: a trial's floats depend (at rounding level) on
which trials ran beside it, so a resumed run can equal an uninterrupted one only if every
segment starts from the same state; the cost is one drain (the last rows running in a
part-empty batch) per segment. Why 8: replaying the stored paper-sized sweep's reply lengths
through 128 slots, segments of 4 batches leave 16 % of row-slots empty and of 8 batches 10 %
(1,584 vs 1,473 decode steps); a run killed mid-segment then redoes at most 8 batches (1,024
trials at 128 slots, ~5 min on 2 CPU cores). Runs of package version 0.2 used 4; the version
is a resume key, so they are not resumed under this value."""


def segments_of(n_batches: int) -> list[list[int]]:
    """Batch indices of each segment (continuous decoding)."""
    return [list(range(i, min(n_batches, i + SEGMENT_BATCHES))) for i in range(0, n_batches, SEGMENT_BATCHES)]


DECODERS = ("continuous", "compact", "hf")  # see run_sweep


def default_decode(model: Any) -> str:
    """The method a new run uses: continuous batching for local models it supports, else HF ``generate``."""
    if model.remote:
        return "hf"
    try:
        check_continuous(model, {})
    except ConfigError:
        return "hf"
    return "continuous"


def check_continuous(model: Any, generate_kwargs: dict) -> None:
    """Refuse decode='continuous' where it cannot run, before anything is loaded or written."""
    if model.remote:
        raise ConfigError("decode='continuous' runs local models only; use decode='hf' with a remote model")
    other = sorted(set(generate_kwargs) - {"min_new_tokens"})
    if other:
        raise ConfigError(f"decode='continuous' takes no generate option {', '.join(other)} (only min_new_tokens); "
                          "use decode='hf' for HF generate's options")
    from .kv_slots import check_attention, layer_windows

    check_attention(model)
    layer_windows(model)


def shared_prefix_length(inputs: Sequence[TrialInput]) -> int:
    """Length of the prefix every row shares and no injection touches (0 if the rows' prompts differ)."""
    first = inputs[0].prompt.input_ids
    if any(x.prompt.input_ids != first for x in inputs):
        return 0
    P = len(first) - 1  # the last prompt token must be run to get the first logits
    for x in inputs:
        for inj in x.injections:
            P = min(P, inj.window.start)
    return P if P >= MIN_PREFIX else 0


def _generate_rows(model: Any, inputs: Sequence[TrialInput], temperature: float, seed: int,
                   prefixes: dict | None = None, decode: str = "hf", **generate_kwargs: Any) -> list[dict]:
    """One batched generation for a batch of trials; each row cut to its own ``max_new_tokens``.

    With ``prefixes`` (a dict used as a cache), a prompt prefix shared by all rows and
    untouched by injections is prefilled once and its KV cache reused by every batch.
    ``decode="compact"`` drops each row from the batch as soon as it is finished (``decode.py``);
    ``"hf"`` runs HF ``generate`` over the whole batch until its longest reply ends."""
    from .execution import build_prefix_cache

    max_new = max(x.max_new_tokens for x in inputs)
    prefix = None
    if prefixes is not None and not model.remote:
        P = shared_prefix_length(inputs)
        if P:
            key = tuple(inputs[0].prompt.input_ids[:P])
            if key not in prefixes:
                prefixes[key] = build_prefix_cache(model, key)
            prefix = prefixes[key]
    prompts, injections = [x.prompt for x in inputs], [x.injections or None for x in inputs]
    if decode == "compact":
        from .decode import generate_compact

        gen = generate_compact(model, prompts, injections, max_new_tokens=[x.max_new_tokens for x in inputs],
                               temperature=temperature, seed=seed, prefix=prefix, **generate_kwargs)
    else:
        gen = generate(model, prompts, injections, max_new_tokens=max_new, temperature=temperature, seed=seed,
                       prefix=prefix, **generate_kwargs)
    rows = []
    for r, x in enumerate(inputs):
        toks = gen.new_tokens[r][: x.max_new_tokens]
        rows.append({"response": model.tokenizer.decode(toks, skip_special_tokens=True), "n_new_tokens": len(toks),
                     "doses": list(gen.doses[r])})
    return rows


RESUME_KEYS = ("experiment", "config", "model_fingerprint", "batch_size", "temperature", "seed", "decode",
               "generate_kwargs", "protocol_hash", "package_version")
"""Every setting that changes a stored result. A run resumes only when all of them are equal; each
record carries ``run_key``, their hash, so trials made under other settings are never adopted."""


def check_run_settings(batch_size: int | str | None, temperature: float, seed: int, decode: str | None) -> None:
    """Refuse run options that are out of range, before anything is loaded or written."""
    if decode not in (None, *DECODERS):
        raise ConfigError(f"decode must be one of {DECODERS}, got {decode!r}")
    if batch_size is not None and batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch size must be an integer >= 1 or 'auto', got {batch_size!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    check_temperature(temperature)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def run_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps({k: settings[k] for k in RESUME_KEYS}, sort_keys=True).encode()).hexdigest()[:16]


def _read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable ({exc.__class__.__name__}); restore it (the trials in "
                            "results.jsonl were made under it), or move the run folder aside and start afresh") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{path} is not a run manifest (a JSON object); restore it, or move the run folder aside")
    return m


def _stored_settings(old: dict) -> dict:
    """The resume-relevant settings of a stored manifest (older manifests kept some keys elsewhere)."""
    s = {k: old.get(k) for k in RESUME_KEYS}
    if s["model_fingerprint"] is None and isinstance(old.get("model"), dict):
        s["model_fingerprint"] = old["model"].get("fingerprint")
    if s["package_version"] is None and isinstance(old.get("environment"), dict):
        s["package_version"] = old["environment"].get("package_version")
    if s["decode"] is None:
        s["decode"] = "hf"  # runs made before the compact decoder existed used HF generate
    if s["generate_kwargs"] is None:
        s["generate_kwargs"] = {}
    return s


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for k in RESUME_KEYS:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "config" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{f} (stored {a.get(f)!r}, this command {b.get(f)!r})" for f in sorted(set(a) | set(b))
                    if a.get(f) != b.get(f)]
        else:
            out.append(f"{k} (stored {a!r}, this command {b!r})")
    return out


RUN_FLAGS = {"batch_size": "--batch-size", "temperature": "--temperature", "seed": "--seed", "decode": "--decode"}


def _resume_options(old: dict, new: dict, stored_dtype: str | None = None) -> str:
    """The command-line options that resume the stored run, for each setting that differs: ``--batch-size 2
    --decode continuous`` (config fields by their experiment's flag; the model by --model/--adapter)."""
    from .experiments import registry
    from .experiments.options import as_option_text, cli_options

    name = new.get("experiment")  # an experiment outside the registry (a Python-API sweep) has no flags
    known = {s.name for s in registry.specs()}
    flags = {o.field: o.flag for o in cli_options(registry.get(name).config)} if name in known else {}
    out = []
    for k in RESUME_KEYS:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k in RUN_FLAGS and a is not None:
            out.append(f"{RUN_FLAGS[k]} {as_option_text(a)}")
        elif k == "model_fingerprint":
            out.append(f"the same --model/--adapter with --dtype {stored_dtype}" if stored_dtype
                       else "the same --model/--adapter/--dtype")
        elif k == "config" and isinstance(a, dict) and isinstance(b, dict):
            for f in sorted(set(a) | set(b)):
                if a.get(f) != b.get(f) and f in flags:
                    out.append(f"{flags[f]} {as_option_text(a.get(f))}" if a.get(f) is not None else f"no {flags[f]}")
    return " ".join(out)


def _check_context(experiment: Experiment, model: Any, trials: Sequence[Trial]) -> None:
    """Every prompt plus its reply must fit the model's context; checked on one trial per prompt."""
    ctx = getattr(model, "context_length", None)
    if not ctx:
        return
    seen: set = set()
    for t in trials:
        if (t.experiment, t.prompt_key) in seen:
            continue
        seen.add((t.experiment, t.prompt_key))
        x = experiment.build(model, t)
        if len(x.prompt) + x.max_new_tokens > ctx:
            raise ConfigError(f"prompt {t.prompt_key!r} ({len(x.prompt)} tokens) plus {x.max_new_tokens} new tokens "
                              f"exceeds the model's context of {ctx}; lower --max-new-tokens to at most "
                              f"{max(1, ctx - len(x.prompt))}")


def _system_prompt(experiment: Experiment, model: Any) -> dict | None:
    """The run's system-turn choice and the system text its prompts hold (None: no system turn)."""
    from .prompts import resolve_system

    cfg = experiment.config()
    if "system" not in cfg:
        return None
    _, text = resolve_system(model.tokenizer, cfg["system"], cfg.get("fmt", "auto"))
    return {"choice": cfg["system"], "rendered": text}


def run_sweep(
    experiment: Experiment,
    model: Any,
    out_dir: str | Path,
    *,
    batch_size: int | str | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    max_batches: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    prefix_cache: bool = True,
    generate_kwargs: dict | None = None,
    decode: str | None = None,
) -> RunResult:
    """Run (or resume) every trial of ``experiment`` into ``out_dir/results.jsonl``.

    ``decode`` (how replies are generated):

    - ``"continuous"`` (the default for new runs on local models): trials of any prompts share a
      running batch of ``batch_size`` slots; a finished row's slot goes to the next trial
      (``continuous.py``). Batches mix prompts (``plan_batches(mixed=True)``); each trial samples
      from its own stream, seeded from the run's seed and its trial id (``trial_seed``).
    - ``"hf"``: one HF ``generate`` per batch of one prompt, seeded per batch (the default for
      remote models, and the method of runs made before continuous decoding existed).
    - ``"compact"``: as ``"hf"``, but finished rows leave the batch (``decode.py``).

    ``None`` resumes a run with the method it started with (the manifest's ``decode``), so one run
    never mixes two methods or two kinds of random streams. ``batch_size=None`` likewise resumes with the
    stored size, and a new run takes ``default_batch_size`` (128 slots for continuous decoding on CPU,
    256 on GPU; 32 rows otherwise).

    Order of events, so that a bad option never leaves anything behind: every option is checked
    and the trial list and batches are built first; the run lock is taken; a stored run is
    compared setting by setting (``RESUME_KEYS``); the manifest is written just before the first
    batch is stored. A batch that was only partly stored is regenerated whole (same rows, same
    seed) and only its missing rows are appended, so a resumed run equals an uninterrupted one;
    with continuous decoding the same holds for the segment (``SEGMENT_BATCHES``) it belongs to.
    """
    out = check_out_dir(out_dir)
    check_run_settings(batch_size, temperature, seed, decode)
    generate_kwargs = dict(generate_kwargs or {})
    mpath, rpath = out / "manifest.json", out / "results.jsonl"
    trials = experiment.trials()
    if not trials:
        raise ConfigError(f"{experiment.name}: the options select no trials; check the concept, layer, strength "
                          "and control options")
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{experiment.name}: the options produce duplicate trials (a value listed twice?); "
                          "list each layer, strength and concept once")
    old = _read_manifest(mpath)
    stored = _stored_settings(old) if old is not None else None
    if decode is None:
        decode = stored["decode"] if stored is not None else default_decode(model)
    if decode == "compact" and model.remote:
        raise ConfigError("decode='compact' runs local models only; use decode='hf' with a remote model")
    execute = getattr(experiment, "execute", None)
    continuous = decode == "continuous" and execute is None
    if continuous:
        check_continuous(model, generate_kwargs)
    if batch_size is None:  # a resumed run keeps its size; a new one takes the method's default
        if stored is not None and isinstance(stored.get("batch_size"), int):
            batch_size = stored["batch_size"]
        else:
            batch_size = default_batch_size(model, decode if execute is None else "hf")
    if batch_size == "auto":  # resolved once: a resumed run keeps the size it started with
        if stored is not None and isinstance(stored.get("batch_size"), int):
            batch_size = stored["batch_size"]
        else:
            experiment.prepare(model)
            x = experiment.build(model, trials[0])
            batch_size = auto_batch_size(model, len(x.prompt), x.max_new_tokens, decode=decode if continuous else "hf")
    batches = plan_batches(trials, int(batch_size), mixed=continuous)
    settings = {"experiment": experiment.name, "config": _jsonable(experiment.config()),
                "model_fingerprint": model.fingerprint, "batch_size": int(batch_size),
                "temperature": float(temperature), "seed": int(seed), "decode": decode,
                "generate_kwargs": _jsonable(generate_kwargs), "protocol_hash": protocol.protocol_hash(),
                "package_version": _package_version()}
    key = run_key(settings)

    with RunLock(out):
        old = _read_manifest(mpath)  # again, under the lock
        store = ResultStore.writer(rpath)
        records = store.records()
        if records:
            if old is None:
                raise ArtifactError(f"{rpath} holds {len(records)} trials but {mpath} is missing, so their settings "
                                    "are unknown; restore the manifest, or move the run folder aside and start afresh")
            stored = _stored_settings(old)
            diff = _differences(stored, settings)
            if diff:
                stored_model = old.get("model") if isinstance(old.get("model"), dict) else {}
                fix = _resume_options(stored, settings, stored_model.get("dtype"))
                raise ArtifactError(f"{out} holds a run with other settings: {'; '.join(diff)}. Resume it with the "
                                    f"same options{f' ({fix})' if fix else ''} (and package version), or pass a new "
                                    "--out")
            if any("run_key" not in r for r in records):
                raise ArtifactError(f"{rpath} was written by an older introspect_mech that did not record each "
                                    "trial's settings; finish it with that version, or pass a new --out")
            foreign = sum(1 for r in records if r.get("run_key") != key)
            if foreign:
                raise ArtifactError(f"{foreign} of {len(records)} trials in {rpath} were made under other settings "
                                    "than its manifest says (run_key differs); move the run folder aside and start afresh")
        done = {r["trial_id"] for r in records}
        todo = [(i, b) for i, b in enumerate(batches) if any(t.trial_id not in done for t in b)]
        n_todo = sum(1 for _, b in todo for t in b if t.trial_id not in done)
        n_before = len(trials) - n_todo
        if todo:
            experiment.prepare(model)
            _check_context(experiment, model, [t for _, b in todo for t in b])
        bar = None
        if progress and n_todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(trials), initial=n_before, desc=experiment.name, unit="trial", dynamic_ncols=True,
                       file=sys.stderr)
        t0, generated = time.perf_counter(), 0
        common = {"experiment": experiment.name, "model": model.name, "model_fingerprint": model.fingerprint,
                  "package_version": settings["package_version"], "protocol_hash": settings["protocol_hash"],
                  "temperature": settings["temperature"], "run_key": key}
        prefixes: dict | None = {} if prefix_cache else None
        manifest_written = bool(records)

        def store_batch(bi: int, new: list[dict]) -> None:
            nonlocal manifest_written, generated
            if not manifest_written:
                _write_manifest(mpath, settings, key, model, _system_prompt(experiment, model))
                manifest_written = True
            store.append(new)
            done.update(r["trial_id"] for r in new)
            generated += len(new)
            if on_batch is not None:
                on_batch(bi)

        try:
            if continuous:
                _run_segments(experiment, model, batches, [bi for bi, _ in todo], done, store_batch, common, seed,
                              temperature, int(batch_size), prefixes, generate_kwargs, max_batches, bar)
                todo = []
            for n_batch, (bi, batch) in enumerate(todo):
                if max_batches is not None and n_batch >= max_batches:
                    break
                # the whole batch, even if some rows are stored: same rows and seed as an uninterrupted run
                inputs = [experiment.build(model, t) for t in batch]
                bseed = batch_seed(seed, bi)
                if execute is not None:  # forward-only experiments (teacher forcing, logit measures)
                    outputs = execute(model, inputs)
                else:
                    outputs = _generate_rows(model, inputs, temperature, bseed, prefixes, decode, **generate_kwargs)
                new = [_record(model, trial, x, o, common, bseed, bi) for trial, x, o in zip(batch, inputs, outputs)
                       if trial.trial_id not in done]
                store_batch(bi, new)
                if bar is not None:
                    bar.update(len(new))
        finally:
            if bar is not None:
                bar.close()
    return RunResult(out, len(trials), n_before, generated, time.perf_counter() - t0)


def _record(model: Any, trial: Trial, x: TrialInput, o: dict, common: dict, seed: int, bi: int, **more: Any) -> dict:
    """One trial's JSONL record."""
    doses = o.pop("doses", [])
    return {**asdict(trial), "extra": dict(trial.extra), "trial_id": trial.trial_id, **common, "seed": seed,
            "batch": bi, **more, "max_new_tokens": x.max_new_tokens, "prompt": x.prompt.text,
            "n_prompt_tokens": len(x.prompt), "system_prompt": x.prompt.system,
            "injections": [dict(inj.describe(), layer=model.arch.resolve_layer(inj.layer), dose=d)
                           for inj, d in zip(x.injections, doses)],
            "dose": doses[0] if doses else None, **x.info, **o}


def _run_segments(experiment: Experiment, model: Any, batches: list[list[Trial]], todo: list[int], done: set,
                  store_batch: Callable[[int, list[dict]], None], common: dict, seed: int, temperature: float,
                  slots: int, prefixes: dict | None, generate_kwargs: dict, max_batches: int | None, bar: Any) -> None:
    """Continuous decoding: each segment with a batch to do is generated whole, as one stream through
    ``slots`` rows; a batch's missing records are stored as soon as all its trials are finished."""
    from .continuous import Request, generate_continuous, trial_seed

    todo_set, n_stored = set(todo), 0
    for seg_index, seg in enumerate(segments_of(len(batches))):
        if not todo_set.intersection(seg):
            continue
        trials = [(bi, t) for bi in seg for t in batches[bi]]
        inputs = [experiment.build(model, t) for _, t in trials]
        seeds = [trial_seed(seed, t.trial_id) for _, t in trials]
        requests = [Request(x.prompt, tuple(x.injections), x.max_new_tokens, s) for x, s in zip(inputs, seeds)]
        waiting = {bi: len(batches[bi]) for bi in seg}
        finished: dict[int, Any] = {}
        stream = generate_continuous(model, requests, slots=slots, temperature=temperature, prefixes=prefixes,
                                     min_new_tokens=int(generate_kwargs.get("min_new_tokens", 0)))
        try:
            for c in stream:
                bi, trial = trials[c.index]
                finished[c.index] = c
                waiting[bi] -= 1
                if bar is not None and trial.trial_id not in done:
                    bar.update(1)
                if waiting[bi] or bi not in todo_set:
                    continue
                new = []
                for i, (b, t) in enumerate(trials):
                    if b != bi or t.trial_id in done:
                        continue
                    toks = finished[i].tokens
                    o = {"response": model.tokenizer.decode(toks, skip_special_tokens=True),
                         "n_new_tokens": len(toks), "doses": list(finished[i].doses)}
                    new.append(_record(model, t, inputs[i], o, common, seeds[i], bi, segment=seg_index))
                store_batch(bi, new)
                n_stored += 1
                if max_batches is not None and n_stored >= max_batches:
                    return
        finally:
            stream.close()


def _write_manifest(path: Path, settings: dict, key: str, model: Any, system_prompt: dict | None) -> None:
    manifest = {**settings, "run_key": key, "model": model.describe(), "system_prompt": system_prompt,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "environment": {"python": sys.version.split()[0], "torch": torch.__version__,
                                "platform": platform.platform(), "package_version": settings["package_version"]}}
    atomic_write_json(path, manifest)
