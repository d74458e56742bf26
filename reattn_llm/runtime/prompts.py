"""Prompts as token ids, and where the question starts in them.

A prompt is a document followed by a question. ReAttention selects spans of the document for every
forward, voted by that forward's queries, so the question is prefilled as its own chunk
(:func:`~reattn_llm.method.config.prefill_bounds`): its queries alone choose what the first answer
token sees, and the document's K/V do not depend on the question (a kept document is reused
exactly). :func:`encode_prompt` finds the question:

* ``question_start="auto"`` (the default): the last line of the last user turn (chat), or of the
  text (no chat template), when it is at most one prefill chunk long;
* an ``int``: a character offset into the prompt string (the user turn's text for a chat prompt,
  the text itself otherwise), for callers that know where their question begins;
* ``None``: no boundary; the config's ``tail_size`` rule applies.

A model without a chat template (a base model, such as Gemma-3-270M) gets a plain completion
prompt (:func:`plain_prompt`), chosen automatically; ``chat=False`` chooses it for any model. It
starts with the tokenizer's ``<bos>`` when the tokenizer adds one, as the model was trained.

A prompt with no text of the user's own is refused before the chat template is applied
(:func:`check_prompt`): the template alone would otherwise make a non-empty prompt that the model
answers ("I'm here to help...").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

QuestionStart = int | Literal["auto"] | None
Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class EncodedPrompt:
    """``ids``: token ids of ``text`` (the prompt after the chat template); ``question``: the token
    index where the question starts, or None."""

    ids: list[int]
    text: str
    question: int | None


def check_prompt(prompt: Prompt) -> None:
    """Refuse a prompt that holds no text of the user's own, before any template or model work.

    A string must hold more than whitespace; a chat (a list of ``{"role", "content"}`` messages)
    must hold a message with text, and its last user message, when it has one, must hold text.

    Raises:
        ValueError: the prompt is empty or blank, naming what to give instead.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(
                f"The prompt is empty{'' if not prompt else ' (only whitespace)'}: give the model some text to "
                "read, such as a document followed by a question."
            )
        return
    if not isinstance(prompt, list):
        raise ValueError(
            f"The prompt is a {type(prompt).__name__}: give a string, or a list of "
            '{"role": ..., "content": ...} messages.'
        )
    texts = [_content_text(m.get("content", "")) if isinstance(m, dict) else "" for m in prompt]
    if not any(t.strip() for t in texts):
        raise ValueError(
            f"The chat is empty ({len(prompt)} message(s), none with text): give the model some text to read."
        )
    users = [t for m, t in zip(prompt, texts, strict=True) if isinstance(m, dict) and m.get("role") == "user"]
    if users and not users[-1].strip():
        raise ValueError(
            "The last user message is empty: put the question (and the document) in it, or leave the "
            "empty message out."
        )


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b if isinstance(b, str) else str(b.get("text", "")) if isinstance(b, dict) else ""
            for b in content
        )
    return "" if content is None else str(content)


def encode_prompt(
    tokenizer: Any,
    prompt: Prompt,
    chat: bool = True,
    question_start: QuestionStart = "auto",
    max_question_tokens: int | None = None,
    require_text: bool = True,
) -> EncodedPrompt:
    """Check the prompt (:func:`check_prompt`, unless ``require_text`` is false: counting tokens),
    apply the chat template (to message lists, and to a string when ``chat`` and the tokenizer has
    one), tokenize, and locate the question (module docstring).

    Raises:
        ValueError: an empty or blank prompt; ``question_start`` is not ``"auto"``, None or an offset
            within the prompt string.
    """
    if require_text:
        check_prompt(prompt)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    templated = has_template and (isinstance(prompt, list) or chat)
    if templated:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        source = users[-1] if users and isinstance(users[-1], str) else ""
    else:
        text, source = plain_prompt(tokenizer, prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=_fast(tokenizer))
    ids = list(enc["input_ids"])
    char = _question_char(text, source, question_start)
    question = None if char is None else _token_at(tokenizer, enc, text, char)
    if question is not None and (
        not 0 < question < len(ids)
        or (max_question_tokens is not None and len(ids) - question > max_question_tokens)
    ):
        question = None
    return EncodedPrompt(ids, text, question)


def plain_prompt(tokenizer: Any, prompt: Prompt) -> tuple[str, str]:
    """A completion prompt for a model without a chat template: a string as it is, a chat's message
    texts one after another (blank line between); ``<bos>`` first when the tokenizer adds it (its
    ``add_special_tokens`` encoding starts with ``bos_token_id``). Returns ``(text, source)``:
    the prompt and the user's own text in it (the string, or the last user message)."""
    if isinstance(prompt, str):
        body = source = prompt
    else:
        msgs = [m for m in prompt if isinstance(m, dict)]
        texts = [_content_text(m.get("content", "")) for m in msgs]
        body = "\n\n".join(t for t in texts if t.strip())
        users = [t for m, t in zip(msgs, texts, strict=True) if m.get("role") == "user"]
        source = users[-1] if users else ""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if isinstance(bos, str) and bos and bos_id is not None and not body.startswith(bos):
        probe = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        if probe and probe[0] == bos_id:
            return bos + body, source
    return body, source


def _question_char(text: str, source: str, question_start: QuestionStart) -> int | None:
    """Character offset in ``text`` where the question starts (``source``: the user's own text)."""
    if question_start is None or not source:
        return None
    if question_start == "auto":
        body = source.rstrip()
        cut = body.rfind("\n") + 1
        if cut == 0 or not body[cut:].strip():
            return None
        line = body[cut:]
        at = text.rfind(line)
        return None if at < 0 else at
    if isinstance(question_start, bool) or not isinstance(question_start, int):
        raise ValueError(
            f"question_start={question_start!r}: give 'auto', None, or a character offset into the prompt."
        )
    if not 0 < question_start < len(source):
        raise ValueError(
            f"question_start={question_start} is outside the prompt (0 < offset < {len(source)}): give the "
            "character offset where the question begins, or 'auto'."
        )
    base = text.rfind(source) if source is not text else 0
    return None if base < 0 else base + question_start


def _fast(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "is_fast", False))


def _token_at(tokenizer: Any, enc: Any, text: str, char: int) -> int:
    """The first token that ends after character ``char``."""
    offsets = enc.get("offset_mapping") if hasattr(enc, "get") else None
    if offsets:
        return next((i for i, (_, end) in enumerate(offsets) if end > char), len(offsets))
    return len(tokenizer(text[:char], add_special_tokens=False)["input_ids"])


def document_ids(tokenizer: Any, text: str, chat: bool) -> list[int]:
    """The tokens a prompt ``text + question`` starts with whatever the question: those of two
    prompts with different questions have in common (the chat template, if any, applied)."""
    a = encode_prompt(tokenizer, text + "\n\nA", chat, question_start=None, require_text=False).ids
    b = encode_prompt(tokenizer, text + "\n\nB", chat, question_start=None, require_text=False).ids
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
