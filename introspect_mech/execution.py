"""Running the model under nnsight: one forward pass, or a generation, with interventions and recording.

``_touch_layers`` is the single place where a step (a trace, a generation prefill, or
one KV-cached decode step) reads and edits modules. It visits layers in execution
order and, inside a layer, o_proj input → attention output (→ its post-norm) → MLP write →
layer output, which is the order nnsight 0.8 requires.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import nnsight
import torch

from .errors import ConfigError, IntrospectError
from .batch import Batch, make_batch
from .inject import Injection
from .interventions import InterventionPlan, ResidualPatch
from .prompts import RenderedPrompt
from .record import RecordSpec, Recording, cosine_to
from .verbosity import install as _quiet_by_default

_quiet_by_default()  # transformers is imported by now (nnsight): hide its chatter (verbosity.py)


@contextmanager
def _quiet_nnsight():
    """A bounded ``tracer.iter`` cut short by EOS warns that later steps were never reached; that is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        yield


def _as_batch(model: Any, prompts: Batch | Sequence[RenderedPrompt | str]) -> Batch:
    return prompts if isinstance(prompts, Batch) else make_batch(model.tokenizer, prompts)


def _unwrap(out: Any) -> tuple[torch.Tensor, bool]:
    """Decoder layers return a tensor in transformers 5 and a tuple in older versions."""
    return (out[0], True) if isinstance(out, tuple) else (out, False)


def _touch_layers(model: Any, plan: InterventionPlan, spec: RecordSpec | None, batch: Batch | None, step: int,
                  rec_layers: list[int], store: dict, row_positions: torch.Tensor | None = None) -> None:
    """Read/edit every module this step needs, in execution order. Runs inside a trace.

    Token positions come from ``batch`` (a left-padded batch at generation step ``step``), or are
    given as ``row_positions`` ``[B, S]`` (the continuous loop, whose rows are at different steps;
    -1 marks a pad token)."""
    arch, nn = model.arch, model.nn
    want_res = spec is not None and (spec.residual or spec.cosine_with is not None)
    want_attn = spec is not None and spec.attention
    want_heads = spec is not None and spec.head_outputs
    want_comp = spec is not None and spec.components
    rec_set = set(rec_layers)
    layers = sorted(set(plan.edit_layers) | set(plan.ablation_layers) | set(plan.mlp_layers)
                    | (rec_set if spec else set()))
    for L in layers:
        if (want_heads and L in rec_set) or L in plan.ablations:
            op = arch.o_proj(nn, L)
            x = op.input
            if L in plan.ablations:
                x = plan.apply_heads(L, x, prefill=(step == 0), positions=batch.positions(x.shape[1], batch.width + step))
                op.input = x
            if want_heads and L in rec_set:
                xk = x[:, -1:] if spec.last_token_only else x
                b, s, _ = xk.shape
                store["heads"].setdefault(L, []).append(xk.detach().reshape(b, s, arch.n_heads, arch.head_dim).cpu())
        if (want_attn or want_comp) and L in rec_set:
            a_out = arch.attn(nn, L).output if want_attn or not arch.block.attn_write else None
            if want_attn:
                w = a_out[1]
                if w is None:
                    raise IntrospectError("attention weights are None: load the model with attention=True (eager attention)")
                store["attn"].setdefault(L, []).append((w[:, :, -1:] if spec.last_token_only else w).detach().cpu())
            if want_comp:  # the attention write: the module's output, or its post-norm's (Gemma 2/3, OLMo-2)
                ao = arch.attn_write(nn, L).output if arch.block.attn_write else a_out
                ao = ao[0] if isinstance(ao, tuple) else ao
                store["attn_out"].setdefault(L, []).append((ao[:, -1:] if spec.last_token_only else ao).detach().cpu())
        if L in plan.mlp_ablations or (want_comp and L in rec_set):
            mlp = arch.mlp_write(nn, L)  # the MLP's write to the residual stream (post-norm output where there is one)
            y = mlp.output
            flat = y.ndim == 2  # OPT runs its MLP on tokens flattened to [B*S, d]
            if flat:
                y = y.reshape(plan.batch_size, -1, y.shape[-1])
            if L in plan.mlp_ablations:
                y = plan.apply_mlp(L, y, prefill=(step == 0), positions=batch.positions(y.shape[1], batch.width + step))
                mlp.output = y.reshape(-1, y.shape[-1]) if flat else y
            if want_comp and L in rec_set:
                store["mlp_out"].setdefault(L, []).append((y[:, -1:] if spec.last_token_only else y).detach().cpu())
        edits = L in plan.slots or L in plan.patches or L in plan.directions
        if edits or (want_res and L in rec_set):
            lay = arch.layer(nn, L)
            h, is_tuple = _unwrap(lay.output)
            s = h.shape[1]
            # the layer sees the last `s` of `width + step` columns (all of them at a plain prefill; fewer when a
            # shared prefix is served from the KV cache; one per cached decode step)
            positions = batch.positions(s, batch.width + step) if row_positions is None else row_positions
            if step == 0 and L in plan.slots:
                norms = h.detach().float().norm(dim=-1).cpu()
                m = plan.dose_norm_mask(positions)
                total, count = (norms * m).sum(1), m.sum(1).float()
                if L in plan.prefix_norms:  # the cached prefix's tokens count towards the mean ‖h‖ too
                    ps, pc = plan.prefix_norms[L]
                    total, count = total + ps, count + pc
                store["ref_norms"][L] = total / count.clamp_min(1)
            if edits:
                h = plan.apply_residual(L, h, positions, prefill=(step == 0))
                lay.output = (h,) + tuple(lay.output[1:]) if is_tuple else h
            if want_res and L in rec_set:
                kept = h[:, -1:] if spec.last_token_only else h
                if spec.residual:
                    store["res"].setdefault(L, []).append(kept.detach().cpu())
                if spec.cosine_with is not None:
                    vecs = spec.cosine_with
                    vecs = vecs[:, L, :] if vecs.ndim == 3 else vecs
                    store["cos"].setdefault(L, []).append(cosine_to(kept.detach().float(), vecs.float().to(h.device)).cpu())


def _new_store() -> dict:
    return {"res": {}, "attn": {}, "heads": {}, "cos": {}, "ref_norms": {}, "attn_out": {}, "mlp_out": {}}


def _plan(model: Any, batch: Batch, injections, ablations, patches) -> InterventionPlan:
    return InterventionPlan(model.arch, batch.size, injections, ablations, patches, dtype=model.dtype,
                            device=model.device)


def forward(
    model: Any,
    prompts: Batch | Sequence[RenderedPrompt | str],
    injections: Sequence[Injection | Sequence[Injection] | None] | None = None,
    *,
    record: RecordSpec | None = None,
    ablations: Sequence[Any] = (),
    patches: Sequence[ResidualPatch] = (),
) -> Recording:
    """One batched forward pass with per-row injections, ablations, patches and recording."""
    batch = _as_batch(model, prompts)
    plan = _plan(model, batch, injections, ablations, patches)
    spec = record if record is not None else RecordSpec(layers=[], residual=False, logits=True)
    rec_layers = model.arch.resolve_layers(spec.layers) if spec.layers != [] else []
    with torch.no_grad(), _quiet_nnsight():
        with model.nn.trace(batch.inputs(model.device), **model.trace_kwargs):
            store = _new_store()
            _touch_layers(model, plan, spec, batch, 0, rec_layers, store)
            if spec.logits:
                logits = model.nn.output.logits
                store["logits"] = (logits[:, -1:] if spec.last_token_only else logits).detach().cpu()
            store = nnsight.save(store)
    return _to_recording(batch, plan, rec_layers, store, steps=False)


def _to_recording(batch: Batch, plan: InterventionPlan, rec_layers: list[int], store: dict, steps: bool) -> Recording:
    def first(d: dict) -> dict:
        return {k: v[0] for k, v in d.items()}

    rec = Recording(batch=batch, layers=rec_layers)
    rec.residual, rec.attention = first(store["res"]), first(store["attn"])
    rec.head_outputs, rec.cosine = first(store["heads"]), first(store["cos"])
    rec.attn_out, rec.mlp_out = first(store["attn_out"]), first(store["mlp_out"])
    rec.logits = store.get("logits")
    rec.ref_norms = dict(store["ref_norms"])
    rec.doses = plan.doses(rec.ref_norms)
    if steps:
        rec.steps = store  # type: ignore[attr-defined]
    return rec


@dataclass
class Generation:
    """Generated continuations of a batch, with the injection doses and (optional) per-step recordings."""

    batch: Batch
    sequences: torch.Tensor  # [B, T + new] padded prompt + new tokens
    new_tokens: list[list[int]]  # per row, up to and excluding the first EOS
    texts: list[str]
    doses: list[list[float | None]]
    recording: dict = field(default_factory=dict)  # per layer: list over steps of [B, S, ...] tensors


def _eos_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.hf, "generation_config", None), model.config):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return ids


MIN_PREFIX = 16  # below this a shared prefix is not worth a separate forward pass


@dataclass
class PrefixCache:
    """The KV cache of a prompt prefix shared by every row of a batch (no intervention inside it).

    Why: the Exp 1 prompt is identical across trials up to the injection start (145 of 175
    tokens on SmolLM2), so its prefill is computed once and reused by every batch. The
    residual norms of the prefix tokens are kept so that doses are the same as without it.
    """

    ids: tuple[int, ...]
    cache: Any
    norm_sums: dict  # layer -> (sum of ‖h‖ over prefix positions >= 1, count)

    @property
    def length(self) -> int:
        return len(self.ids)


def build_prefix_cache(model: Any, ids: Sequence[int]) -> PrefixCache:
    """Prefill ``ids`` once (batch 1, no intervention) and keep its KV cache and per-layer residual norm sums.

    The norms are read from each decoder layer's output (a forward hook), as ``_touch_layers`` reads
    them: HF's ``hidden_states[-1]`` is taken after the final norm, not at the last layer's output."""
    if model.remote:
        raise IntrospectError("prefix caching is local-only; run remote models without it")
    import inspect

    t = torch.tensor([list(ids)], device=model.device)
    sums: dict[int, tuple[float, float]] = {}

    def hook(layer: int):
        def record(module: Any, args: Any, out: Any) -> None:
            hs = _unwrap(out)[0][0, 1:].float().norm(dim=-1)
            sums[layer] = (float(hs.sum()), float(hs.numel()))
        return record

    handles = [model.arch.layer(model.hf, L).register_forward_hook(hook(L)) for L in range(model.arch.n_layers)]
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.hf.forward).parameters else {}
    try:
        with torch.no_grad():
            out = model.hf(t, use_cache=True, **keep)
    finally:
        for h in handles:
            h.remove()
    return PrefixCache(tuple(ids), out.cache if hasattr(out, "cache") else out.past_key_values, sums)


def attach_prefix(prefix: PrefixCache, batch: Batch, plan: InterventionPlan) -> Any:
    """A per-batch copy of the prefix's KV cache, after checking that the batch may use it.

    Every row must start with the prefix (no left padding) and no intervention may reach
    into it; the plan learns the prefix's residual norms so that doses are unchanged."""
    import copy

    P = prefix.length
    if int(batch.pad.max()) != 0 or any(tuple(p.input_ids[:P]) != prefix.ids for p in batch.prompts) \
            or batch.width <= P:
        raise ConfigError("prefix cache does not match: every row must start with the cached prefix and be longer")
    starts = [int(s.starts[r]) for slots in plan.slots.values() for s in slots for r in s.rows]
    if any(st < P for st in starts) or plan.ablations or plan.mlp_ablations or plan.directions:
        raise ConfigError("an intervention reaches into the cached prefix; run without the prefix cache")
    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(batch.size)
    plan.prefix_norms = {L: prefix.norm_sums[L] for L in plan.slots}
    return cache


def generate(
    model: Any,
    prompts: Batch | Sequence[RenderedPrompt | str],
    injections: Sequence[Injection | Sequence[Injection] | None] | None = None,
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    seed: int | None = None,
    record: RecordSpec | None = None,
    ablations: Sequence[Any] = (),
    prefix: PrefixCache | None = None,
    **generate_kwargs: Any,
) -> Generation:
    """Batched generation; injections apply at the prefill *and* at every decoded token in their window.

    ``temperature=0`` is greedy decoding; otherwise sampling, seeded with ``seed``. ``prefix``
    reuses the KV cache of a prefix that every row shares and that no intervention touches.
    """
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens must be >= 1")
    batch = _as_batch(model, prompts)
    plan = _plan(model, batch, injections, ablations, ())
    if prefix is not None:
        generate_kwargs["cache"] = attach_prefix(prefix, batch, plan)  # transformers 5 name (past_key_values is deprecated)
    rec_layers = model.arch.resolve_layers(record.layers) if record is not None else []
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=model.tokenizer.pad_token_id)
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    kwargs.update(generate_kwargs)
    if seed is not None:
        torch.manual_seed(int(seed))
    # The store is saved in a second, empty invoke: when every row stops early (EOS), nnsight never runs
    # the code after `tracer.iter[...]` in the first one, so a save placed there would leave `store`
    # unbound (the crash of a short-answer `steer`). The loop has filled this same dict in place.
    with torch.no_grad(), _quiet_nnsight():
        with model.nn.generate(**kwargs, **model.trace_kwargs) as tracer:
            with tracer.invoke(batch.inputs(model.device)):
                store = _new_store()
                for step in tracer.iter[:max_new_tokens]:
                    _touch_layers(model, plan, record, batch, step, rec_layers, store)
            with tracer.invoke():
                store = nnsight.save(store)
                sequences = tracer.result.save()
    sequences = sequences.detach().cpu()
    eos = _eos_ids(model)
    new_tokens, texts = [], []
    for r in range(batch.size):
        toks = sequences[r, batch.width:].tolist()
        cut = next((i for i, t in enumerate(toks) if t in eos), len(toks))
        new_tokens.append(toks[:cut])
        texts.append(model.tokenizer.decode(toks[:cut], skip_special_tokens=True))
    recording = {k: v for k, v in store.items() if k != "ref_norms" and v}
    return Generation(batch, sequences, new_tokens, texts, plan.doses(store["ref_norms"]), recording)
