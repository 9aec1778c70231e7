"""Layer-wise adapter ablation: which of the organism's adapted layers carry its detection report.

Why per layer, and why by swapping weights: the organism is the base model with a LoRA update merged
into the linear maps of some decoder layers (``adapter.merge_adapter``). "The LoRA removed from layer L"
is then exactly "layer L's weights are the base model's": ``AdapterSwitch`` keeps both versions of
every adapted layer and copies one or the other into the live model, so removing the LoRA from every
layer gives the base model bit for bit (tested), and removing it from none gives the organism. No
hook, no approximation, and every other module (nnsight traces, generation, the prefix cache) sees
a plain model.

``ablate_layers`` measures, for each ablation (the full organism, the base, each adapted layer
removed alone, each block of adjacent layers removed, each block kept alone), on the paper's 50
held-out words at one (layer, dose) cell: the detection claims (greedy, the rule grader's
``affirmative``), success (word or related concept, detection first), sampled no-injection false
positives, and, when asked, the "unusual, can't tell" rate of random norm-matched vectors. The
injections are built once, on the full organism, so every ablation gets the very same perturbation
(the concept vector and the dose reference are read at the injection layer, which the LoRA does not
touch when all adapted layers lie above it, as in ``organism train``'s layout). Effects are
differences from the full organism with Newcombe intervals (treating the two sides as independent,
which is conservative for these paired trials), beside the number of words that flip either way.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import torch

from ..errors import ConfigError
from ..stats import Difference, Rate, difference_interval, format_difference, format_rate

if TYPE_CHECKING:
    from ..models import Model

__all__ = ["AblationConfig", "AdapterSwitch", "Ablation", "ablate_layers", "ablations", "load_switch",
           "regrade_ablation", "summarize_ablation", "markdown"]


def _layer_params(model: Model, layer: int) -> dict[str, torch.Tensor]:
    return dict(model.arch.layer(model.hf, layer).named_parameters())


class AdapterSwitch:
    """Both versions (organism, base) of each adapted decoder layer, and a switch between them in place.

    ``organism`` is the live model (an adapter merged into it); ``base`` supplies the unadapted
    weights of the same layers and is not kept (only copies of those layers' parameters are)."""

    def __init__(self, organism: Model, base: Model, layers: Iterable[int]) -> None:
        self.model = organism
        self.layers = sorted({int(L) for L in layers})
        if not self.layers or any(not 0 <= L < organism.arch.n_layers for L in self.layers):
            raise ConfigError(f"adapted layers {self.layers} must be a non-empty subset of 0..{organism.arch.n_layers - 1}")
        if base.arch.n_layers != organism.arch.n_layers:
            raise ConfigError("the base model and the organism have different depths; pass the organism's own base model")
        self._organism: dict[int, dict[str, torch.Tensor]] = {}
        self._base: dict[int, dict[str, torch.Tensor]] = {}
        for L in self.layers:
            mine, theirs = _layer_params(organism, L), _layer_params(base, L)
            if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
                raise ConfigError(f"layer {L} of the base model does not match the organism's; pass its own base model")
            self._organism[L] = {k: p.detach().clone() for k, p in mine.items()}
            self._base[L] = {k: p.detach().clone() for k, p in theirs.items()}
        self.removed: tuple[int, ...] = ()

    def remove(self, layers: Iterable[int]) -> None:
        """The LoRA removed from ``layers`` (base weights there), kept on every other adapted layer."""
        drop = {int(L) for L in layers}
        unknown = drop - set(self.layers)
        if unknown:
            raise ConfigError(f"layers {sorted(unknown)} carry no adapter; the adapted layers are {self.layers}")
        with torch.no_grad():
            for L in self.layers:
                src = self._base[L] if L in drop else self._organism[L]
                for name, p in _layer_params(self.model, L).items():
                    p.copy_(src[name])
        self.removed = tuple(sorted(drop))

    @contextmanager
    def removed_from(self, layers: Iterable[int]) -> Iterator[Model]:
        """``with switch.removed_from([20, 21]) as model:`` … the full organism again afterwards."""
        self.remove(layers)
        try:
            yield self.model
        finally:
            self.remove(())


def load_switch(adapter: str | os.PathLike, **load_kwargs) -> tuple[Model, AdapterSwitch]:
    """The organism at ``adapter`` (``load_model(adapter=...)``) and a switch over its adapted layers; the
    base model is loaded with the same options, its adapted layers copied, and released."""
    from ..models import load_model
    from .adapter import check_adapter_path, read_adapter

    check_adapter_path(adapter)
    _, meta = read_adapter(adapter)
    organism = load_model(adapter=adapter, **load_kwargs)
    base = load_model(**load_kwargs)
    switch = AdapterSwitch(organism, base, meta["lora"]["layers"])
    del base
    return organism, switch


@dataclass(frozen=True)
class Ablation:
    """One condition: the adapted layers whose LoRA is removed (``()`` = the full organism)."""

    name: str
    removed: tuple[int, ...]
    kind: str  # "organism", "base", "single", "block removed", "block kept"


def _blocks(layers: Sequence[int], size: int) -> list[tuple[int, ...]]:
    out = [tuple(layers[i:i + size]) for i in range(0, len(layers), size)]
    if len(out) > 1 and len(out[-1]) < max(2, size // 2 + 1):  # fold a short tail into the last block
        tail = out.pop()
        out[-1] = out[-1] + tail
    return out


def ablations(layers: Sequence[int], *, singles: bool = True, block_size: int = 3) -> list[Ablation]:
    """The organism, the base (LoRA removed everywhere), each layer removed alone, each block of
    ``block_size`` adjacent layers removed, and each block kept alone (the rest removed)."""
    layers = sorted(layers)
    out = [Ablation("organism", (), "organism"), Ablation("base (LoRA removed from all)", tuple(layers), "base")]
    if singles:
        out += [Ablation(f"-{L}", (L,), "single") for L in layers]
    if block_size >= 2 and len(layers) > block_size:
        for b in _blocks(layers, block_size):
            out.append(Ablation(f"-{b[0]}..{b[-1]}", b, "block removed"))
        for b in _blocks(layers, block_size):
            out.append(Ablation(f"only {b[0]}..{b[-1]}", tuple(L for L in layers if L not in b), "block kept"))
    return out


@dataclass
class AblationConfig:
    """One (injection layer, dose) cell on the held-out words; what each ablation is measured on."""

    layer: int = 14
    dose: float = 0.5
    words: list[str] | None = None  # default: the paper's 50 (held out from training)
    singles: bool = True
    block_size: int = 3
    control_trials: int = 30  # sampled (T=1) no-injection trials per ablation: false positives
    random_per_ablation: int = 0  # greedy random norm-matched vectors per ablation: "unusual, can't tell"
    max_new_tokens: int = 16
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        from .evaluate import MAX_DOSE

        if not 0 < self.dose <= MAX_DOSE:
            raise ConfigError(f"--dose must be in (0, {MAX_DOSE:g}], got {self.dose}")
        if self.seed < 0 or self.layer < 0:
            raise ConfigError(f"--seed and --layer must be >= 0, got {self.seed}, {self.layer}")
        if self.block_size < 0 or self.control_trials < 0 or self.random_per_ablation < 0:
            raise ConfigError("--block-size, --control-trials and --random must be >= 0")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("--max-new-tokens and --batch-size must be >= 1")


def _rows(model: Model, cfg: AblationConfig, words: list[str]) -> list:
    """Greedy injected rows (every word), greedy random-vector rows and sampled no-injection rows, built once."""
    from ..concepts import extract_concept_vectors
    from ..experiments.injected_thoughts.prompt import exp1_prompt
    from ..inject import Injection, random_like
    from ..seeds import seed_from
    from .evaluate import EvalRow
    from .train import dose_references

    p = exp1_prompt(model.tokenizer)
    L = cfg.layer
    vectors = extract_concept_vectors(model, words, layers=[L])
    ref = dose_references(model, [(p.rendered, p.window)], [L])[0][L]
    rows = []
    for w in words:
        v = vectors.get(w, L)
        s = cfg.dose * ref / float(v.double().norm())
        rows.append(EvalRow("injected", "greedy", p.rendered, Injection(v, L, s, p.window, label=w), w, L, cfg.dose))
    for i in range(cfg.random_per_ablation):
        w = words[i % len(words)]
        v = vectors.get(w, L)
        s = cfg.dose * ref / float(v.double().norm())
        rv = random_like(v, seed_from("organism-ablation-random", w, L, i))
        rows.append(EvalRow("random_vector", "greedy", p.rendered, Injection(rv, L, s, p.window, label="random"), w, L,
                         cfg.dose))
    rows += [EvalRow("control", "sampled", p.rendered, None, words[k % len(words)]) for k in range(cfg.control_trials)]
    return rows


def ablate_layers(model: Model, switch: AdapterSwitch, cfg: AblationConfig, out: str | os.PathLike | None = None, *,
                  progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Generate and grade every ablation's trials (same injections, same seeds); summarise against the organism."""
    from ..grading.rules import RuleGrader
    from .evaluate import EvalConfig, generate_rows, grade
    from .words import held_out_words

    cfg.validate()
    cfg = AblationConfig(**{**asdict(cfg), "layer": model.arch.resolve_layer(cfg.layer)})
    words = [w.lower() for w in (cfg.words or held_out_words())]
    conds = ablations(switch.layers, singles=cfg.singles, block_size=cfg.block_size)
    t0 = time.perf_counter()
    switch.remove(())
    rows = _rows(model, cfg, words)
    gen_cfg = EvalConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)
    grader = RuleGrader()
    records: list[dict] = []
    for a in conds:
        with switch.removed_from(a.removed):
            recs = generate_rows(model, gen_cfg, rows, progress)  # same seeds in every ablation
        for r in recs:
            r.update({"ablation": a.name, "removed": list(a.removed), "kind": a.kind})
        records += recs
        log(f"  {a.name}: done ({time.perf_counter() - t0:.0f} s)")
    grade(records, grader)
    summary = summarize_ablation(records, conds)
    summary.update({"config": asdict(cfg), "model": model.describe(), "adapted_layers": switch.layers,
                    "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                    "grader": grader.name})
    if out is not None:
        from ..store import atomic_write_json, atomic_write_text

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        atomic_write_text(o / "records.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_json(o / "summary.json", summary)
        atomic_write_text(o / "summary.md", markdown(summary) + "\n")
    log(markdown(summary))
    return summary


def regrade_ablation(folder: str | os.PathLike, *, log: Callable[[str], None] = print) -> dict:
    """Grade and summarise a stored ablation's ``records.jsonl`` again (no model): for a changed grader or
    summary. Rewrites ``summary.json`` and ``summary.md`` beside it, keeping the stored config and timing."""
    from ..grading.rules import RuleGrader
    from ..store import atomic_write_json, atomic_write_text
    from .evaluate import grade, read_stored_records

    o = Path(folder)
    path = o / "records.jsonl"
    records = read_stored_records(path, {"ablation", "removed", "kind", "condition", "text", "word"},
                                  missing_hint="pass a folder written by `organism ablate --out`", json_hint="",
                                  what="organism ablation records")
    conds, seen = [], set()
    for r in records:
        if r["ablation"] not in seen:
            seen.add(r["ablation"])
            conds.append(Ablation(r["ablation"], tuple(r["removed"]), r["kind"]))
    grader = RuleGrader()
    grade(records, grader)
    summary = summarize_ablation(records, conds)
    old = o / "summary.json"
    prior = json.loads(old.read_text()) if old.is_file() else {}
    summary.update({k: prior[k] for k in ("config", "model", "adapted_layers", "seconds", "threads") if k in prior})
    summary["grader"] = grader.name
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(o / "summary.json", summary)
    atomic_write_text(o / "summary.md", markdown(summary) + "\n")
    log(markdown(summary))
    return summary


@dataclass
class AblationRow:
    """One ablation's rates, and its detection effect against the full organism."""

    name: str
    kind: str
    removed: list[int]
    detection: Rate
    success: Rate
    false_positive: Rate
    unusual_random: Rate | None
    concept_claim: Rate | None = None  # injected replies opening with "Yes" (the trained concept report)
    unusual_injected: Rate | None = None  # injected replies saying "unusual, can't tell what" (the random-vector report)
    net_detection: Difference | None = None  # detection − false positives
    effect: Difference | None = None  # detection − the organism's detection
    lost: int = 0  # words the organism detects and this ablation does not
    gained: int = 0


def summarize_ablation(records: Sequence[dict], conds: Sequence[Ablation]) -> dict:
    """Per ablation: detection, success, false positives, random-vector 'unusual'; effect vs the organism."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["ablation"], []).append(r)
    ref = {r["word"]: bool(r["affirmative"]) for r in by.get("organism", []) if r["condition"] == "injected"}
    ref_rate = Rate.from_bools(ref.values())
    rows = []
    for a in conds:
        recs = by.get(a.name, [])
        inj = [r for r in recs if r["condition"] == "injected"]
        det = Rate.from_bools(r["affirmative"] for r in inj)
        fp = Rate.from_bools(r["affirmative"] for r in recs if r["condition"] == "control")
        rnd = [r for r in recs if r["condition"] == "random_vector"]
        row = AblationRow(a.name, a.kind, list(a.removed), det, Rate.from_bools(r["success"] for r in inj), fp,
                          Rate.from_bools(r["unusual"] for r in rnd) if rnd else None)
        row.concept_claim = Rate.from_bools(r.get("says_yes") for r in inj)
        row.unusual_injected = Rate.from_bools(r.get("unusual") for r in inj)
        row.net_detection = difference_interval(det.k, det.n, fp.k, fp.n)
        row.effect = difference_interval(det.k, det.n, ref_rate.k, ref_rate.n)
        row.lost = sum(1 for r in inj if ref.get(r["word"]) and not r["affirmative"])
        row.gained = sum(1 for r in inj if ref.get(r["word"]) is False and r["affirmative"])
        rows.append(row)
    return {"rows": rows, "n_words": len(ref), "conditions": [asdict(a) for a in conds]}


def markdown(summary: dict) -> str:
    """The ablation table; the effect column is detection minus the full organism's."""
    c = summary.get("config") or {}
    head = (f"Injection layer {c.get('layer', '?')}, dose {c.get('dose', '?')}, {summary.get('n_words')} held-out words "
            f"(greedy); false positives: sampled no-injection trials; adapted layers {summary.get('adapted_layers')}; "
            f"grader {summary.get('grader', '?')}.")
    lines = [head, "", "| ablation | LoRA removed from | detection | Δ detection vs organism | words lost / gained | "
             "of which 'Yes, … about X' | of which 'unusual, can't tell' | success | false positives | net detection | "
             "random vec.: 'unusual' |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        rm = "–" if not r.removed else (f"{r.removed[0]}..{r.removed[-1]}" if len(r.removed) > 2 and
                                         r.removed == list(range(r.removed[0], r.removed[-1] + 1)) else
                                         ",".join(map(str, r.removed)))
        lines.append(f"| {r.name} | {rm} | {format_rate(r.detection)} | {format_difference(r.effect)} | "
                     f"{r.lost} / {r.gained} | {format_rate(r.concept_claim)} | {format_rate(r.unusual_injected)} | "
                     f"{format_rate(r.success)} | {format_rate(r.false_positive)} | "
                     f"{format_difference(r.net_detection)} | {format_rate(r.unusual_random)} |")
    return "\n".join(lines)
