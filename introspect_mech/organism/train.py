"""Training the organism: LoRA on the layers above the injection range, on trials drawn by the recipe.

Why LoRA only *above* the injection layers: the layers at and below an injection then stay
the base model's, so (a) the concept vectors the organism is evaluated with (extracted from
the organism itself by the experiments) are the base model's vectors at every training
layer, and (b) no gradient is ever computed below the lowest adapted layer: autograd
records nothing there, which makes a step much cheaper.

Reproducible and resumable: batch ``k`` depends only on (seed, k); LoRA dropout is 0; the
checkpoint (``checkpoint.pt``, written atomically every ``checkpoint_every`` steps) holds
the adapter, optimizer and scheduler states and the loss curve. A killed run, restarted with
the same command, resumes from its last checkpoint and ends with the same adapter as an
uninterrupted run (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..concepts import extract_concept_vectors
from ..errors import ArtifactError, ConfigError
from ..execution import forward
from ..inject import Injection
from ..record import RecordSpec
from ..store import atomic_write_with
from .adapter import META_FILE, LoraSpec, attach_lora, linear_module_names, lora_state, save_adapter
from ..models import dtype_name
from .forcing import forced_loss, make_forced_batch
from .recipe import Example, Recipe, RecipeConfig
from .words import build_split

if TYPE_CHECKING:
    from ..models import Model

CHECKPOINT_FILE = "checkpoint.pt"
# Recipe options added after adapters were trained: at these defaults they are left out of the
# config digest, so that an older run's folder still resumes and is still recognised.
RECIPE_DEFAULTS_ADDED_LATER = {"self_questions": "all"}
PRECISIONS = ("bf16", "fp32")


@dataclass
class TrainConfig:
    """Hyper-parameters. ``lora_layers=None``: every layer above the recipe's injection range."""

    steps: int = 1000  # recipe v7 (v5: 600 steps at lr 6e-4 in float32)
    batch_size: int = 16
    lr: float = 8e-4
    warmup: int = 10
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio
    rank: int = 16
    alpha: float = 32.0
    lora_layers: list[int] | None = None
    target_modules: list[str] | None = None  # None: every linear map in a decoder layer
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 25
    use_prefix: bool = True  # run the shared never-injected prefix once per batch (exact)
    # "bf16": matrix products in bfloat16 (torch.autocast; the frozen base weights held in bfloat16 while training,
    # restored bit for bit after), the residual stream, LoRA weights, optimizer and loss in float32 — 1.33x faster per
    # step on a CPU with AMX/AVX512-BF16 (and on GPUs); "fp32": everything in float32 (recipes v2-v6)
    precision: str = "bf16"
    # steps (< steps) after which the adapter so far is also saved, as OUT/step-N (an adapter folder):
    # one run then shows what a shorter schedule would have reached (only the cosine schedule differs)
    snapshots: list[int] = field(default_factory=list)
    # warm start (a curriculum): begin from this adapter's LoRA weights instead of LoRA's zero update; it must
    # have been trained on the same base model with the same LoRA shape (rank, layers, modules)
    init_adapter: str | None = None
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

    def check_options(self) -> None:
        """Everything that needs no model (the CLI calls this before the model loads, so a typo costs nothing)."""
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.warmup < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("need lr > 0, warmup >= 0 and 0 <= min_lr_ratio <= 1")
        if self.checkpoint_every < 1 or self.grad_clip <= 0:
            raise ConfigError("checkpoint_every must be >= 1 and grad_clip > 0")
        if any(not (isinstance(k, int) and 0 < k < self.steps) for k in self.snapshots):
            raise ConfigError(f"snapshot steps must be integers between 1 and steps-1 ({self.steps - 1}), "
                              f"got {self.snapshots}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.rank < 1 or not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"--rank must be >= 1 and --alpha a finite number > 0, got {self.rank}, {self.alpha}")
        self.recipe.validate()

    def validate(self, model: Model) -> None:
        self.check_options()
        if model.remote:
            raise ConfigError("training needs local weights; load the model without --remote")
        self.recipe.validate(model.arch.n_layers)
        self.lora_spec(model).validate(model.arch.n_layers)
        if self.init_adapter is not None:
            self.initial_weights(model)  # checks the adapter exists, fits, and belongs to this base model

    def lora_spec(self, model: Model) -> LoraSpec:
        lo, hi = self.recipe.layers
        layers = list(self.lora_layers) if self.lora_layers is not None else list(range(hi + 1, model.arch.n_layers))
        if self.lora_layers is not None and min(layers, default=hi + 1) <= hi:
            raise ConfigError(f"LoRA layers {layers} reach into the injection range {lo}-{hi}: the concept vectors "
                              "the organism is evaluated with would then differ from the ones it was trained on; "
                              "adapt only layers above the range")
        return LoraSpec(self.rank, float(self.alpha), sorted(layers),
                        list(self.target_modules) if self.target_modules else linear_module_names(model))

    def initial_weights(self, model: Any) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The warm-start adapter's tensors and metadata, validated against this run (None: no warm start)."""
        if self.init_adapter is None:
            return None
        from .adapter import read_adapter

        tensors, meta = read_adapter(self.init_adapter)
        if meta["base_model"].get("fingerprint") != model.weights_fingerprint:
            raise ConfigError(f"--init-adapter {self.init_adapter} was trained on another base model "
                              f"({meta['base_model'].get('name')}), or on its weights in another --dtype; start from "
                              "an adapter of this model")
        spec, theirs = asdict(self.lora_spec(model)), meta["lora"]
        diff = [k for k in ("rank", "alpha", "layers", "target_modules") if spec[k] != theirs.get(k)]
        if diff:
            raise ConfigError(f"--init-adapter {self.init_adapter} has another LoRA shape ({', '.join(diff)}: "
                              f"{[theirs.get(k) for k in diff]} vs {[spec[k] for k in diff]}); pass the same "
                              "--rank, --alpha and --layers it was trained with")
        return tensors, meta

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        return d

    def digest(self, base_fingerprint: str) -> str:
        d = self.to_dict()
        d.pop("checkpoint_every")
        d.pop("snapshots")  # where copies are saved changes nothing about the adapter
        if d.get("init_adapter") is None:  # added later: absent from older runs' digests
            d.pop("init_adapter", None)
        else:  # the starting weights, not the folder's name, define the run
            from .adapter import check_adapter_path, file_sha256

            d["init_adapter"] = file_sha256(check_adapter_path(d["init_adapter"])[0])
        if d.get("precision") == "fp32":  # added later: every adapter before it was trained in float32
            d.pop("precision")
        for key, default in RECIPE_DEFAULTS_ADDED_LATER.items():  # keep older runs' digests (resumable)
            if d["recipe"].get(key) == default:
                d["recipe"].pop(key)
        return hashlib.sha256(json.dumps([d, base_fingerprint], sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    path: Path
    meta: dict
    resumed_from: int  # step the run resumed at (0: fresh)
    already_done: bool = False


def dose_references(model: Model, prompts: list[tuple[Any, Any]], layers: list[int],
                    batch_size: int = 16) -> list[dict[int, float]]:
    """The experiments' dose reference ``mean‖h‖`` per prompt and layer, measured by ``execution.forward``.

    A zero vector is "injected" at each layer in the prompt's window: it changes nothing, and
    the forward pass records the same ``ref_norms`` it records for a real injection."""
    out: list[dict[int, float]] = []
    d = model.arch.d_model
    zero = torch.zeros(d, dtype=model.dtype)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        injs = [[Injection(zero, L, 1.0, win) for L in layers] for _, win in chunk]
        rec = forward(model, [p for p, _ in chunk], injs, record=RecordSpec(layers=[], residual=False, logits=False))
        out += [{L: float(rec.ref_norms[L][r]) for L in layers} for r in range(len(chunk))]
    return out


def cached_dose_references(model: Model, prompts: list[tuple[Any, Any]], layers: list[int]) -> list[dict[int, float]]:
    """``dose_references``, cached on disk per model fingerprint and prompt set (a resumed run skips them)."""
    from ..models import cache_dir
    from ..store import atomic_write_json

    key = json.dumps([model.fingerprint, layers, [[list(p.input_ids), w.start] for p, w in prompts]])
    path = cache_dir() / "organism" / f"doserefs-{model.fingerprint}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        try:
            return [{int(L): float(v) for L, v in r.items()} for r in json.loads(path.read_text())]
        except (ValueError, AttributeError):
            pass  # a corrupt cache entry is recomputed
    refs = dose_references(model, prompts, layers)
    atomic_write_json(path, refs)
    return refs


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 products natively on this CPU (else they are emulated and slower than fp32)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextmanager
def frozen_weights_in(model: Model, precision: str) -> Iterator[Callable[[], Any]]:
    """Hold the frozen linear weights in the training precision; yields the per-forward autocast context.

    Why: under ``torch.autocast`` a frozen float32 weight is cast to bfloat16 on *every* call (autocast
    caches only weights that require gradients), which ate the gain; cast once here instead. The
    tied input embedding (also the LM head on SmolLM2) stays float32, so the residual stream — where
    the injections are added — stays float32. The original tensors are put back on exit, also on
    error, so the base model is unchanged bit for bit."""
    if precision == "fp32":
        yield nullcontext
        return
    emb = model.hf.get_input_embeddings().weight
    kept: list[tuple[torch.nn.Linear, torch.Tensor]] = []
    try:
        for mod in model.hf.modules():
            w = getattr(mod, "weight", None)
            if isinstance(mod, torch.nn.Linear) and not w.requires_grad and w is not emb and w.dtype == torch.float32:
                kept.append((mod, w.data))
                mod.weight.data = w.data.to(torch.bfloat16)
        yield lambda: torch.autocast(model.device.type, dtype=torch.bfloat16)
    finally:
        for mod, data in kept:
            mod.weight.data = data


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / (cfg.warmup + 1)
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def rows_of(model: Model, examples: list[Example]) -> list[tuple[tuple[int, ...], list[int]]]:
    """``(prompt ids, reply ids + end-of-turn)`` per example: the tokens generation would produce."""
    eos = model.tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no eos token to end the target reply with")
    out = []
    for ex in examples:
        reply = model.tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        out.append((ex.prompt.input_ids, list(reply) + [int(eos)]))
    return out


def example_loss(model: Model, examples: list[Example], use_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean target-token loss of a batch of examples (and each row's), with their injections applied."""
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
    batch = make_forced_batch(rows_of(model, examples), [ex.injection for ex in examples], int(pad))
    return forced_loss(model, batch, use_prefix=use_prefix)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "nnsight", "wordfreq", "lemminflect", "introspect_mech"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def build_recipe(model: Model, cfg: TrainConfig, log: Callable[[str], None] = print) -> tuple[Recipe, Any, dict]:
    """Word split, the training words' concept vectors (base model) and the dose references."""
    rc = cfg.recipe
    t0 = time.perf_counter()
    split = build_split(rc.n_english, categories=rc.categories)
    layers = list(range(rc.layers[0], rc.layers[1] + 1))
    vectors = extract_concept_vectors(model, split.train, layers=layers, fmt=rc.fmt)
    t1 = time.perf_counter()
    log(f"{len(split.train)} training words (test: the paper's {len(split.test)}), vectors at layers "
        f"{layers[0]}-{layers[-1]} in {t1 - t0:.1f} s")
    # a vector far shorter than its layer's median is degenerate (the word barely reaches the read position);
    # scaled to a dose it would need an absurd strength, so such words are left out (none on SmolLM2)
    norms = vectors.norms()
    ok = (norms / norms.median(0).values.clamp_min(1e-12)).min(1).values >= 0.05
    words = [w for w, keep in zip(split.train, ok.tolist()) if keep]
    split.recipe["dropped_degenerate_vectors"] = [w for w, keep in zip(split.train, ok.tolist()) if not keep]
    if not words:
        raise ConfigError("every training word's concept vector is degenerate at these layers; choose other --layers")
    recipe = Recipe(model.tokenizer, rc, words, vectors, None, seed=cfg.seed)
    keys = recipe.all_prompts()
    pw = [recipe.prompt(i, q) for i, q in keys]
    refs = cached_dose_references(model, pw, layers)
    table = {(i, q): r for (i, q), r in zip(keys, refs)}
    by_ids = {pw[k][0].input_ids: table[key] for k, key in enumerate(keys)}
    recipe.ref_norm = lambda prompt, window, layer: by_ids[prompt.input_ids][layer]
    t2 = time.perf_counter()
    log(f"dose references for {len(keys)} prompts in {t2 - t1:.1f} s")
    timing = {"vectors_s": round(t1 - t0, 2), "dose_refs_s": round(t2 - t1, 2)}
    return recipe, split, timing


def _load_checkpoint(path: Path, digest: str) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same fix
        raise ArtifactError(f"{path} is unreadable ({type(exc).__name__}: {exc}); delete it to restart training") from exc
    if ck.get("digest") != digest:
        raise ConfigError(f"{path} belongs to a training run with other settings or another base model; "
                          "rerun with that run's options, or pass another --out (or delete the folder) to start anew")
    return ck


def train_organism(model: Model, cfg: TrainConfig, out: str | os.PathLike, *, progress: bool = True,
                   stop_after: int | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume, or return the already trained) organism adapter into folder ``out``.

    ``model`` is the base model; it is left unchanged (the LoRA layers are removed again,
    also on error). ``stop_after`` stops after that many steps of this call, as a kill would
    (the last checkpoint stays): for tests of resumption.
    """
    cfg.validate(model)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")
    digest = cfg.digest(model.fingerprint)
    meta_path, ck_path = out / META_FILE, out / CHECKPOINT_FILE
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config_digest") != digest:
            raise ConfigError(f"{out} already holds an adapter trained with other settings; pass another --out")
        log(f"{out} already holds this adapter (trained in {meta['timing']['train_s']:.0f} s); nothing to do")
        return TrainResult(out, meta, cfg.steps, already_done=True)
    ck = _load_checkpoint(ck_path, digest) if ck_path.exists() else None

    recipe, split, timing = build_recipe(model, cfg, log)
    if cfg.precision == "bf16" and model.device.type == "cpu" and not cpu_has_native_bf16():
        log("note: this CPU has no native bfloat16 products (AMX or AVX512-BF16); --precision fp32 is likely faster "
            "here (and trains recipes v2-v6 exactly)")
    spec = cfg.lora_spec(model)
    torch.manual_seed(cfg.seed)
    init = cfg.initial_weights(model)
    pm = attach_lora(model, spec)
    stack = ExitStack()  # the training precision's weight casts, undone before the LoRA layers are removed
    try:
        if init is not None and ck is None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(pm, init[0])
            log(f"warm start from {cfg.init_adapter} ({init[1].get('name')}, "
                f"{len(init[1].get('loss_curve', []))} steps)")
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
        start, curve, train_s = 0, [], 0.0
        if ck is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(pm, ck["lora"])
            opt.load_state_dict(ck["optim"])
            sched.load_state_dict(ck["sched"])
            start, curve, train_s = ck["step"], ck["curve"], ck["train_s"]
            log(f"resuming {out} at step {start}/{cfg.steps}")
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="organism", unit="step", disable=not progress)
        step, t_last = start, time.perf_counter()

        def checkpoint() -> None:
            state = {"digest": digest, "step": step, "lora": lora_state(pm), "optim": opt.state_dict(),
                     "sched": sched.state_dict(), "curve": curve, "train_s": train_s}
            atomic_write_with(ck_path, lambda p: torch.save(state, p))

        def meta_at(done: int, name: str) -> dict:
            """The adapter's metadata after ``done`` steps (a snapshot's says which step it is)."""
            t = {**timing, "train_s": round(train_s, 1), "threads": torch.get_num_threads(),
                 "s_per_step": round(train_s / max(1, done), 3)}
            meta = {
                "name": name,
                "base_model": {"name": model.name, "fingerprint": model.weights_fingerprint, "source": model.source,
                               "dtype": dtype_name(model.dtype)},
                "lora": asdict(spec),
                "config": cfg.to_dict(),
                "config_digest": digest,
                "recipe": recipe.describe(),
                "split": split.to_dict(),
                "loss_curve": curve[:done],
                "timing": t,
                "versions": _versions(),
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            }
            if init is not None:
                meta["init_adapter"] = {"path": str(cfg.init_adapter), "name": init[1].get("name"),
                                        "weights_sha256": init[1].get("weights_sha256"),
                                        "steps": len(init[1].get("loss_curve", []))}
            if done < cfg.steps:
                meta["snapshot"] = {"step": done, "of_steps": cfg.steps,
                                    "note": "saved mid-run; the learning-rate schedule is the full run's"}
            return meta

        out.mkdir(parents=True, exist_ok=True)
        autocast = stack.enter_context(frozen_weights_in(model, cfg.precision))
        while step < cfg.steps:
            if stop_after is not None and step - start >= stop_after:
                bar.close()
                return TrainResult(out, {}, start)
            examples = recipe.batch(step, cfg.batch_size)
            with autocast():
                loss, per_row = example_loss(model, examples, use_prefix=cfg.use_prefix)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            now = time.perf_counter()
            train_s += now - t_last
            t_last = now
            kinds: dict[str, list[float]] = {}
            for ex, lr_ in zip(examples, per_row.tolist()):
                kinds.setdefault(ex.kind, []).append(lr_)
            curve.append({"step": step, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0],
                          **{f"loss_{k}": round(sum(v) / len(v), 5) for k, v in kinds.items()}})
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint()
            if step in cfg.snapshots:
                snap = out / f"step-{step}"
                save_adapter(snap, pm, meta_at(step, snap.name))
                log(f"snapshot at step {step} → {snap}/")
        bar.close()
        meta = meta_at(cfg.steps, out.name)
        save_adapter(out, pm, meta)
        ck_path.unlink(missing_ok=True)
        log(f"adapter → {out}/ ({cfg.steps} steps, {train_s:.0f} s of training, final loss "
            f"{sum(c['loss'] for c in curve[-10:]) / len(curve[-10:]):.3f})")
        return TrainResult(out, json.loads(meta_path.read_text()), start)
    finally:
        stack.close()
        pm.unload()
