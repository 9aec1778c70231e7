"""``with im.steer(model, injection): ...`` — apply injections to any plain HF call on the model.

Why: a researcher who already has a generation loop (``model.hf.generate``, a pipeline, a custom
sampler) should be able to try an injection in one line, without rewriting it around
``im.generate``. Inside the block every forward pass of ``model.hf`` gets the injections
through the same ``InterventionPlan.apply_residual`` the toolkit's traces use, with the same
window semantics: positions count from each row's first real token (left padding does not
shift them) and continue over generated tokens, read from the attention mask of each call.

This is plain PyTorch hooks on the local module, removed on exit (also on an exception); it is
tested to give the tokens of ``im.generate``. For NDIF (``remote=True``) use ``im.generate``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from .errors import IntrospectError
from .inject import Injection
from .interventions import InterventionPlan

if TYPE_CHECKING:
    from .models import Model


class _Positions:
    """Unpadded positions of the tokens each forward pass feeds, from its attention mask (or a running count)."""

    def __init__(self) -> None:
        self.current: torch.Tensor | None = None
        self.prefill = True
        self._seen = 0

    def pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        shape = ids.shape if ids is not None else emb.shape[:2]
        b, s = int(shape[0]), int(shape[1])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            pos = mask.long().cumsum(-1) - 1
            pos = pos.masked_fill(mask == 0, -1)  # pad columns fall outside every window
            self.current = pos[:, -s:]
            self.prefill = mask.shape[1] == s
        else:  # no mask: one unpadded sequence per row, counted across calls (a new prompt restarts it)
            start = 0 if s > 1 or self.current is None else self._seen
            self.current = torch.arange(start, start + s)[None, :].expand(b, s)
            self.prefill = start == 0
        self._seen = int(self.current.max()) + 1 if self.current.numel() else 0


@contextmanager
def steer(model: Model, injections: Injection | Sequence[Injection]) -> Iterator[None]:
    """Within the block, every row of every forward pass of ``model.hf`` gets ``injections``.

    >>> with im.steer(model, im.Injection(vec, 19, 8.0)):
    ...     out = model.hf.generate(**model.tokenizer("Hi", return_tensors="pt"), max_new_tokens=20)
    """
    if getattr(model, "remote", False) or getattr(model, "hf", None) is None:
        raise IntrospectError("im.steer hooks the local module; for a remote (NDIF) model use im.generate")
    injs = [injections] if isinstance(injections, Injection) else list(injections)
    if not injs or not all(isinstance(i, Injection) for i in injs):
        raise IntrospectError("im.steer needs one Injection or a list of them")
    InterventionPlan(model.arch, 1, [injs], dtype=model.dtype, device=model.device)  # validate before hooking
    pos = _Positions()
    plans: dict[int, InterventionPlan] = {}

    def plan_for(batch: int) -> InterventionPlan:
        if batch not in plans:
            plans[batch] = InterventionPlan(model.arch, batch, [injs] * batch, dtype=model.dtype, device=model.device)
        return plans[batch]

    def layer_hook(layer: int):
        def hook(module: Any, args: tuple, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            if pos.current is None or pos.current.shape != h.shape[:2]:
                raise IntrospectError("im.steer could not match this call's tokens to positions; call the model with "
                                      "input_ids and an attention_mask")
            h = plan_for(h.shape[0]).apply_residual(layer, h, pos.current, prefill=pos.prefill)
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    handles = [model.hf.register_forward_pre_hook(pos.pre_hook, with_kwargs=True)]
    try:
        for L in sorted(plan_for(1).slots):
            handles.append(model.arch.layer(model.hf, L).register_forward_hook(layer_hook(L)))
        yield
    finally:
        for h in handles:
            h.remove()
