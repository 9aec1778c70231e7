"""Continuous batching: a fixed number of slots, each running one trial; a finished trial's slot goes to the next.

Why: in a batch, rows finish at different steps (EOS, or Exp 2's 5- and 15-token replies), and a
batch of one prompt leaves every other prompt (yes-bias questions, open questions, Exp 2/3
sentences) to small batches of its own. Here trials with any prompts share the running batch:
when a row finishes it leaves, and a waiting trial is prefilled into the freed slot — from the
KV cache of its prompt's prefix when other trials share that prefix (built once per sweep,
``execution.build_prefix_cache``). Each row keeps its own positions, windows and injections; the
per-row key/value buffers are ``kv_slots.SlotCache``.

Interventions go through the same ``step.touch_layers`` and ``InterventionPlan`` as every other path,
with each row's unpadded token positions, so windows and doses are those of ``execution.generate``.
Greedy tokens equal ``execution.generate``'s (tested on four architectures and the real model).

Sampling: each trial draws from its own ``torch.Generator`` seeded from the trial (``trial_seed``),
one uniform number per generated token, so a trial's random stream does not depend on which
trials ran beside it or in which slot. What can still differ with the batch's composition is
float rounding (other matrix shapes), which moves a sampled token only when the uniform draw falls
within rounding distance of a boundary of the cumulative distribution (measured in benchmarks/).

Local models only: a remote (NDIF) run is one request per trace, and the batch-level
``generate`` is the right unit there.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import nnsight
import torch

from .errors import ConfigError, IntrospectError
from .execution import MIN_PREFIX, PrefixCache, build_prefix_cache, check_temperature
from .inject import Injection
from .interventions import InterventionPlan
from .kv_slots import SlotCache, cascade_supported
from .prompts import RenderedPrompt
from .step import StepStore, eos_ids, quiet_nnsight, touch_layers

def trial_seed(run_seed: int, trial_id: str) -> int:
    """The seed of one trial's sampling stream: a function of the run's seed and the trial alone."""
    return int(hashlib.sha256(f"{int(run_seed)}:trial:{trial_id}".encode()).hexdigest()[:8], 16)


def inverse_cdf(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Unnormalized cumulative distribution of ``softmax(logits / temperature)`` along the last axis (the draw
    scales by its last entry).

    Why written out: at 128 rows × a 49k vocabulary every pass over the logits is ~25 MB of memory traffic,
    and sampling was ~5 % of a decode step. Dividing by a temperature of 1 is skipped and the exponential
    is taken in place — the same floats as ``exp(z - max z).cumsum()`` (tested), two passes fewer."""
    z = logits if temperature == 1 else logits / temperature
    e = z - z.amax(-1, keepdim=True)
    return e.exp_().cumsum(-1)


def prefix_length(prompt: RenderedPrompt, injections: Sequence[Injection]) -> int:
    """Tokens at the start of ``prompt`` that no injection touches and that can come from a cache (0: none).

    The last prompt token is always run (its logits give the first new token)."""
    P = len(prompt) - 1
    for inj in injections:
        P = min(P, inj.window.start)
    return P if P >= MIN_PREFIX else 0


MAX_STEM_EXTRA = 64
"""Most own columns a row takes on to join the common stem's group (``stem_lengths``)."""


def stem_lengths(requests: Sequence[Request]) -> list[int]:
    """Each request's cascade offset: where its own key/value columns start.

    Why: a request's cacheable prefix (``prefix_length``) ends where its injection starts or at its
    last prompt token, so the clean controls and the twenty yes-bias questions of an Exp 1 sweep each
    have a prefix of their own although they share the 129-token preamble with the injected trials.
    Under cascade attention every distinct prefix is a group with its own ~15 small operations per
    layer and step (measured: 12-22 groups in most decode steps of a paper-sized sweep, attention
    then 30 % of the run). Here the prefixes are cut at their longest common prefix with the most
    used one (the *stem*) when that leaves a row at most ``MAX_STEM_EXTRA`` more own columns: a
    decode step then attends to one shared stem, and each row's columns from the stem to its own
    prefix are copied from that prefix's cache (computed once), not recomputed. Deterministic: a
    function of the request list only; the tokens change by float rounding at most (tested)."""
    keys = [tuple(r.prompt.input_ids[: prefix_length(r.prompt, r.injections)]) for r in requests]
    counts: dict[tuple, int] = {}
    for k in keys:
        if k:
            counts[k] = counts.get(k, 0) + 1
    if not counts:
        return [0] * len(keys)
    top = max(counts, key=lambda k: counts[k])  # ties: the first in request order (dicts keep insertion order)
    out = []
    for k in keys:
        n = 0
        for a, b in zip(k, top):
            if a != b:
                break
            n += 1
        out.append(n if n >= MIN_PREFIX and len(k) - n <= MAX_STEM_EXTRA else len(k))
    return out


@dataclass(frozen=True, eq=False)
class Request:
    """One trial to generate: prompt, injections, its own reply limit and sampling seed."""

    prompt: RenderedPrompt
    injections: tuple[Injection, ...] = ()
    max_new_tokens: int = 100
    seed: int | None = None


@dataclass
class Completion:
    """A finished request: its index in the request list, new tokens (up to, without, EOS), injection doses."""

    index: int
    tokens: list[int]
    doses: list[float | None]


@dataclass
class _Row:
    index: int
    request: Request
    length: int = 0  # tokens in the cache
    out: list[int] = field(default_factory=list)
    doses: list[float | None] = field(default_factory=list)
    gen: torch.Generator | None = None
    done: bool = False
    offset: int = 0  # cascade attention: the cached prefix's length (the row stores positions offset..)
    prefix: PrefixCache | None = None


def _check(model: Any, requests: Sequence[Request], slots: int, temperature: float, min_new_tokens: int) -> None:
    if model.remote:
        raise IntrospectError("continuous decoding runs local models only; use execution.generate for remote runs")
    if slots < 1:
        raise ConfigError(f"slots must be >= 1, got {slots}")
    if temperature < 0 or min_new_tokens < 0:
        raise ConfigError("temperature and min_new_tokens must be >= 0")
    check_temperature(temperature)
    for r in requests:
        if r.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if len(r.prompt) == 0:
            raise ConfigError("a prompt tokenized to zero tokens")


class _Loop:
    """State of one ``generate_continuous`` call (kept in an object so the steps read as steps)."""

    def __init__(self, model: Any, requests: Sequence[Request], slots: int, temperature: float,
                 prefixes: dict | None, min_new_tokens: int, refill: int | None, cascade: bool | None) -> None:
        self.model, self.requests, self.temperature = model, list(requests), float(temperature)
        self.min_new = int(min_new_tokens)
        self.prefixes = prefixes
        self.n_slots = min(int(slots), len(self.requests))
        self.refill = max(1, self.n_slots // 8) if refill is None else max(1, int(refill))
        if cascade is None:
            cascade = prefixes is not None and cascade_supported(model)
        self.cascade = bool(cascade) and prefixes is not None
        # cascade: each row's own columns start at its stem (stem_lengths); without it, rows hold their whole prompt
        self.stems = stem_lengths(self.requests) if self.cascade else [0] * len(self.requests)
        skip = self.stems
        capacity = max(len(r.prompt) - k + r.max_new_tokens for r, k in zip(self.requests, skip))
        self.cache = SlotCache(model, self.n_slots, capacity, cascade=self.cascade)
        self.queue = deque(range(len(self.requests)))
        self.active: list[_Row] = []
        self.plan: InterventionPlan | None = None
        self.eos = sorted(eos_ids(model))
        tok = model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (self.eos[0] if self.eos else 0)
        keep = "logits_to_keep" in inspect.signature(model.hf.forward).parameters
        self.fwd_kwargs = dict(use_cache=True, **({"logits_to_keep": 1} if keep else {}), **model.trace_kwargs)
        self.stats = {"forwards": 0, "prefill_forwards": 0, "row_steps": 0, "prefill_tokens": 0}

    # ---- one forward pass -----------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, start: int, plan: InterventionPlan,
                 step: int, rows: Sequence[_Row]) -> tuple[torch.Tensor, dict]:
        """Run ``ids`` (rows = slots ``start..``) at ``positions`` through the model with ``plan``; last logits."""
        model, dev = self.model, self.model.device
        if self.cascade:
            self.cache.prepare(start, positions, torch.tensor([r.offset for r in rows]), [r.prefix for r in rows])
        else:
            self.cache.prepare(start, positions)
        pos = positions.to(dev)
        with torch.no_grad(), quiet_nnsight(), self.cache.mask_hook(model):
            with model.nn.trace(input_ids=ids.to(dev), position_ids=pos.clamp(min=0), cache=self.cache,
                                **self.fwd_kwargs):
                store = StepStore()
                touch_layers(model, plan, None, None, step, [], store, row_positions=positions)
                logits = model.nn.output.logits[:, -1].save()
                norms = nnsight.save(store.ref_norms)
        self.stats["forwards"] += 1
        return logits, dict(norms)

    def _plan(self, rows: Sequence[_Row]) -> InterventionPlan:
        return InterventionPlan(self.model.arch, len(rows), [list(r.request.injections) for r in rows],
                                dtype=self.model.dtype, device=self.model.device)

    # ---- sampling -------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        logits = logits.float()
        if self.min_new and self.eos:
            young = [i for i, r in enumerate(rows) if len(r.out) < self.min_new]
            if young:
                eos = torch.tensor(self.eos, device=logits.device)
                logits[torch.tensor(young, device=logits.device)[:, None], eos[None, :]] = -float("inf")
        if self.temperature == 0:
            return logits.argmax(-1).tolist()
        # inverse-CDF sampling: one uniform per row from the row's own generator (so a trial's stream is
        # one draw per generated token, whatever else is in the batch); float32, as HF's multinomial uses
        cdf = inverse_cdf(logits, self.temperature)
        u = torch.stack([torch.rand((), generator=r.gen) for r in rows]).to(cdf.device)
        idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
        return idx.clamp(max=cdf.shape[-1] - 1).tolist()

    def _advance(self, rows: Sequence[_Row], tokens: list[int]) -> None:
        for r, t in zip(rows, tokens):
            if t in self.eos:
                r.done = True
                continue
            r.out.append(t)
            if len(r.out) >= r.request.max_new_tokens:
                r.done = True

    # ---- admission: prefill waiting trials into free slots --------------------------------
    def _prefix(self, req: Request) -> PrefixCache | None:
        if self.prefixes is None:
            return None
        P = prefix_length(req.prompt, req.injections)
        return self._cached(tuple(req.prompt.input_ids[:P])) if P else None

    def _cached(self, key: tuple[int, ...]) -> PrefixCache:
        assert self.prefixes is not None
        if key not in self.prefixes:
            self.prefixes[key] = build_prefix_cache(self.model, key)
        return self.prefixes[key]

    def _admit(self, n: int) -> None:
        rows = []
        for _ in range(n):
            i = self.queue.popleft()
            req = self.requests[i]
            gen = None
            if self.temperature > 0:
                gen = torch.Generator()
                if req.seed is not None:
                    gen.manual_seed(int(req.seed))
                else:
                    gen.seed()
            rows.append(_Row(i, req, gen=gen))
        groups: dict = {}
        for r in rows:  # rows that share a cached prefix are prefilled together, in order of arrival
            pre = self._prefix(r.request)
            groups.setdefault(None if pre is None else pre.ids, (pre, []))[1].append(r)
        for pre, group in groups.values():
            start = len(self.active)
            P = 0 if pre is None else pre.length
            suffixes = [r.request.prompt.input_ids[P:] for r in group]
            S = max(len(s) for s in suffixes)
            ids = torch.full((len(group), S), int(self.pad_id), dtype=torch.long)
            pos = torch.full((len(group), S), -1, dtype=torch.long)
            for i, s in enumerate(suffixes):
                ids[i, S - len(s):] = torch.tensor(s, dtype=torch.long)
                pos[i, S - len(s):] = torch.arange(P, P + len(s))
            if pre is not None and self.cascade:  # the rows keep positions S.. only; attention reads the stem
                S = self.stems[group[0].index]
                stem = pre if S == P else self._cached(pre.ids[:S])
                if S < P:  # positions S..P-1 come from the row's own prefix cache
                    self.cache.load_prefix(start, len(group), pre, offset=S)
                for r in group:
                    r.offset, r.prefix = S, stem
            elif pre is not None:
                self.cache.load_prefix(start, len(group), pre)
            plan = self._plan(group)
            if pre is not None:
                plan.prefix_norms = {L: pre.norm_sums[L] for L in plan.slots}
            logits, norms = self._forward(ids, pos, start, plan, step=0, rows=group)
            self.stats["prefill_forwards"] += 1
            self.stats["prefill_tokens"] += sum(len(s) for s in suffixes)
            for r, d in zip(group, plan.doses(norms)):
                r.doses, r.length = d, len(r.request.prompt)
            self.active += group
            self._advance(group, self._sample(logits, group))
        self.plan = None

    # ---- one decode step over every running row -------------------------------------------
    def _step(self) -> None:
        rows = self.active
        if self.plan is None:
            self.plan = self._plan(rows)
        ids = torch.tensor([[r.out[-1]] for r in rows], dtype=torch.long)
        pos = torch.tensor([[r.length] for r in rows], dtype=torch.long)
        logits, _ = self._forward(ids, pos, 0, self.plan, step=1, rows=rows)
        self.stats["row_steps"] += len(rows)
        for r in rows:
            r.length += 1
        self._advance(rows, self._sample(logits, rows))

    def _retire(self) -> list[_Row]:
        """Remove finished rows; move survivors from the end into the holes so running rows stay in slots 0..n-1."""
        done = [r for r in self.active if r.done]
        if not done:
            return []
        n_keep = len(self.active) - len(done)
        holes = [i for i in range(n_keep) if self.active[i].done]
        movers = [i for i in range(n_keep, len(self.active)) if not self.active[i].done]
        for h, m in zip(holes, movers):
            self.cache.move(m, h, self.active[m].length - self.active[m].offset)
            self.active[h] = self.active[m]
        del self.active[n_keep:]
        self.plan = None
        return done

    def run(self) -> Iterator[Completion]:
        for _ in self._run():
            yield _
        self.stats["kv_bytes"] = self.cache.buffer_bytes()

    def _run(self) -> Iterator[Completion]:
        while self.queue or self.active:
            free = self.n_slots - len(self.active)
            if self.queue and free and (not self.active or free >= self.refill or len(self.queue) <= free):
                self._admit(min(free, len(self.queue)))
            else:
                self._step()
            for r in self._retire():
                yield Completion(r.index, r.out, r.doses)


def generate_continuous(
    model: Any,
    requests: Sequence[Request],
    *,
    slots: int = 32,
    temperature: float = 0.0,
    prefixes: dict | None = None,
    min_new_tokens: int = 0,
    refill: int | None = None,
    stats: dict | None = None,
    cascade: bool | None = None,
) -> Iterator[Completion]:
    """Generate every request with at most ``slots`` running at once; yields each ``Completion`` as it finishes.

    Requests are admitted in list order. ``prefixes`` (a dict used as a cache across calls) turns on
    prefix reuse: a request's prompt up to its first injected position (``prefix_length``) is
    prefilled once and copied into each slot that needs it. A slot freed by a finished row is
    refilled when ``refill`` slots are free (default: an eighth of them), or when the waiting
    trials fit; admitting in groups amortizes the prefill forward pass over several rows.
    ``temperature=0`` is greedy; otherwise plain sampling (no top-k/top-p) from each request's
    own seeded stream. ``min_new_tokens`` forbids EOS before that many tokens (benchmarks).
    ``stats`` (a dict) receives counts of forward passes, row-steps and prefill tokens, and at the end the
    bytes of the key/value buffers (``kv_bytes``). ``cascade`` (default: where ``kv_slots.cascade_supported``
    and prefixes are on) keeps each shared prefix's keys once and attends to them once per step for all
    the rows that share it (``kv_slots.cascade_attention``) instead of copying them into every row.
    """
    _check(model, requests, slots, temperature, min_new_tokens)
    if not requests:
        return iter(())
    loop = _Loop(model, requests, slots, temperature, prefixes, min_new_tokens, refill, cascade)
    if stats is not None:
        loop.stats = stats
        stats.update({k: 0 for k in ("forwards", "prefill_forwards", "row_steps", "prefill_tokens")})
    return loop.run()


def generate_all(model: Any, requests: Sequence[Request], **kwargs: Any) -> list[Completion]:
    """``generate_continuous`` collected into a list in request order."""
    out = sorted(generate_continuous(model, requests, **kwargs), key=lambda c: c.index)
    return out
