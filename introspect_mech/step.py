"""One step of the engine: what every forward pass that runs under nnsight shares, whoever drives it.

A *step* is one forward pass inside an nnsight trace: a plain ``forward``, the prefill or one KV-cached
decode step of ``generate``, one step of the compact decode loop (``decode``) or of the continuous loop
(``continuous``). Each of them builds its batch and ``InterventionPlan`` here, calls ``touch_layers``
(the single place where a step reads and edits modules) with a ``StepStore``, and turns the store into
``Recording``s. Why one public module: the decoders are separate files, and a new decode strategy should
be able to run a step without reaching into another module's private names.

``touch_layers`` visits layers in execution order and, inside a layer, o_proj input → attention output
(→ its post-norm) → MLP write → layer output, which is the order nnsight 0.8 requires.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from .batch import Batch, make_batch
from .errors import IntrospectError
from .inject import Injection
from .interventions import InterventionPlan, ResidualPatch
from .prompts import RenderedPrompt
from .record import RecordSpec, Recording, cosine_to

if TYPE_CHECKING:
    from .models import Model


@contextmanager
def quiet_nnsight() -> Iterator[None]:
    """A bounded ``tracer.iter`` cut short by EOS warns that later steps were never reached; that is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        yield


def as_batch(model: Model, prompts: Batch | Sequence[RenderedPrompt | str]) -> Batch:
    """``prompts`` as a left-padded ``Batch`` (a ``Batch`` is passed through)."""
    return prompts if isinstance(prompts, Batch) else make_batch(model.tokenizer, prompts)


def make_plan(model: Model, batch: Batch, injections: Sequence[Injection | Sequence[Injection] | None] | None,
              ablations: Sequence[Any] = (), patches: Sequence[ResidualPatch] = ()) -> InterventionPlan:
    """The batch's interventions as dense per-row tensors, on the model's device and dtype."""
    return InterventionPlan(model.arch, batch.size, injections, ablations, patches, dtype=model.dtype,
                            device=model.device)


def layer_hidden(out: Any) -> tuple[torch.Tensor, bool]:
    """A decoder layer's hidden states, and whether its output is a tuple (transformers 5 returns a tensor, older
    versions a tuple)."""
    return (out[0], True) if isinstance(out, tuple) else (out, False)


def eos_ids(model: Model) -> set[int]:
    """Every token id that ends a reply: the generation config's, the model config's and the tokenizer's EOS."""
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


@dataclass
class StepStore:
    """What ``touch_layers`` records, under the ``Recording`` field names: per layer, one tensor per step run.

    ``ref_norms`` (the mean ‖h‖ per row at each injection layer, which the doses divide by) is filled at
    step 0 only. A store is created *inside* the trace and saved there (``nnsight.save``), so that it
    comes back from a remote trace too."""

    residual: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    attention: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    head_outputs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    cosine: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    attn_out: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    mlp_out: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    ref_norms: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def n_steps(self) -> int:
        """How many steps recorded something (a generation cut short by EOS records fewer than it allowed)."""
        return max((len(v) for d in self._per_layer() for v in d.values()), default=0)

    def _per_layer(self) -> tuple[dict[int, list[torch.Tensor]], ...]:
        return self.residual, self.attention, self.head_outputs, self.cosine, self.attn_out, self.mlp_out

    def recording(self, batch: Batch, plan: InterventionPlan, layers: list[int], step: int = 0) -> Recording:
        """Step ``step`` as a ``Recording``. The prefill (step 0) also carries the reference norms and the doses."""
        def at(d: dict[int, list[torch.Tensor]]) -> dict[int, torch.Tensor]:
            return {L: v[step] for L, v in d.items() if len(v) > step}

        rec = Recording(batch=batch, layers=list(layers), residual=at(self.residual), attention=at(self.attention),
                        head_outputs=at(self.head_outputs), cosine=at(self.cosine), attn_out=at(self.attn_out),
                        mlp_out=at(self.mlp_out), logits=self.logits if step == 0 else None)
        if step == 0:
            rec.ref_norms = dict(self.ref_norms)
            rec.doses = plan.doses(rec.ref_norms)
        return rec

    def recordings(self, batch: Batch, plan: InterventionPlan, layers: list[int]) -> list[Recording]:
        """One ``Recording`` per step that ran (none when nothing was recorded)."""
        return [self.recording(batch, plan, layers, k) for k in range(self.n_steps())]


def touch_layers(model: Model, plan: InterventionPlan, spec: RecordSpec | None, batch: Batch | None, step: int,
                 rec_layers: list[int], store: StepStore, row_positions: torch.Tensor | None = None) -> None:
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
                store.head_outputs.setdefault(L, []).append(
                    xk.detach().reshape(b, s, arch.n_heads, arch.head_dim).cpu())
        if (want_attn or want_comp) and L in rec_set:
            a_out = arch.attn(nn, L).output if want_attn or not arch.block.attn_write else None
            if want_attn:
                w = a_out[1]
                if w is None:
                    raise IntrospectError("attention weights are None: load the model with attention=True (eager attention)")
                store.attention.setdefault(L, []).append((w[:, :, -1:] if spec.last_token_only else w).detach().cpu())
            if want_comp:  # the attention write: the module's output, or its post-norm's (Gemma 2/3, OLMo-2)
                ao = arch.attn_write(nn, L).output if arch.block.attn_write else a_out
                ao = ao[0] if isinstance(ao, tuple) else ao
                store.attn_out.setdefault(L, []).append((ao[:, -1:] if spec.last_token_only else ao).detach().cpu())
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
                store.mlp_out.setdefault(L, []).append((y[:, -1:] if spec.last_token_only else y).detach().cpu())
        edits = L in plan.slots or L in plan.patches or L in plan.directions
        if edits or (want_res and L in rec_set):
            lay = arch.layer(nn, L)
            h, is_tuple = layer_hidden(lay.output)
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
                store.ref_norms[L] = total / count.clamp_min(1)
            if edits:
                h = plan.apply_residual(L, h, positions, prefill=(step == 0))
                lay.output = (h,) + tuple(lay.output[1:]) if is_tuple else h
            if want_res and L in rec_set:
                kept = h[:, -1:] if spec.last_token_only else h
                if spec.residual:
                    store.residual.setdefault(L, []).append(kept.detach().cpu())
                if spec.cosine_with is not None:
                    vecs = spec.cosine_with
                    vecs = vecs[:, L, :] if vecs.ndim == 3 else vecs
                    store.cosine.setdefault(L, []).append(
                        cosine_to(kept.detach().float(), vecs.float().to(h.device)).cpu())
