"""Long-context measurements used by the tests, benchmarks and notebooks.

* :func:`passkey_prompt` / :func:`passkey_trial`: a five-digit key hidden at a given depth of
  filler text; found when the greedy answer contains it.
* :func:`perplexity_by_band`: teacher-forced perplexity of a long text, fed in chunks through
  the model's cache exactly as a prefill would, reported per band of token positions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..method.config import chunk_bounds
from ..method.patch import make_cache

_INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n"
)
_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer: Any, n_tokens: int, depth: float, passkey: str) -> str:
    """A prompt of about ``n_tokens`` tokens with ``passkey`` at relative ``depth`` (0 = start, 1 = end)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth}: must be within [0, 1].")
    needle = f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
    fixed = len(tokenizer(_INTRO + needle + _QUESTION, add_special_tokens=False)["input_ids"])
    per_filler = len(tokenizer(_FILLER * 8, add_special_tokens=False)["input_ids"]) / 8
    n_fill = max(0, int((n_tokens - fixed) / per_filler))
    before = round(n_fill * depth)
    return _INTRO + _FILLER * before + needle + _FILLER * (n_fill - before) + _QUESTION


def random_passkey(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


@dataclass
class PasskeyResult:
    tokens: int
    depth: float
    passkey: str
    answer: str
    found: bool


@torch.inference_mode()
def greedy_continue(
    model: Any, ids: torch.Tensor, chunk: int, max_new_tokens: int, tail: int = 16
) -> list[int]:
    """Chunked prefill of ``ids [1, T]`` (as the engine does it: the last ``tail`` tokens apart)
    through a fresh :class:`ReAttentionCache`, then greedy decode."""
    cache = make_cache(model, reserve=ids.shape[1] + max_new_tokens)
    logits = None
    for s, e in chunk_bounds(ids.shape[1], chunk, tail):
        logits = model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(logits[0, -1].argmax())  # type: ignore[index]
        out.append(nxt)
        logits = model(
            input_ids=torch.tensor([[nxt]], device=ids.device), past_key_values=cache, use_cache=True
        ).logits
    return out


def passkey_trial(
    model: Any, tokenizer: Any, n_tokens: int, depth: float, passkey: str, chunk: int = 1024, tail: int = 16
) -> PasskeyResult:
    """Hide ``passkey`` at ``depth`` of an ``n_tokens`` prompt and ask for it (greedy, 8 tokens)."""
    text = passkey_prompt(tokenizer, n_tokens, depth, passkey)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    out = greedy_continue(model, ids, chunk, max_new_tokens=8, tail=tail)
    answer = tokenizer.decode(out, skip_special_tokens=True)
    return PasskeyResult(ids.shape[1], depth, passkey, answer, passkey in answer)


@torch.inference_mode()
def token_nll(model: Any, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Negative log-likelihood of every token after the first: ``ids [1, T]`` -> ``[T-1]`` fp32 (CPU).

    The text goes through the cache in chunks, like a prefill; each chunk's logits score its
    next tokens.
    """
    cache = make_cache(model, reserve=ids.shape[1])
    nll = torch.empty(ids.shape[1] - 1)
    for s in range(0, ids.shape[1], chunk):
        piece = ids[:, s : s + chunk]
        logits = model(input_ids=piece, past_key_values=cache, use_cache=True).logits[0].float()
        targets = ids[0, s + 1 : s + 1 + piece.shape[1]]
        n = targets.shape[0]
        if n:
            lp = torch.log_softmax(logits[:n], dim=-1)
            nll[s : s + n] = -lp.gather(1, targets[:, None].to(lp.device))[:, 0].cpu()
    return nll


def perplexity_by_band(nll: torch.Tensor, bands: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Perplexity per band ``[start, end)`` of target positions (bands past the text are skipped)."""
    out = {}
    for a, b in bands:
        part = nll[a : min(b, nll.numel())]
        if part.numel():
            out[f"{_k(a)}-{_k(b) if b < 10**9 else 'end'}"] = math.exp(float(part.double().mean()))
    return out


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)
