"""Long-context measurements used by the tests, benchmarks and notebooks.

* :func:`passkey_prompt` / :func:`passkey_trial`: a five-digit key hidden at a given depth of
  filler text; found when the greedy answer contains it.
* :func:`token_nll` / :func:`perplexity_by_band`: teacher-forced perplexity of a long text, fed in
  chunks through the model's cache exactly as a prefill would, reported per band of token positions.
* :func:`run_perplexity` / :func:`run_passkey_grid`: both measurements once per attention mode (the
  model patched for each and restored), as ``benchmarks/long_context.py`` and notebook 03 make them.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..method.chunks import plan_forwards
from ..method.config import ReAttentionConfig, chunk_bounds
from ..method.patch import make_cache, model_window, patch

__all__ = [
    "PasskeyResult",
    "band_edges",
    "greedy_continue",
    "load_default_model",
    "mode_config",
    "passkey_prompt",
    "passkey_trial",
    "perplexity_by_band",
    "random_passkey",
    "run_passkey_grid",
    "run_perplexity",
    "token_nll",
]

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
    """A random five-digit key (``10000``-``99999``)."""
    return str(rng.randint(10000, 99999))


@dataclass
class PasskeyResult:
    """One passkey trial: prompt length in tokens, depth of the key, the key, the greedy answer."""

    tokens: int
    depth: float
    passkey: str
    answer: str
    found: bool


@torch.inference_mode()
def greedy_continue(
    model: Any, ids: torch.Tensor, chunk: int, max_new_tokens: int, tail: int = 16
) -> list[int]:
    """Chunked prefill of ``ids [1, T]`` through a fresh :class:`ReAttentionCache`, then greedy decode.
    As the engine does it on a patched model: its config's chunks (the last ``tail`` tokens apart),
    joined in forwards of ``chunk`` tokens; an unpatched model takes forwards of ``chunk``."""
    cache = make_cache(model, reserve=ids.shape[1] + max_new_tokens)
    handle = getattr(model, "_reattn_handle", None)
    state = handle.state if handle is not None and handle.active else None
    size = chunk if state is None else state.config.chunk_size
    bounds = chunk_bounds(ids.shape[1], size, tail)
    logits = None
    for f in plan_forwards(bounds, 1 if state is None else chunk):  # unpatched: a forward per chunk
        with state.running(f) if state is not None else contextlib.nullcontext():
            out = model(
                input_ids=ids[:, f.start : f.end], past_key_values=cache, use_cache=True, logits_to_keep=1
            )
        logits = out.logits
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


# ---------------------------------------------------------------------------------------------
# One measurement per attention mode (benchmarks/long_context.py, notebook 03)
# ---------------------------------------------------------------------------------------------


def load_default_model(device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """The embedded default model (SmolLM2-135M-Instruct), unpatched, and its tokenizer."""
    from ..runtime.models import load_model, resolve_device, resolve_dtype

    dev = resolve_device(device)
    return load_model(None, dev, resolve_dtype(dtype, dev))


def mode_config(mode: str, **sizes: int) -> ReAttentionConfig:
    """The config of one attention mode with the given sizes (streaming keeps no spans)."""
    if mode == "streaming":
        sizes = {k: v for k, v in sizes.items() if k != "max_spans"}
    return ReAttentionConfig(mode=mode, **sizes)  # type: ignore[arg-type]


def band_edges(window: int, tokens: int) -> list[tuple[int, int]]:
    """Position bands for perplexity: ``[0, W/4)``, ``[W/4, W)``, then doubling from the window
    ``W`` (``[W, 2W)``, ``[2W, 4W)``, ...) to the end of a ``tokens``-long text."""
    bands = [(0, window // 4), (window // 4, window)]
    a = window
    while a < tokens - 1:
        bands.append((a, 2 * a))
        a *= 2
    last = bands[-1]
    bands[-1] = (last[0], 10**12)
    return bands


def _sync(model: Any) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def run_perplexity(
    model: Any,
    tokenizer: Any,
    text_path: str | os.PathLike[str],
    *,
    modes: Sequence[str] = ("full", "streaming", "reattention"),
    sizes: dict[str, int] | None = None,
    bands: Sequence[tuple[int, int]] | None = None,
    max_tokens: int = 0,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Teacher-forced perplexity of the text file ``text_path`` by position band, once per
    attention mode (the model is patched for each mode and restored afterwards).

    Returns ``{"text", "tokens", "window", "bands": [[a, b], ...], "modes": {mode: {"bands":
    {name: ppl}, "seconds", "largest_position"}}}``. ``bands`` default: :func:`band_edges` of the
    model's window (or ``sizes["window"]``).
    """
    text = Path(text_path).read_text(encoding="utf-8")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if max_tokens:
        ids = ids[:, :max_tokens]
    ids = ids.to(model.device)
    sizes = dict(sizes or {})
    window = sizes.get("window") or model_window(model.config)
    bands = list(bands or band_edges(window, ids.shape[1]))
    out: dict[str, Any] = {
        "text": Path(text_path).name,
        "tokens": int(ids.shape[1]),
        "window": window,
        "bands": [list(b) for b in bands],
        "modes": {},
    }
    for mode in modes:
        handle = patch(model, mode_config(mode, **sizes))
        try:
            t0 = time.perf_counter()
            nll = token_nll(model, ids, chunk)
            _sync(model)
            seconds = time.perf_counter() - t0
            pos = handle.state.largest_position() if handle.state is not None else ids.shape[1] - 1
        finally:
            handle.unpatch()
        out["modes"][mode] = {
            "bands": perplexity_by_band(nll, bands),
            "seconds": seconds,
            "largest_position": pos,
        }
    return out


def run_passkey_grid(
    model: Any,
    tokenizer: Any,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    modes: Sequence[str] = ("full", "streaming", "reattention"),
    sizes: dict[str, int] | None = None,
    chunk: int = 1024,
    seed: int = 0,
) -> dict[str, Any]:
    """Passkey retrieval for every (mode, length, depth): a random five-digit key hidden at
    ``depth`` of a ``length``-token prompt, found when the greedy answer contains it.

    Returns ``{"lengths", "depths", "modes": {mode: {"rows": [{length, tokens, depth, passkey,
    answer, found, seconds}], "largest_position", "seconds"}}}``. Every mode sees the same keys.
    """
    sizes = dict(sizes or {})
    rng = random.Random(seed)
    keys = {(n, d): random_passkey(rng) for n in lengths for d in depths}
    out: dict[str, Any] = {"lengths": list(lengths), "depths": list(depths), "modes": {}}
    for mode in modes:
        handle = patch(model, mode_config(mode, **sizes))
        rows = []
        start = time.perf_counter()
        try:
            for n in lengths:
                for d in depths:
                    t0 = time.perf_counter()
                    r = passkey_trial(
                        model, tokenizer, n, d, keys[(n, d)], chunk=chunk, tail=sizes.get("tail_size", 16)
                    )
                    _sync(model)
                    rows.append(
                        {
                            "length": n,
                            "tokens": r.tokens,
                            "depth": d,
                            "passkey": r.passkey,
                            "answer": r.answer,
                            "found": r.found,
                            "seconds": time.perf_counter() - t0,
                        }
                    )
            pos = handle.state.largest_position() if handle.state is not None else max(lengths)
        finally:
            handle.unpatch()
        out["modes"][mode] = {"rows": rows, "largest_position": pos, "seconds": time.perf_counter() - start}
    return out
