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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

QuestionStart = int | Literal["auto"] | None


@dataclass(frozen=True)
class EncodedPrompt:
    """``ids``: token ids of ``text`` (the prompt after the chat template); ``question``: the token
    index where the question starts, or None."""

    ids: list[int]
    text: str
    question: int | None


def encode_prompt(
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    chat: bool = True,
    question_start: QuestionStart = "auto",
    max_question_tokens: int | None = None,
) -> EncodedPrompt:
    """Apply the chat template (to message lists, and to a string when ``chat`` and the tokenizer has
    one), tokenize, and locate the question (module docstring).

    Raises:
        ValueError: ``question_start`` is not ``"auto"``, None or an offset within the prompt string.
    """
    templated = isinstance(prompt, list) or (chat and getattr(tokenizer, "chat_template", None))
    if templated:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        source = users[-1] if users and isinstance(users[-1], str) else ""
    else:
        text = prompt if isinstance(prompt, str) else ""
        source = text
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
