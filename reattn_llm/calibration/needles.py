"""Natural-prose needles: one fact hidden in real text, asked as a question.

The package's own generator (RULER stays a benchmark-only extra): a RULER-style needle ("One of the
special magic numbers for <key> is: <value>.") placed between two sentences of natural prose at a
given depth, the prose trimmed so the whole chat prompt has about ``n_tokens`` tokens. Used by
``reattn calibrate``, the tests and the benchmarks; the text comes from the caller.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

INTRO = (
    "A special magic number is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the number afterwards.\n"
)
QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
ANSWER_PREFIX = "The special magic number for {key} mentioned in the provided text is"
_ADJECTIVES = (
    "ancient bright calm dusty eager fancy gentle hollow icy jolly keen lively mighty noble odd proud quiet "
    "rapid silent tidy amber brave crisp dizzy early fuzzy grand humble ivory jagged"
).split()
_NOUNS = (
    "anchor basket candle dragon engine falcon garden harbor island jacket kettle lantern meadow needle "
    "orchard pepper quilt river saddle tunnel beacon cactus dolphin ember feather glacier hammock igloo"
).split()
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")


@dataclass(frozen=True)
class Needle:
    """One needle prompt: ``document`` (prose with the needle), ``question``, and the ``answer``."""

    document: str
    question: str
    answer: str
    key: str
    depth: float

    def messages(self) -> list[dict[str, str]]:
        """The chat turn: the intro, the document, then the question on its own last line."""
        return [{"role": "user", "content": f"{INTRO}{self.document}\n{self.question}"}]

    def prompt(self, tokenizer: Any) -> str:
        """The chat-templated prompt with the answer prefix opening the assistant turn; for a base
        model (a tokenizer whose ``chat_template`` is unset, such as Gemma-3-270M's) the plain
        completion prompt instead: ``<bos>`` when the tokenizer adds one, the turn's text, then the
        answer prefix on the next line (:func:`~reattn_llm.runtime.prompts.plain_prompt`)."""
        prefix = ANSWER_PREFIX.format(key=self.key)
        if not getattr(tokenizer, "chat_template", True):
            from ..runtime.prompts import plain_prompt

            text, _ = plain_prompt(tokenizer, self.messages())
            return f"{text}\n{prefix}"
        chat = tokenizer.apply_chat_template(self.messages(), tokenize=False, add_generation_prompt=True)
        return chat + prefix

    def found(self, answer: str) -> bool:
        return self.answer in answer


def sentences(text: str) -> list[str]:
    """Sentences of ``text`` (whitespace folded), split after ``. ! ?`` before a capital."""
    return [s for s in _SENTENCE_END.split(re.sub(r"\s+", " ", text).strip()) if s]


def make_needle(
    text: str,
    tokenizer: Any,
    n_tokens: int,
    depth: float,
    rng: random.Random,
    repeat: bool = False,
    value_first: bool = False,
) -> Needle:
    """A needle at relative ``depth`` (0 = start, 1 = end) of a stretch of ``text`` chosen by ``rng``,
    trimmed so that :meth:`Needle.prompt` has at most ``n_tokens`` tokens (and close to it).
    ``repeat``: a text shorter than the prompt needs is read again from its start (the stretch
    wraps around) instead of refused. ``value_first``: the needle states the value before the words
    the question matches ("<value> is one of the special magic numbers for <key>."), so a selection
    that looks only past those words misses it; RULER's wording (the default) states it after them.

    Raises:
        ValueError: ``depth`` outside [0, 1], or ``text`` too short for ``n_tokens`` (without
            ``repeat``; with it, a text of no sentence).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth}: must be within [0, 1].")
    sents = sentences(text)
    chars_needed = n_tokens * 6
    if not sents or (not repeat and sum(len(s) + 1 for s in sents) < chars_needed):
        raise ValueError(f"the text has too few sentences for a {n_tokens}-token prompt: give a longer text.")
    key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    value = str(rng.randint(1_000_000, 9_999_999))
    if value_first:
        needle = f"{value} is one of the special magic numbers for {key}."
    else:
        needle = f"One of the special magic numbers for {key} is: {value}."
    total = 0
    start = rng.randrange(0, max(1, len(sents) - 1))
    picked: list[str] = []
    i = start
    while total < chars_needed:  # a generous stretch (wrapping around), trimmed below
        picked.append(sents[i % len(sents)])
        total += len(picked[-1]) + 1
        i += 1

    def build(count: int) -> Needle:
        body = picked[:count]
        at = round(len(body) * depth)
        doc = " ".join([*body[:at], needle, *body[at:]])
        return Needle(doc, QUESTION.format(key=key), value, key, depth)

    lo, hi = 1, len(picked)
    while lo < hi:  # the most sentences whose prompt fits
        mid = (lo + hi + 1) // 2
        if len(tokenizer(build(mid).prompt(tokenizer), add_special_tokens=False).input_ids) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return build(lo)
