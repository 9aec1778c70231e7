"""Running the model under nnsight: one forward pass, or a generation, with interventions and recording.

Both run their steps through ``step.touch_layers`` (the single place where a step reads and edits
modules) and return ``Recording``s: ``forward`` one, ``generate`` one per step that ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import nnsight
import torch

from .errors import ConfigError, IntrospectError
from .batch import Batch
from .inject import Injection
from .interventions import InterventionPlan, ResidualPatch
from .prompts import RenderedPrompt
from .record import RecordSpec, Recording
from .step import StepStore, as_batch, eos_ids, layer_hidden, make_plan, quiet_nnsight, touch_layers
from .verbosity import install as _quiet_by_default

_quiet_by_default()  # transformers is imported by now (nnsight): hide its chatter (verbosity.py)


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
    batch = as_batch(model, prompts)
    plan = make_plan(model, batch, injections, ablations, patches)
    spec = record if record is not None else RecordSpec(layers=[], residual=False, logits=True)
    rec_layers = model.arch.resolve_layers(spec.layers) if spec.layers != [] else []
    with torch.no_grad(), quiet_nnsight():
        with model.nn.trace(batch.inputs(model.device), **model.trace_kwargs) as tracer:
            store = StepStore()
            touch_layers(model, plan, spec, batch, 0, rec_layers, store)
            if spec.logits:
                logits = model.nn.output.logits
                store.logits = (logits[:, -1:] if spec.last_token_only else logits).detach().cpu()
            store = nnsight.save(store)
            if not spec.logits:
                # nothing is read above the last layer touched: the layers above it and the LM head need not
                # run (concept vectors at layers 12-16 of 30 cost 45 % of a full pass)
                tracer.stop()
    return store.recording(batch, plan, rec_layers)


@dataclass
class Generation:
    """Generated continuations of a batch, with the injection doses and (optional) per-step recordings.

    ``recording`` holds one ``Recording`` per forward pass that ran (the prefill ``[B, T, ...]``, then one
    ``[B, 1, ...]`` per KV-cached decode step), the type ``forward`` returns; empty when nothing was recorded."""

    batch: Batch
    sequences: torch.Tensor  # [B, T + new] padded prompt + new tokens
    new_tokens: list[list[int]]  # per row, up to and excluding the first EOS
    texts: list[str]
    doses: list[list[float | None]]
    recording: list[Recording] = field(default_factory=list)


MIN_PREFIX = 16  # below this a shared prefix is not worth a separate forward pass

MIN_TEMPERATURE = 1e-4
"""Smallest sampling temperature above 0. Logits / 1e-300 overflow float32: HF generate then raises on inf/nan
probabilities mid-run (on every resume), continuous sampling returned the last vocabulary id for every token.
A temperature this small already samples the argmax; 0 is greedy decoding."""


def check_temperature(temperature: float) -> None:
    """Refuse a positive temperature too small to divide the logits by (see ``MIN_TEMPERATURE``)."""
    if 0 < temperature < MIN_TEMPERATURE:
        raise ConfigError(f"temperature {temperature!r} is below {MIN_TEMPERATURE:g} (it overflows the logits); "
                          "pass 0 for greedy decoding")


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

    The norms are read from each decoder layer's output (a forward hook), as ``step.touch_layers`` reads
    them: HF's ``hidden_states[-1]`` is taken after the final norm, not at the last layer's output."""
    if model.remote:
        raise IntrospectError("prefix caching is local-only; run remote models without it")
    import inspect

    t = torch.tensor([list(ids)], device=model.device)
    sums: dict[int, tuple[float, float]] = {}

    def hook(layer: int):
        def record(module: Any, args: Any, out: Any) -> None:
            hs = layer_hidden(out)[0][0, 1:].float().norm(dim=-1)
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
    if temperature:
        check_temperature(temperature)
    batch = as_batch(model, prompts)
    plan = make_plan(model, batch, injections, ablations)
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
    with torch.no_grad(), quiet_nnsight():
        with model.nn.generate(**kwargs, **model.trace_kwargs) as tracer:
            with tracer.invoke(batch.inputs(model.device)):
                store = StepStore()
                for step in tracer.iter[:max_new_tokens]:
                    touch_layers(model, plan, record, batch, step, rec_layers, store)
            with tracer.invoke():
                store = nnsight.save(store)
                sequences = tracer.result.save()
    sequences = sequences.detach().cpu()
    eos = eos_ids(model)
    new_tokens, texts = [], []
    for r in range(batch.size):
        toks = sequences[r, batch.width:].tolist()
        cut = next((i for i, t in enumerate(toks) if t in eos), len(toks))
        new_tokens.append(toks[:cut])
        texts.append(model.tokenizer.decode(toks[:cut], skip_special_tokens=True))
    return Generation(batch, sequences, new_tokens, texts, plan.doses(store.ref_norms),
                      store.recordings(batch, plan, rec_layers))
