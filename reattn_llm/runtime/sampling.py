"""Choosing the next token, and turning the answer's tokens into text deltas with stop strings.

Two small pieces the engine's loop calls once per token: :func:`sample` (greedy, or temperature
with top-k / top-p, seeded) and :class:`AnswerText` (the text decoded so far, with the tail that
could still become a stop string held back until the next token decides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SamplingParams:
    """Decoding settings. ``temperature == 0`` is greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 = off).")
        self.stop = [s for s in (self.stop or []) if s]


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token from ``logits [1, V]``: the argmax at temperature 0, else a draw from the
    tempered distribution cut to the ``top_k`` most likely tokens and the ``top_p`` nucleus."""
    logits = logits[0].float()
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k:
        kth = logits.topk(min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def eos_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    """Every token that ends an answer: the generation config's ``eos_token_id`` (one or a list)
    and the tokenizer's."""
    ids: set[int] = set()
    for src in (generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return ids


class AnswerText:
    """The answer's text as its tokens arrive, released in deltas that never need taking back.

    Each :meth:`add` decodes the answer so far and returns the new text that is safe to show: the
    last ``max(len(stop)) - 1`` characters (which could be the start of a stop string) and a
    trailing incomplete UTF-8 character (U+FFFD) are held back. A stop string ends the answer
    before it (:attr:`stopped`); :meth:`flush` releases the held-back tail when the answer ends
    otherwise (EOS or the token budget). :attr:`text` is everything released.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]) -> None:
        self._decode = decode
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Append ``token``; the text it makes safe to show ('' if none yet)."""
        self.ids.append(token)
        full = self._decode(self.ids)
        hits = [i for i in (full.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(full[: min(hits)])
        safe = len(full) - self._hold
        if full.endswith("\ufffd"):
            safe = min(safe, len(full) - 1)
        return self._release(full[:safe])

    def flush(self) -> str:
        """The held-back tail, at the end of an answer that no stop string ended."""
        return "" if self.stopped else self._release(self._decode(self.ids))

    def _release(self, upto: str) -> str:
        if len(upto) <= len(self.text):
            return ""
        delta = upto[len(self.text) :]
        self.text += delta  # what was released, even if a later decode rewrote an earlier character
        return delta
