"""Choosing the next token, and turning the answer's tokens into text deltas with stop strings.

Two small pieces the engine's loop calls once per token: :class:`Sampler` (transformers' logits
processors, then greedy or a seeded draw) and :class:`AnswerText` (the text decoded so far, with
the tail that could still become a stop string held back until the next token decides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ContextTooLongError
from .structured import JsonConstraint, check_schema


@dataclass
class SamplingParams:
    """Decoding settings, with the meaning transformers' ``generate`` gives the same names.

    ``temperature == 0`` is greedy; ``top_k``, ``top_p``, ``min_p`` and ``typical_p`` shape the
    draw only when sampling (``temperature > 0``), as ``generate(do_sample=True)`` does;
    ``repetition_penalty`` and ``no_repeat_ngram_size`` apply in both modes and, as in
    ``generate``, see the prompt's tokens as well as the answer's. ``max_input_tokens`` refuses
    longer prompts (:class:`~reattn_llm.errors.ContextTooLongError`) before any prefill; it is
    the cap a wrapper was given (``input_cap`` names that setting in the message).
    ``json_schema`` (a JSON-schema dict or its JSON text) constrains the answer to JSON that
    matches it, ``json_object=True`` to any JSON object (:mod:`~reattn_llm.runtime.structured`,
    the ``[structured]`` extra); the answer then ends (EOS) when the JSON is complete.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_p: float = 0.0
    typical_p: float = 1.0
    max_input_tokens: int | None = None
    input_cap: str = "max_input_tokens"
    json_schema: dict[str, Any] | str | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 = off).")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty}: must be > 0 (1.0 = off).")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size={self.no_repeat_ngram_size}: must be >= 0 (0 = off).")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p={self.min_p}: must be in [0, 1] (0 = off).")
        if not 0 < self.typical_p <= 1:
            raise ValueError(f"typical_p={self.typical_p}: must be in (0, 1] (1.0 = off).")
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ValueError(f"{self.input_cap}={self.max_input_tokens}: must be >= 1 (or None: no cap).")
        self.stop = [s for s in (self.stop or []) if s]
        self.json_schema = check_schema(self.json_schema)
        if self.json_schema is not None and self.json_object:
            raise ValueError(
                "Give json_schema or json_object=True, not both (a schema already implies JSON)."
            )

    @property
    def constrained(self) -> bool:
        """Whether the answer is constrained to JSON (a schema or any object)."""
        return self.json_schema is not None or self.json_object

    def check_prompt(self, prompt_tokens: int) -> None:
        """Refuse a prompt longer than :attr:`max_input_tokens` (before any prefill)."""
        cap = self.max_input_tokens
        if cap is not None and prompt_tokens > cap:
            raise ContextTooLongError(
                f"The prompt has {prompt_tokens} tokens, more than the {self.input_cap} cap of {cap} "
                f"set on this model: raise {self.input_cap} (or leave it unset for the device's "
                "capacity), or shorten the prompt."
            )


def logits_processors(params: SamplingParams) -> Any:
    """transformers' own ``LogitsProcessorList`` for ``params``, in ``generate``'s order.

    The processors are transformers' rather than written here so that every setting means exactly
    what it means in ``model.generate`` (edge cases included: ``min_tokens_to_keep``, ties, the
    sign rule of the repetition penalty), and keeps meaning it as transformers evolves. The
    penalties come first (they apply when decoding greedily too), then, when sampling, the
    temperature and the truncations (top-k, top-p, min-p, typical).
    """
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size))
    if params.temperature > 0:
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            procs.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(params.top_p))
        if params.min_p > 0:
            procs.append(MinPLogitsWarper(params.min_p))
        if params.typical_p < 1.0:
            procs.append(TypicalLogitsWarper(params.typical_p))
    return procs


class Sampler:
    """The next token of one answer: :func:`logits_processors`, then the argmax (temperature 0)
    or a draw seeded by ``params.seed``.

    Args:
        params: the request's settings.
        prompt_ids: the prompt's tokens (the penalties' history, as in ``generate``).
        device: where the logits are (the generator and the history live there too).
        tokenizer: the model's tokenizer; needed only when ``params.constrained``.
        eos: the tokens that end an answer (allowed once constrained JSON is complete).
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: list[int],
        device: torch.device,
        tokenizer: Any = None,
        eos: set[int] | None = None,
    ) -> None:
        self.params = params
        self.processors = logits_processors(params)
        self.constraint: JsonConstraint | None = None
        if params.constrained:  # compiled now, so a bad schema is refused before any prefill
            if tokenizer is None:
                raise ValueError("A JSON constraint needs the model's tokenizer: pass tokenizer= to Sampler.")
            self.constraint = JsonConstraint(tokenizer, params.json_schema, eos or set())
            self.processors.insert(0, self.constraint)  # the mask first: the warpers draw among JSON tokens
        self.generator = torch.Generator(device=device)
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        self._history: torch.Tensor | None = None  # [1, prompt + answer] when a processor reads it
        self._n = len(prompt_ids)
        if params.repetition_penalty != 1.0 or params.no_repeat_ngram_size > 0:
            self._history = torch.empty(1, self._n + params.max_new_tokens, dtype=torch.long, device=device)
            self._history[0, : self._n] = torch.tensor(prompt_ids, dtype=torch.long)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [1, V]`` after the processors (fp32), what :meth:`next` picks from."""
        scores = logits.float()
        if not self.processors:
            return scores
        history = self._history[:, : self._n] if self._history is not None else None
        return self.processors(history, scores)  # warpers ignore the history

    def next(self, logits: torch.Tensor) -> int:
        """The next token from ``logits [1, V]``, added to the history."""
        scores = self.scores(logits)[0]
        if self.params.temperature == 0:
            token = int(scores.argmax())
        else:
            token = int(torch.multinomial(scores.softmax(-1), 1, generator=self.generator))
        if self._history is not None and self._n < self._history.shape[1]:
            self._history[0, self._n] = token
            self._n += 1
        if self.constraint is not None:
            self.constraint.accept(token)
        return token


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
