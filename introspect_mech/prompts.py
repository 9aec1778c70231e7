"""Rendering conversations to token ids, and locating token windows by character offsets.

Why character offsets: the paper defines windows in text ("from the double newline
before 'Trial 1'", "the tokens of this sentence"), while tokenizers disagree on where
tokens fall — one merges ``.\n\n`` into a single token, another splits ``\n\n`` in two,
chat templates add their own newlines. We render the text once, tokenize it with an
offset mapping, and map a character span to the tokens that overlap it. That rule is
the same on every tokenizer and is asserted exactly in the tests.

System prompt: an explicit choice, recorded with every prompt (``RenderedPrompt.system``).
The paper's prompts have no system turn, but some chat templates add one silently when
none is given: SmolLM2's inserts "You are a helpful AI assistant named SmolLM, trained by
Hugging Face". ``system="auto"`` (the default) renders no system turn where the template
allows that, and an explicit *empty* system turn where the template would otherwise insert
its default (the closest to "none" such a template can render). ``"none"`` insists on no
system turn and refuses templates that insert one; ``"template"`` keeps the template's own
behaviour; any other string is used as the system turn's text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from .errors import ChatTemplateError, ConfigError, WindowError

PromptFormat = Literal["auto", "chat", "raw"]
RAW_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
SYSTEM_CHOICES = ("auto", "none", "empty", "template")


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
    system: str | None = None  # text of the system turn actually rendered ("" empty); None: no system turn

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


def template_default_system(tokenizer: Any) -> str | None:
    """The system text a chat template inserts when the conversation has no system turn, or None.

    Measured, not guessed: render one user turn alone and the same turn after a sentinel system
    turn; if the lone rendering has the sentinel's frame (system header before, system close and
    user header after) around some text, that text is what the template inserts."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    key = (id(tokenizer), str(template))
    if key not in _DEFAULT_SYSTEM_CACHE:
        _DEFAULT_SYSTEM_CACHE[key] = _measure_default_system(tokenizer)
    return _DEFAULT_SYSTEM_CACHE[key]


_DEFAULT_SYSTEM_CACHE: dict[tuple[int, str], str | None] = {}


def _measure_default_system(tokenizer: Any) -> str | None:
    u, sent = "\x00USER\x00", "\x00SYSTEM\x00"
    try:
        lone = tokenizer.apply_chat_template([{"role": "user", "content": u}], tokenize=False,
                                             add_generation_prompt=False)
        with_sys = tokenizer.apply_chat_template([{"role": "system", "content": sent}, {"role": "user", "content": u}],
                                                 tokenize=False, add_generation_prompt=False)
    except Exception:  # a template that rejects system turns cannot insert one either  # noqa: BLE001
        return None
    if sent not in with_sys or u not in lone or u not in with_sys:
        return None
    pre_lone = lone[:lone.index(u)]
    head, _, tail = with_sys[:with_sys.index(u)].partition(sent)
    if not tail or not pre_lone.startswith(head) or not pre_lone.endswith(tail) or len(pre_lone) < len(head) + len(tail):
        return None
    return pre_lone[len(head):len(pre_lone) - len(tail)]


def check_system(system: Any) -> str:
    if not isinstance(system, str):
        raise ConfigError(f"system must be a string ({', '.join(SYSTEM_CHOICES)} or the system prompt's text), "
                          f"got {type(system).__name__}")
    return system


def resolve_system(tokenizer: Any, system: str = "auto", fmt: PromptFormat = "auto") -> tuple[str | None, str | None]:
    """``(text passed as a system turn or None, system text the rendered prompt will hold or None)``.

    The second item is what ``RenderedPrompt.system`` records: for ``"template"`` on SmolLM2 it is
    the template's default text, although no system turn is passed."""
    check_system(system)
    kind = resolve_format(tokenizer, fmt)
    default = template_default_system(tokenizer) if kind == "chat" else None
    if system == "template":
        return None, default
    if system in ("auto", "none"):
        if default is None:
            return None, None
        if system == "none":
            raise ChatTemplateError(
                f"this chat template inserts its own system turn ({default!r}) when none is given, so 'no system "
                "turn' cannot be rendered; use system='empty' (an explicit empty system turn), 'template' (keep "
                "the template's default) or your own text")
        return "", ""
    if system == "empty":
        return ("", "") if kind == "chat" else (None, None)  # the raw format has nothing to render for it
    return system, system


def render(
    tokenizer: Any,
    turns: Iterable[Any],
    *,
    add_generation_prompt: bool = True,
    prefill: str | None = None,
    fmt: PromptFormat = "auto",
    system: str = "auto",
) -> RenderedPrompt:
    """Render role/content turns with the model's chat template (or the paper's raw format).

    ``prefill`` starts the assistant's reply with the given text (teacher forcing), as
    Experiments 3 and 4 need; the rendered text then ends inside the assistant turn.
    ``system`` chooses the system turn (module docstring); a system turn among ``turns`` wins.
    """
    turns = turns_from(turns)
    if not turns:
        raise WindowError("a prompt needs at least one turn")
    for t in turns:
        if not isinstance(t.content, str):
            raise WindowError(f"turn content must be a string, got {type(t.content).__name__}")
    kind = resolve_format(tokenizer, fmt)
    if turns[0].role == "system":
        recorded: str | None = turns[0].content
    else:
        passed, recorded = resolve_system(tokenizer, system, kind)
        if passed is not None:
            turns = [Turn("system", passed)] + turns
    text = _chat_text(tokenizer, turns, add_generation_prompt, prefill) if kind == "chat" else _raw_text(
        turns, add_generation_prompt, prefill
    )
    rp = encode_text(tokenizer, text, kind)
    return RenderedPrompt(rp.text, rp.input_ids, rp.offsets, kind, tuple(turns), recorded)
