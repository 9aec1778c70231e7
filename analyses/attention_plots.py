"""Per-layer attention plots: every head of a layer as a grid of heatmaps, a layer slider, token
labels on both axes, and the difference between two conditions (injected − clean).

One prompt, one forward pass per condition through the core API
(``forward(..., record=RecordSpec(attention=True))``); the weights come from eager attention,
so the model must be loaded with ``load_model(..., attention=True)`` (the core raises an
``IntrospectError`` saying so otherwise).

Causality, which the tests check: an injection at layer ``L`` is added to layer ``L``'s
*output*, so the attention patterns of layers ``0..L`` are exactly unchanged and only layers
``L+1..`` can differ — and there only in query rows at or after the injection window's start.

Command line: ``introspect-mech analyze attention [--prompt TEXT] [--concept dust] [--layer 0.67]
[--strength 8] [--png-layer N] [--max-tokens N] [--out figures/attention]``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from introspect_mech.errors import IntrospectError
from introspect_mech.execution import forward
from introspect_mech.inject import Injection, check_strength
from introspect_mech.model_options import add_model_args, load_model_from_args
from introspect_mech.plots import save_figure
from introspect_mech.prompts import RenderedPrompt, encode_text
from introspect_mech.record import RecordSpec
from introspect_mech.store import atomic_write_json

if TYPE_CHECKING:
    from introspect_mech.models import Model

__all__ = ["AttentionMaps", "AttentionMapsError", "attention_maps", "difference", "token_labels",
           "layer_grid_figure", "slider_figure", "summarize", "run", "main"]

DEFAULT_MAX_TOKENS = 32  # query rows kept in the slider HTMLs by the CLI (keeps each file a few MB)
DEFAULT_DECIMALS = 3


class AttentionMapsError(IntrospectError, ValueError):
    """Two attention maps cannot be compared, or a layer/token range is not in a map."""


# ---------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------


@dataclass
class AttentionMaps:
    """Attention weights of one prompt: ``weights[layer]`` is ``[H, T, T]`` (query × key), unpadded.

    ``kind`` is ``"attention"`` for recorded weights and ``"difference"`` for ``a − b``.
    ``tokens`` are display labels (``"12:↵"``), unique because each carries its position.
    """

    tokens: list[str]
    layers: list[int]
    weights: dict[int, torch.Tensor]
    token_ids: tuple[int, ...] = ()
    kind: str = "attention"
    label: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return int(next(iter(self.weights.values())).shape[0])

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def layer(self, layer: int) -> torch.Tensor:
        if layer not in self.weights:
            raise AttentionMapsError(f"layer {layer} was not recorded; recorded layers: {self.layers}")
        return self.weights[layer]


def _readable(text: str) -> str:
    # ↵ rather than ␤: the PNG renderer's fonts (DejaVu/Liberation) have no glyph for ␤
    text = (text.replace("\r", "\\r").replace("\n", "↵").replace("\t", "⇥")
            .replace("<", "‹").replace(">", "›"))  # '<' would be read as markup by plotly's text renderer
    if text == "":
        return "∅"
    if text.strip() == "":
        return "␣" * len(text) if len(text) <= 3 else f"␣×{len(text)}"
    return text if len(text) <= 14 else text[:13] + "…"


def token_labels(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Readable, unique axis labels: ``"POS:TEXT"`` with newlines as ↵ and blank tokens as ␣."""
    return [f"{i}:{_readable(tokenizer.decode([int(t)]))}" for i, t in enumerate(token_ids)]


def _as_prompt(model: Model, prompt: RenderedPrompt | str) -> RenderedPrompt:
    return prompt if isinstance(prompt, RenderedPrompt) else encode_text(model.tokenizer, str(prompt))


def attention_maps(model: Model, prompt: RenderedPrompt | str, injection: Injection | Sequence[Injection] | None = None,
                   layers: Any = None, *, label: str | None = None) -> AttentionMaps:
    """Record every head's attention pattern at ``layers`` (default: all) in one forward pass.

    ``prompt`` is a rendered prompt (``render(...)``) or raw text (tokenized as is, with BOS).
    ``injection`` (one or several, or ``None``) is applied in the same pass, exactly as the
    experiments apply it. Needs a model loaded with ``attention=True``.
    """
    rp = _as_prompt(model, prompt)
    rec = forward(model, [rp], [injection], record=RecordSpec(layers=layers, attention=True, residual=False,
                                                              logits=False))
    pad = int(rec.batch.pad[0])
    weights = {}
    for L in rec.layers:
        a = rec.attention.get(L)
        if a is None:  # the core raises on None weights; this guards an empty store
            raise IntrospectError(f"no attention weights were recorded at layer {L}: load the model with attention=True")
        weights[L] = a[0, :, pad:, pad:].float().clone()
    injs = [] if injection is None else ([injection] if isinstance(injection, Injection) else list(injection))
    meta = {"model": getattr(model, "name", ""), "injections": [i.describe() for i in injs],
            "doses": [d for d in rec.doses[0] if d is not None] if rec.doses else []}
    if label is None:
        label = "clean" if not injs else "injected " + ", ".join(i.label or "vector" for i in injs)
    return AttentionMaps(token_labels(model.tokenizer, rp.input_ids), list(rec.layers), weights,
                         tuple(int(t) for t in rp.input_ids), "attention", label, meta)


def difference(a: AttentionMaps, b: AttentionMaps, *, label: str | None = None) -> AttentionMaps:
    """``a − b`` per layer and head (e.g. injected − clean); both must be maps of the same prompt."""
    same_prompt = (a.token_ids == b.token_ids) if (a.token_ids and b.token_ids) else (a.tokens == b.tokens)
    if not same_prompt:
        raise AttentionMapsError(
            f"attention maps of different prompts ({a.n_tokens} vs {b.n_tokens} tokens) cannot be subtracted; "
            "record both conditions on the same rendered prompt")
    if a.layers != b.layers:
        raise AttentionMapsError(f"recorded layers differ ({a.layers} vs {b.layers}); record both with the same layers")
    for L in a.layers:
        if a.weights[L].shape != b.weights[L].shape:
            raise AttentionMapsError(f"layer {L}: shapes {tuple(a.weights[L].shape)} and {tuple(b.weights[L].shape)} "
                                     "differ (different models?)")
    return AttentionMaps(list(a.tokens), list(a.layers), {L: a.weights[L] - b.weights[L] for L in a.layers},
                         a.token_ids, "difference", label if label is not None else f"{a.label} − {b.label}",
                         {"minuend": a.meta, "subtrahend": b.meta})


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def _range(spec: Any, n: int, what: str) -> range:
    """``None`` (all), a ``slice``, or a ``(start, end)`` pair → a non-empty ``range`` of token indices."""
    if spec is None:
        return range(n)
    if isinstance(spec, range):
        spec = slice(spec.start, spec.stop)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        spec = slice(*spec)
    if not isinstance(spec, slice) or spec.step not in (None, 1):
        raise AttentionMapsError(f"{what} range must be None, a slice or a (start, end) pair, got {spec!r}")
    r = range(n)[spec]
    if len(r) == 0:
        raise AttentionMapsError(f"{what} range {spec!r} selects no token of a {n}-token prompt")
    return r


def _last(max_tokens: int | None, n: int) -> range:
    if max_tokens is None:
        return range(n)
    if max_tokens < 1:
        raise AttentionMapsError(f"max_tokens must be >= 1, got {max_tokens}")
    return range(max(0, n - max_tokens), n)


def _grid(n_heads: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n_heads))
    return math.ceil(n_heads / cols), cols


def _z(w: torch.Tensor, q: range, k: range, decimals: int) -> list[list[Any]]:
    """Rounded values as nested lists; future keys (k > q) become gaps; exact zeros are written as ``0``."""
    sub = w[q.start:q.stop, k.start:k.stop].double().round(decimals=decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    rows = sub.tolist()
    for i, qi in enumerate(q):
        row = rows[i]
        for j, kj in enumerate(k):
            if kj > qi:
                row[j] = None
            elif row[j] == 0.0:
                row[j] = 0
    return rows


def _scale(maps: AttentionMaps, layer: int, q: range, k: range) -> dict:
    w = maps.layer(layer)[:, q.start:q.stop, k.start:k.stop]
    if maps.kind == "difference":
        m = float(w.abs().max()) or 0.01  # an all-zero layer (before the injection) still gets a sane colour bar
        return dict(colorscale="RdBu_r", zmin=-m, zmax=m, zmid=0.0)
    return dict(colorscale="Viridis", zmin=0.0, zmax=float(w.max()) or 1.0)


def _head_traces(maps: AttentionMaps, layer: int, q: range, k: range, decimals: int, visible: bool) -> list[go.Heatmap]:
    w = maps.layer(layer)
    xs, ys = [maps.tokens[i] for i in k], [maps.tokens[i] for i in q]
    scale = _scale(maps, layer, q, k)
    unit = "Δ attention" if maps.kind == "difference" else "attention"
    traces = []
    for h in range(w.shape[0]):
        traces.append(go.Heatmap(
            z=_z(w[h], q, k, decimals), x=xs, y=ys, visible=visible, showscale=(h == 0), name=f"L{layer} H{h}",
            colorbar=dict(title=dict(text=unit), len=0.9), hoverongaps=False, **scale,
            hovertemplate=f"layer {layer} head {h}<br>query %{{y}}<br>key %{{x}}<br>{unit} %{{z}}<extra></extra>"))
    return traces


def _layout(fig: go.Figure, n_rows: int, n_cols: int, title: str, width: int | None,
            height: int | None) -> None:
    fig.update_xaxes(type="category", tickfont=dict(size=8), tickangle=-60, automargin=True, showgrid=False)
    fig.update_yaxes(type="category", tickfont=dict(size=8), autorange="reversed", automargin=True, showgrid=False)
    for c in range(1, n_cols + 1):
        fig.update_xaxes(title_text="key", title_font=dict(size=10), row=n_rows, col=c)
    for r in range(1, n_rows + 1):
        fig.update_yaxes(title_text="query", title_font=dict(size=10), row=r, col=1)
    fig.update_layout(title=title, template="plotly_white", width=width, height=height or 330 * n_rows + 140,
                      margin=dict(t=90))


def layer_grid_figure(maps: AttentionMaps, layer: int, *, queries: Any = None, keys: Any = None, cols: int = 3,
                      decimals: int = 4, title: str | None = None, width: int | None = None,
                      height: int | None = None) -> go.Figure:
    """All heads of ``layer`` as a grid of heatmaps (query on y, key on x, token labels on both axes).

    One colour scale is shared by every head of the layer: sequential from 0 for attention,
    diverging and centred at 0 for a difference. ``queries`` / ``keys`` crop the token
    axes (``None``, a ``slice`` or a ``(start, end)`` pair).
    """
    q, k = _range(queries, maps.n_tokens, "query"), _range(keys, maps.n_tokens, "key")
    n_rows, n_cols = _grid(maps.n_heads, cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[f"head {h}" for h in range(maps.n_heads)],
                        horizontal_spacing=0.08, vertical_spacing=0.12)
    for h, tr in enumerate(_head_traces(maps, layer, q, k, decimals, True)):
        fig.add_trace(tr, row=h // n_cols + 1, col=h % n_cols + 1)
    _layout(fig, n_rows, n_cols, title or f"{maps.label}: layer {layer}", width, height)
    return fig


def slider_figure(maps: AttentionMaps, max_tokens: int | None = None, *, queries: Any = None, keys: Any = None,
                  cols: int = 3, decimals: int = DEFAULT_DECIMALS, title: str | None = None) -> go.Figure:
    """The head grid of ``layer_grid_figure`` with a slider over every recorded layer.

    Every layer's heatmaps are in the file (one visible at a time), so size grows with
    layers × heads × rows × keys: ``max_tokens`` keeps only the last N query rows (the
    positions where an injection acts and the model answers), ``queries`` / ``keys`` give
    explicit ranges, and values are rounded to ``decimals``.
    """
    q = _range(queries, maps.n_tokens, "query") if queries is not None else _last(max_tokens, maps.n_tokens)
    k = _range(keys, maps.n_tokens, "key") if keys is not None else range(0, q.stop)
    n_rows, n_cols = _grid(maps.n_heads, cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[f"head {h}" for h in range(maps.n_heads)],
                        horizontal_spacing=0.08, vertical_spacing=0.12)
    nh = maps.n_heads
    base = title or maps.label
    for li, L in enumerate(maps.layers):
        for h, tr in enumerate(_head_traces(maps, L, q, k, decimals, li == 0)):
            fig.add_trace(tr, row=h // n_cols + 1, col=h % n_cols + 1)
    n = len(fig.data)
    titles = [f"{base}: layer {L}" + (" (no change)" if maps.kind == "difference" and not maps.weights[L].any() else "")
              for L in maps.layers]
    steps = []
    for li, L in enumerate(maps.layers):
        vis = [li * nh <= i < (li + 1) * nh for i in range(n)]
        steps.append(dict(method="update", label=str(L), args=[{"visible": vis}, {"title.text": titles[li]}]))
    fig.update_layout(sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="layer "), pad=dict(t=110))])
    _layout(fig, n_rows, n_cols, titles[0], None, 330 * n_rows + 260)
    return fig


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------


def summarize(diff: AttentionMaps, *, top: int = 5, n_keys: int = 3) -> dict:
    """Per layer and head: total |Δ| mass (over all query rows and keys) and the last query's mean |Δ|
    and total-variation distance; plus the ``top`` heads by the last query's mean |Δ| (unchanged heads
    are never listed) with the key tokens that gained and lost the most attention there."""
    if diff.kind != "difference":
        raise AttentionMapsError("summarize() takes a difference of two attention maps (see difference())")
    per_layer, ranked = [], []
    for L in diff.layers:
        w = diff.weights[L].double()
        heads = []
        for h in range(w.shape[0]):
            last = w[h, -1]
            row = {"head": h, "total_abs_delta": float(w[h].abs().sum()),
                   "last_query_mean_abs_delta": float(last.abs().mean()),
                   "last_query_tv": float(0.5 * last.abs().sum())}
            heads.append(row)
            ranked.append((row["last_query_mean_abs_delta"], L, h))
        per_layer.append({"layer": L, "total_abs_delta": float(w.abs().sum()),
                          "max_abs_delta": float(w.abs().max()), "heads": heads})
    ranked.sort(key=lambda t: (-t[0], t[1], t[2]))
    top_heads = []
    for score, L, h in [r for r in ranked if r[0] > 0][:top]:  # heads that did not change are not "top"
        last = diff.weights[L][h, -1].double()
        order = torch.argsort(last, descending=True).tolist()
        gained = [{"token": diff.tokens[i], "delta": float(last[i])} for i in order[:n_keys] if last[i] > 5e-4]
        lost = [{"token": diff.tokens[i], "delta": float(last[i])} for i in reversed(order[-n_keys:]) if last[i] < -5e-4]
        top_heads.append({"layer": L, "head": h, "last_query_mean_abs_delta": score,
                          "last_query_tv": float(0.5 * last.abs().sum()), "gained": gained, "lost": lost})
    return {"layers": list(diff.layers), "n_heads": diff.n_heads, "n_tokens": diff.n_tokens, "tokens": list(diff.tokens),
            "per_layer": per_layer, "top_heads_last_query": top_heads}


# ---------------------------------------------------------------------------------------
# Run: clean vs injected on one prompt
# ---------------------------------------------------------------------------------------


def run(model: Model, *, prompt: str = "exp1", concept: str = "dust", layer_inject: int | float | str = 0.67,
        strength: float = 8, png_layer: int | None = None, out_dir: str | Path = "figures/attention",
        max_tokens: int | None = DEFAULT_MAX_TOKENS, png: bool = True, vector: torch.Tensor | None = None,
        fmt: str = "auto") -> dict:
    """Record clean and injected attention on one prompt and write the figures and a summary.

    ``prompt="exp1"`` is the paper's Experiment 1 prompt, injected from the ``\\n\\n`` before
    "Trial 1" on; any other string is a user message, injected on every token. The concept
    vector is extracted for ``concept`` at the injection layer (or pass ``vector``). Writes
    ``attention_{clean,injected,diff}_slider.html``, ``attention_diff_layer{N}.{html,png}``
    (``png_layer``; default: the layer of the head whose last-query pattern changed most) and
    ``attention_summary.json``; returns the summary.
    """
    from introspect_mech.concepts import extract_concept_vectors
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_or_user_prompt

    strength = check_strength(strength)
    L = model.arch.resolve_layer(layer_inject)
    choice = exp1_or_user_prompt(model.tokenizer, prompt, fmt=fmt)
    rp, window, prompt_desc = choice.rendered, choice.window, choice.label
    if vector is None:
        vector = extract_concept_vectors(model, [concept], layers=[L]).get(concept, L)
    inj = Injection(vector, L, strength, window, label=concept)
    clean = attention_maps(model, rp, None)
    injected = attention_maps(model, rp, inj, label=f"injected '{concept}' (layer {L}, strength {strength:g})")
    diff = difference(injected, clean, label=f"injected − clean ('{concept}', layer {L}, strength {strength:g})")
    summary = summarize(diff)
    if png_layer is None:
        top = summary["top_heads_last_query"]
        png_layer = top[0]["layer"] if top and top[0]["last_query_mean_abs_delta"] > 0 else diff.layers[-1]
    png_layer = model.arch.resolve_layer(png_layer)
    diff.layer(png_layer)  # a clear error if it was not recorded

    out = Path(out_dir)
    files: dict[str, dict] = {}
    for name, maps in (("clean", clean), ("injected", injected), ("diff", diff)):
        fig = slider_figure(maps, max_tokens)
        files[f"{name}_slider"] = save_figure(fig, out / f"attention_{name}_slider", png=False)
    q = _last(max_tokens, diff.n_tokens)
    grid = layer_grid_figure(diff, png_layer, queries=(q.start, q.stop), keys=(0, q.stop))
    n_rows, _ = _grid(diff.n_heads, 3)
    files["diff_layer"] = save_figure(grid, out / f"attention_diff_layer{png_layer}", png=png, width=1500,
                                      height=max(700, 380 * n_rows + 160))
    summary.update({
        "model": getattr(model, "name", ""), "prompt": prompt_desc, "prompt_text": rp.text, "concept": concept,
        "layer_inject": L, "strength": strength, "window": window.to_dict(),
        "dose": injected.meta["doses"][0] if injected.meta.get("doses") else None,
        "png_layer": png_layer, "slider_query_rows": [q.start, q.stop],
        # the answer position's attention rows, every layer and head, for `--compare` across models
        "answer_position": {"layers": list(diff.layers),
                            "clean": [_answer_rows(clean, L) for L in diff.layers],
                            "injected": [_answer_rows(injected, L) for L in diff.layers]},
        "files": {k: v for k, v in files.items()},
        "note": ("attention at layers <= layer_inject is unchanged by construction (the injection is added to "
                 "that layer's output); one prompt, one model: descriptive, not a statistical result"),
    })
    summary_path = out / "attention_summary.json"
    atomic_write_json(summary_path, summary)
    summary["files"]["summary"] = {"json": str(summary_path)}
    return summary


def _answer_rows(maps: AttentionMaps, layer: int) -> list[list[float]]:
    """``[H][T]``: each head's attention from the last token (the answer position), 5 decimals."""
    return (maps.weights[layer][:, -1].double().round(decimals=5) + 0.0).tolist()


def _tv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Total-variation distance between attention rows, over the last axis (0: identical, 1: disjoint)."""
    return 0.5 * (a - b).abs().sum(-1)


def read_summary(folder: str | Path) -> dict:
    """A run's ``attention_summary.json``, checked to carry the answer-position rows ``compare`` needs."""
    import json

    path = Path(folder) / "attention_summary.json"
    if not path.is_file():
        raise AttentionMapsError(f"{path} does not exist; run `introspect-mech analyze attention --out {folder}` first")
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AttentionMapsError(f"{path} is not readable JSON ({exc}); re-run the analysis into {folder}") from None
    if "answer_position" not in s:
        raise AttentionMapsError(f"{path} has no answer-position rows (written by an older version); re-run the "
                                 f"analysis into {folder}")
    return s


def compare(folders: Sequence[str | Path], labels: Sequence[str] | None = None, out_dir: str | Path = "figures/attention",
            png: bool = True) -> dict:
    """Two runs of this analysis on the same prompt and injection (e.g. an organism and its base model) side by
    side at the answer position: per layer and head, (1)-(2) each model's injected-vs-clean total-variation
    distance, (3)-(4) the distance between the two models' attention rows under injection and without.

    Why TV distance of the answer row: it is what the answer token reads; 0 means the head attends exactly
    as before, 1 that it attends to disjoint tokens. Layers whose weights the two models share must give 0
    in (3)-(4) up to the injection's downstream effect (an adapter above them cannot reach them)."""
    import plotly.graph_objects as go

    if len(folders) != 2:
        raise AttentionMapsError(f"--compare takes two run folders (got {len(folders)})")
    labels = list(labels) if labels else [Path(f).name for f in folders]
    if len(labels) != 2:
        raise AttentionMapsError(f"--labels needs one label per compared folder (got {len(labels)})")
    a, b = (read_summary(f) for f in folders)
    if a["tokens"] != b["tokens"]:
        raise AttentionMapsError("the two runs used different prompts (token lists differ); run both on the same one")
    if (a["layer_inject"], a["strength"], a["concept"]) != (b["layer_inject"], b["strength"], b["concept"]):
        raise AttentionMapsError("the two runs injected differently (concept, layer or strength differ); "
                                 "compare runs of the same injection")
    if a["answer_position"]["layers"] != b["answer_position"]["layers"]:
        raise AttentionMapsError("the two runs recorded different layers (different model depths?)")
    layers = a["answer_position"]["layers"]
    t = {(r, c): torch.tensor(s["answer_position"][c], dtype=torch.float64)
         for r, s in ((0, a), (1, b)) for c in ("clean", "injected")}  # [L, H, T]
    panels = {f"{labels[0]}: injected vs clean": _tv(t[0, "injected"], t[0, "clean"]),
              f"{labels[1]}: injected vs clean": _tv(t[1, "injected"], t[1, "clean"]),
              f"{labels[0]} vs {labels[1]}, injected": _tv(t[0, "injected"], t[1, "injected"]),
              f"{labels[0]} vs {labels[1]}, clean": _tv(t[0, "clean"], t[1, "clean"])}
    fig = make_subplots(rows=1, cols=4, subplot_titles=list(panels), shared_yaxes=True, horizontal_spacing=0.03)
    zmax = max(float(v.max()) for v in panels.values()) or 1.0
    for i, (name, v) in enumerate(panels.items(), start=1):
        fig.add_trace(go.Heatmap(z=v.tolist(), x=[f"H{h}" for h in range(v.shape[1])], y=layers, zmin=0, zmax=zmax,
                                 colorscale="Viridis", showscale=i == 4, colorbar=dict(title="TV")), row=1, col=i)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=f"Attention at the answer position (TV distance per head): '{a['concept']}' at layer "
                            f"{a['layer_inject']}, strength {a['strength']:g}", template="plotly_white")
    per_layer = {name: [float(x) for x in v.mean(1)] for name, v in panels.items()}
    top = {name: [{"layer": layers[int(i) // v.shape[1]], "head": int(i) % v.shape[1], "tv": float(v.flatten()[i])}
                  for i in torch.argsort(v.flatten(), descending=True)[:5]] for name, v in panels.items()}
    out = Path(out_dir)
    files = save_figure(fig, out / "attention_compare", png=png, width=1600, height=700)
    summary = {"runs": [str(f) for f in folders], "labels": labels, "layers": layers, "concept": a["concept"],
               "layer_inject": a["layer_inject"], "strength": a["strength"], "n_tokens": len(a["tokens"]),
               "mean_tv_over_heads_by_layer": per_layer, "top_heads": top, "files": files,
               "note": "one prompt, one injection: descriptive, not a statistical result"}
    atomic_write_json(out / "attention_compare.json", summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="introspect-mech analyze attention",
                                description="Per-layer attention plots (clean, injected, injected − clean) for one prompt.")
    add_model_args(p)
    p.add_argument("--prompt", default="exp1",
                   help="a user message (injected on every token); default 'exp1': the paper's Experiment 1 prompt")
    p.add_argument("--format", default="auto", choices=["auto", "chat", "raw"])
    p.add_argument("--concept", default="dust")
    p.add_argument("--layer", default="0.67", help="injection layer: index or depth fraction (default 0.67)")
    p.add_argument("--strength", type=float, default=8.0)
    p.add_argument("--png-layer", default=None,
                   help="layer of the static grid (default: the layer of the most-changed head at the last token)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"keep the last N query rows in the figures (default {DEFAULT_MAX_TOKENS}; 0 = all)")
    p.add_argument("--out", default="figures/attention", help="output folder (default figures/attention)")
    p.add_argument("--no-png", action="store_true", help="HTML only (skip the static PNG)")
    p.add_argument("--compare", default=None,
                   help="two folders of earlier runs (comma list), e.g. an organism's and its base model's: draw their "
                        "answer-position attention side by side into --out (loads no model)")
    p.add_argument("--labels", default=None, help="with --compare: a label per folder (comma list)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        c = compare([f for f in args.compare.split(",") if f], args.labels.split(",") if args.labels else None,
                    args.out, png=not args.no_png)
        print(f"'{c['concept']}' at layer {c['layer_inject']}, strength {c['strength']:g}; mean TV over heads at the "
              "answer position, by layer:")
        names = list(c["mean_tv_over_heads_by_layer"])
        print("layer  " + "  ".join(f"{n:>28}" for n in names))
        for i, L in enumerate(c["layers"]):
            print(f"{L:>5}  " + "  ".join(f"{c['mean_tv_over_heads_by_layer'][n][i]:>28.4f}" for n in names))
        print("written: " + ", ".join(dict.fromkeys([f"{args.out}/attention_compare.json", *c["files"].values()])))
        return 0
    if args.labels:
        raise AttentionMapsError("--labels only goes with --compare")
    model = load_model_from_args(args, attention=True)
    summary = run(model, prompt=args.prompt, concept=args.concept, layer_inject=args.layer, strength=args.strength,
                  png_layer=args.png_layer, out_dir=args.out, max_tokens=args.max_tokens or None, png=not args.no_png,
                  fmt=args.format)
    dose = summary["dose"]
    print(f"model {summary['model']}: {summary['n_tokens']} tokens, {len(summary['layers'])} layers × "
          f"{summary['n_heads']} heads; injected '{summary['concept']}' at layer {summary['layer_inject']}, strength "
          f"{summary['strength']:g}" + (f" (dose ‖s·v‖/mean‖h‖ {dose:.3f})" if dose is not None else ""))
    print("heads whose last-token attention changed most (mean |injected − clean| over keys):")
    for t in summary["top_heads_last_query"]:
        gained = ", ".join(f"{g['token']} {g['delta']:+.3f}" for g in t["gained"]) or "-"
        lost = ", ".join(f"{g['token']} {g['delta']:+.3f}" for g in t["lost"]) or "-"
        print(f"  L{t['layer']:>2} H{t['head']:<2} mean|Δ| {t['last_query_mean_abs_delta']:.4f}  "
              f"TV {t['last_query_tv']:.3f}  gained: {gained}  lost: {lost}")
    print("written:")
    for name, paths in summary["files"].items():
        for path in paths.values():
            print(f"  {name}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
