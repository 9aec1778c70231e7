"""Rendering conversations to token ids, and locating token windows by character offsets.

Why character offsets: the paper defines windows in text ("from the double newline
before 'Trial 1'", "the tokens of this sentence"), while tokenizers disagree on where
tokens fall — one merges ``.\n\n`` into a single token, another splits ``\n\n`` in two,
chat templates add their own newlines. We render the text once, tokenize it with an
offset mapping, and map a character span to the tokens that overlap it. That rule is
the same on every tokenizer and is asserted exactly in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from .errors import ChatTemplateError, ConfigError, WindowError

PromptFormat = Literal["auto", "chat", "raw"]
RAW_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    content: str


def turns_from(obj: Iterable[Any]) -> list[Turn]:
    """Accept ``Turn`` objects or ``{"role", "content"}`` dicts (as in the protocol JSON)."""
    out = []
    for t in obj:
        out.append(t if isinstance(t, Turn) else Turn(t["role"], t["content"]))
    return out


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt as text and as tokens, with each token's character span in ``text``."""

    text: str
    input_ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    fmt: str
    turns: tuple[Turn, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.input_ids)

    # ---- character spans ---------------------------------------------------------
    def find(self, needle: str, *, occurrence: int = 0, after: int = 0) -> tuple[int, int]:
        """Character span of the ``occurrence``-th ``needle`` at or after char ``after``."""
        if not needle:
            raise WindowError("cannot locate an empty string in a prompt")
        pos = after - 1
        for _ in range(occurrence + 1):
            pos = self.text.find(needle, pos + 1)
            if pos < 0:
                raise WindowError(
                    f"{needle!r} (occurrence {occurrence}) does not occur in the rendered prompt; "
                    f"check the prompt text: {self.text[:200]!r}..."
                )
        return pos, pos + len(needle)

    def find_last(self, needle: str) -> tuple[int, int]:
        pos = self.text.rfind(needle)
        if pos < 0:
            raise WindowError(f"{needle!r} does not occur in the rendered prompt")
        return pos, pos + len(needle)

    # ---- token spans --------------------------------------------------------------
    def token_span(self, char_start: int, char_end: int) -> tuple[int, int]:
        """Half-open token range ``[a, b)`` of every token overlapping chars ``[char_start, char_end)``.

        A token that straddles the boundary (``.\\n\\n`` merged) is included: it carries
        part of the span. Zero-width tokens (added BOS) never overlap anything.
        """
        if char_end <= char_start:
            raise WindowError(f"empty character span [{char_start}, {char_end})")
        hits = [i for i, (s, e) in enumerate(self.offsets) if e > s and s < char_end and e > char_start]
        if not hits:
            raise WindowError(f"no token overlaps characters [{char_start}, {char_end}) of the prompt")
        return hits[0], hits[-1] + 1

    def token_span_of(self, needle: str, *, occurrence: int = 0, after: int = 0, last: bool = False) -> tuple[int, int]:
        """Token range of a substring (e.g. the sentence an experiment injects on)."""
        cs, ce = self.find_last(needle) if last else self.find(needle, occurrence=occurrence, after=after)
        return self.token_span(cs, ce)

    def tokens(self, tokenizer: Any) -> list[str]:
        return [tokenizer.decode([i]) for i in self.input_ids]


def _raw_text(turns: Sequence[Turn], add_generation_prompt: bool, prefill: str | None) -> str:
    """The paper's format: ``Human: ...\\n\\nAssistant: ...`` turns joined by blank lines."""
    parts = [f"{RAW_ROLES[t.role]}: {t.content}" for t in turns]
    text = "\n\n".join(parts)
    if prefill is not None:
        text += f"\n\nAssistant: {prefill}"
    elif add_generation_prompt:
        text += "\n\nAssistant:"
    return text


def _chat_text(tokenizer: Any, turns: Sequence[Turn], add_generation_prompt: bool, prefill: str | None) -> str:
    msgs = [{"role": t.role, "content": t.content} for t in turns]
    if prefill is not None:
        msgs.append({"role": "assistant", "content": prefill})
        return tokenizer.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)


def resolve_format(tokenizer: Any, fmt: PromptFormat) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if fmt == "auto":
        return "chat" if has_template else "raw"
    if fmt == "chat" and not has_template:
        raise ChatTemplateError(
            "this tokenizer has no chat template; use fmt='raw' (the paper's 'Human:/Assistant:' format) "
            "or fmt='auto', or set tokenizer.chat_template"
        )
    if fmt not in ("chat", "raw"):
        raise ConfigError(f"unknown prompt format {fmt!r}; use 'auto', 'chat' or 'raw'")
    return fmt


def encode_text(tokenizer: Any, text: str, fmt: str = "raw") -> RenderedPrompt:
    """Tokenize already-rendered text with offsets; adds BOS unless the text already starts with it."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    if fmt == "chat":
        # chat templates write their own special tokens; only add BOS if the template did not
        add_special = bool(bos) and not text.startswith(bos) and _template_expects_bos(tokenizer)
    try:
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise WindowError("token windows need a fast tokenizer (offset mapping); load it with use_fast=True") from exc
    return RenderedPrompt(text=text, input_ids=tuple(enc["input_ids"]),
                          offsets=tuple(tuple(o) for o in enc["offset_mapping"]), fmt=fmt)


def _template_expects_bos(tokenizer: Any) -> bool:
    """True if plain encoding adds a BOS token (Llama-2 style templates omit it from the text)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return bos_id is not None and len(ids) > 0 and ids[0] == bos_id


def render(
    tokenizer: Any,
    turns: Iterable[Any],
    *,
    add_generation_prompt: bool = True,
    prefill: str | None = None,
    fmt: PromptFormat = "auto",
) -> RenderedPrompt:
    """Render role/content turns with the model's chat template (or the paper's raw format).

    ``prefill`` starts the assistant's reply with the given text (teacher forcing), as
    Experiments 3 and 4 need; the rendered text then ends inside the assistant turn.
    """
    turns = turns_from(turns)
    if not turns:
        raise WindowError("a prompt needs at least one turn")
    for t in turns:
        if not isinstance(t.content, str):
            raise WindowError(f"turn content must be a string, got {type(t.content).__name__}")
    kind = resolve_format(tokenizer, fmt)
    text = _chat_text(tokenizer, turns, add_generation_prompt, prefill) if kind == "chat" else _raw_text(
        turns, add_generation_prompt, prefill
    )
    rp = encode_text(tokenizer, text, kind)
    return RenderedPrompt(rp.text, rp.input_ids, rp.offsets, kind, tuple(turns))
