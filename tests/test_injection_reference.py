"""Injection on the real embedded model, checked against a plain PyTorch forward hook.

The reference hooks below are written from scratch here (they do not import the
toolkit's intervention code): if the toolkit's positions or per-step application
were wrong, these comparisons would fail.
"""

from __future__ import annotations

import pytest
import torch

import introspect_mech as im
from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt

from _real import smol, smol_vectors  # noqa: F401

pytestmark = pytest.mark.integration
LAYER = 19


class AddHook:
    """Adds ``vec`` to decoder-layer outputs at absolute positions in ``[start, end)``.

    Tracks positions itself: the first call (prefill) sees the whole prompt, every later
    call (a KV-cached decode step) sees one token at the next position.
    """

    def __init__(self, vec: torch.Tensor, start: int, end: int | None = None):
        self.vec, self.start, self.end, self.seen = vec, start, end, 0

    def __call__(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        n = h.shape[1]
        pos = torch.arange(self.seen, self.seen + n)
        self.seen += n
        sel = (pos >= self.start) & (pos < (self.end if self.end is not None else 10**9))
        h = h.clone()
        h[:, sel] = h[:, sel] + self.vec
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h


def hook_logits(model, ids: list[int], vec, start, end=None):
    handle = model.hf.model.layers[LAYER].register_forward_hook(AddHook(vec, start, end))
    try:
        with torch.no_grad():
            return model.hf(torch.tensor([ids])).logits[0]
    finally:
        handle.remove()


def hook_greedy(model, ids: list[int], vec, start, n_new: int) -> list[int]:
    handle = model.hf.model.layers[LAYER].register_forward_hook(AddHook(vec, start))
    try:
        with torch.no_grad():
            out = model.hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=n_new, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def exp1(smol):
    return exp1_prompt(smol.tokenizer)


def test_forward_injection_matches_forward_hook(smol, smol_vectors, exp1):
    vec = smol_vectors.get("dust", LAYER)
    strength = 4.0
    inj = im.Injection(vec, LAYER, strength, exp1.window)
    rec = im.forward(smol, [exp1.rendered], [inj])
    ref = hook_logits(smol, list(exp1.rendered.input_ids), strength * vec, exp1.start)
    clean = hook_logits(smol, list(exp1.rendered.input_ids), torch.zeros_like(vec), 0)
    assert (rec.logits[0] - ref).abs().max().item() <= 1e-4
    # the injection did something (so the comparison above is not vacuous)
    assert (ref - clean)[exp1.start:].abs().max().item() > 1e-2
    # and nothing before the window changed
    assert (rec.logits[0, :exp1.start] - clean[:exp1.start]).abs().max().item() <= 1e-4


def test_greedy_generation_injects_at_every_step(smol, smol_vectors, exp1):
    vec = smol_vectors.get("dust", LAYER)
    strength, n_new = 8.0, 16
    ids = list(exp1.rendered.input_ids)
    gen = im.generate(smol, [exp1.rendered], [im.Injection(vec, LAYER, strength, exp1.window)],
                      max_new_tokens=n_new, min_new_tokens=n_new)
    ref = hook_greedy(smol, ids, strength * vec, exp1.start, n_new)
    assert gen.sequences[0, len(ids):].tolist() == ref
    # injecting only at the prefill is a different intervention: it must give other tokens here,
    # otherwise this test could not tell per-step injection from prefill-only injection
    prefill_only = hook_greedy_prefill_only(smol, ids, strength * vec, exp1.start, n_new)
    assert prefill_only != ref


def hook_greedy_prefill_only(model, ids, vec, start, n_new):
    hook = AddHook(vec, start, len(ids))
    handle = model.hf.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()
    finally:
        handle.remove()


def _four_rows(smol, smol_vectors, exp1):
    tok = smol.tokenizer
    short = im.render(tok, [im.Turn("user", "Tell me a story about a cat.")])
    mid = im.render(tok, [im.Turn("user", "What is the capital of France? Answer in one word.")])
    raw = im.render(tok, [im.Turn("user", "Name three colours.")], fmt="raw")
    prompts = [exp1.rendered, short, mid, raw]
    injections = [
        im.Injection(smol_vectors.get("dust", LAYER), LAYER, 4.0, exp1.window),
        im.Injection(smol_vectors.get("lightning", LAYER), LAYER, 8.0, im.Window.span(3, 9)),
        None,
        im.Injection(smol_vectors.get("origami", LAYER), LAYER, 2.0, im.Window.all()),
    ]
    return prompts, injections


def test_left_padded_batch_equals_single_prompt_runs(smol, smol_vectors, exp1):
    prompts, injections = _four_rows(smol, smol_vectors, exp1)
    lengths = {len(p) for p in prompts}
    assert len(lengths) == 4, "rows must differ in length so that left padding is exercised"
    batched = im.forward(smol, prompts, injections)
    for r, (p, inj) in enumerate(zip(prompts, injections)):
        single = im.forward(smol, [p], [inj])
        got = batched.row(batched.logits[r], r)
        assert got.shape == single.logits[0].shape
        # padded and unpadded rows run matmuls of other shapes, so float32 sums are reduced in another order:
        # measured up to 1.6e-4 (logits of magnitude ~15) on a 2-core x86 CPU; a window or padding bug gives > 1
        assert (got - single.logits[0]).abs().max().item() <= 5e-4, f"row {r}"
        if inj is not None:  # and the single run itself matches the hook reference
            ref = hook_logits(smol, list(p.input_ids), inj.strength * inj.vector, inj.window.start, inj.window.end)
            assert (single.logits[0] - ref).abs().max().item() <= 1e-4


def test_left_padded_batch_generation_equals_single_prompt(smol, smol_vectors, exp1):
    prompts, injections = _four_rows(smol, smol_vectors, exp1)
    n_new = 10
    batched = im.generate(smol, prompts, injections, max_new_tokens=n_new)
    for r, (p, inj) in enumerate(zip(prompts, injections)):
        single = im.generate(smol, [p], [inj], max_new_tokens=n_new)
        assert batched.new_tokens[r] == single.new_tokens[0], f"row {r}"


def test_dose_is_reported_and_scales_with_strength(smol, smol_vectors, exp1):
    vec = smol_vectors.get("dust", LAYER)
    rec = im.forward(smol, [exp1.rendered, exp1.rendered],
                     [im.Injection(vec, LAYER, 2.0, exp1.window), im.Injection(vec, LAYER, 4.0, exp1.window)])
    d2, d4 = rec.doses[0][0], rec.doses[1][0]
    # independent computation of ‖s·v‖ / mean‖h‖ over prompt tokens 1.. at the layer, clean run
    with torch.no_grad():
        hs = smol.hf(torch.tensor([exp1.rendered.input_ids]), output_hidden_states=True).hidden_states[LAYER + 1][0]
    mean_norm = hs[1:].norm(dim=-1).mean()
    assert d2 == pytest.approx(float(2.0 * vec.norm() / mean_norm), rel=1e-4)
    assert d4 == pytest.approx(2 * d2, rel=1e-6)


def test_controls_random_negated_scaling(smol, smol_vectors, exp1):
    vec = smol_vectors.get("dust", LAYER)
    inj = im.Injection(vec, LAYER, 4.0, exp1.window, label="dust")
    rnd = inj.random_direction(seed=3)
    assert rnd.vector.norm().item() == pytest.approx(vec.norm().item(), rel=1e-5)
    assert abs(torch.nn.functional.cosine_similarity(rnd.vector, vec, dim=0).item()) < 0.2
    assert torch.equal(inj.random_direction(seed=3).vector, rnd.vector)
    assert torch.equal(inj.negated().vector, -vec)
    scale = im.Injection.scaling(LAYER, 3.0, exp1.window)
    rec = im.forward(smol, [exp1.rendered], [scale])
    handle = smol.hf.model.layers[LAYER].register_forward_hook(
        lambda m, a, o: torch.cat([o[:, :exp1.start], o[:, exp1.start:] * 3.0], dim=1))
    try:
        with torch.no_grad():
            ref = smol.hf(torch.tensor([exp1.rendered.input_ids])).logits[0]
    finally:
        handle.remove()
    assert (rec.logits[0] - ref).abs().max().item() <= 1e-4
    assert rec.doses[0][0] == pytest.approx(2.0)


def test_prefix_kv_cache_gives_the_same_generation_and_dose(smol, smol_vectors, exp1):
    """Reusing the KV cache of the shared prefix (up to the injection start) changes nothing observable."""
    from introspect_mech.execution import build_prefix_cache

    vecs = [smol_vectors.get(w, LAYER) for w in ("dust", "origami", "lightning")]
    injs = [im.Injection(v, LAYER, 8.0, exp1.window) for v in vecs] + [None]
    prompts = [exp1.rendered] * 4
    prefix = build_prefix_cache(smol, exp1.rendered.input_ids[:exp1.start])
    a = im.generate(smol, prompts, injs, max_new_tokens=12)
    b = im.generate(smol, prompts, injs, max_new_tokens=12, prefix=prefix)
    assert a.new_tokens == b.new_tokens
    for r in range(3):
        assert b.doses[r][0] == pytest.approx(a.doses[r][0], rel=1e-5)
    # an injection that starts inside the cached prefix is refused, not silently skipped
    early = [im.Injection(vecs[0], LAYER, 8.0, im.Window.from_position(exp1.start - 5))]
    with pytest.raises(ValueError, match="prefix"):
        im.generate(smol, [exp1.rendered], early, max_new_tokens=2, prefix=prefix)
