"""The prefill grid: how a prompt's queries are cut into chunks, each selecting against the keys
before it (:func:`chunk_bounds`, :func:`prefill_bounds`), which chunks one model forward carries
(:func:`forward_bounds`), and which of its tokens a later prompt can reuse (:func:`reusable_length`)."""

from __future__ import annotations

from typing import Any

#: Prompt tokens per engine prefill forward by default (``ReAttentionConfig.prefill_forward``).
PREFILL_FORWARD = 8192
#: Tokens per prefill chunk of the stock baseline (``mode="full"``: no selection, so any size).
STOCK_CHUNK = 2048


def prefill_chunk(config: Any) -> int:
    """Tokens per prefill chunk: the config's ``chunk_size`` (1,024 while unresolved), or
    :data:`STOCK_CHUNK` for the stock baseline."""
    if config.mode == "full":
        return STOCK_CHUNK
    return config.chunk_size or 1024


def chunk_bounds(total: int, chunk: int, tail: int) -> list[tuple[int, int]]:
    """Split ``total`` queries into ``[start, end)`` chunks of at most ``chunk``; when more than
    one chunk is needed, the last ``min(tail, chunk)`` queries form a chunk of their own."""
    if total <= chunk:
        return [(0, total)]
    tail = min(tail, chunk)
    body = total - tail if tail else total
    bounds = [(s, min(s + chunk, body)) for s in range(0, body, chunk)]
    if tail:
        bounds.append((body, total))
    return bounds


def prefill_bounds(
    total: int, chunk: int, tail: int, question_start: int | None = None
) -> list[tuple[int, int]]:
    """Prefill chunks of a ``total``-token prompt. Without ``question_start``: :func:`chunk_bounds`.
    With it, the document ``[0, question_start)`` is cut on the regular grid from 0 (its last chunk
    may be short) and the question ``[question_start, total)`` is prefilled on its own (split by
    :func:`chunk_bounds` if longer than a chunk), so the selection that feeds the first answer token
    is voted by the question alone, and the document's K/V do not depend on the question."""
    if question_start is None or not 0 < question_start < total:
        return chunk_bounds(total, chunk, tail)
    doc = [(s, min(s + chunk, question_start)) for s in range(0, question_start, chunk)]
    return doc + [
        (question_start + s, question_start + e) for s, e in chunk_bounds(total - question_start, chunk, 0)
    ]


def reusable_length(total: int, chunk: int, tail: int = 0) -> int:
    """Tokens at the start of a ``total``-token prompt that :func:`chunk_bounds` prefills in full chunks
    of the regular grid ``[j·chunk, (j+1)·chunk)``. Their K/V do not depend on what follows, so a
    later prompt with the same first tokens, prefilled on the same grid, can reuse them."""
    n = 0
    for s, e in chunk_bounds(total, chunk, tail):
        if s != n or e - s != chunk:
            break
        n = e
    return n


def forward_size(chunk: int, tokens: int | None) -> int:
    """Tokens of a joined prefill forward: ``tokens`` (None: :data:`PREFILL_FORWARD`) rounded down to
    whole chunks of ``chunk``, at least one chunk."""
    return max(1, (tokens or PREFILL_FORWARD) // chunk) * chunk


def engine_forward(config: Any, chunk: int, device: str) -> int:
    """Tokens per prefill forward of the engine on a ``device`` type for a ``ReAttentionConfig`` whose
    forwards carry chunks of ``chunk`` tokens: :func:`forward_size` of its ``prefill_forward``.
    Unset: :data:`PREFILL_FORWARD` on a GPU, where a forward's launches cost; one chunk on the CPU,
    where joining saves nothing measurable (BENCHMARKS.md) and a forward per chunk keeps progress
    and cancellation prompt; one chunk with ``mode="full"`` (the stock baseline) and with
    ``kv_dtype="fp8"`` or offload, whose exact recent rows on the device (``kv.tiered``) grow with
    the forward (a joined forward there also reads more rows exactly: close logits, not equal)."""
    tiered = config.kv_dtype != "model" or config.offload != "none"
    if config.mode == "full" or (config.prefill_forward is None and (tiered or device != "cuda")):
        return chunk
    return forward_size(chunk, config.prefill_forward)


def forward_bounds(bounds: list[tuple[int, int]], chunk: int, tokens: int) -> list[tuple[int, int]]:
    """The model forwards that feed the chunks ``bounds`` (contiguous ``[start, end)``): each run of
    whole chunks (``chunk`` tokens) joined into forwards of at most ``tokens`` tokens (whole chunks,
    at least one: :func:`engine_forward` gives the engine's); any other chunk a forward of its own.
    A joined forward splits back into its chunks inside the layers
    (:meth:`~reattn_llm.method.state.PatchState.whole_chunks`), each selecting against the keys before
    it as if fed alone, while the linear layers run once for all."""
    per = max(1, tokens // chunk)
    out: list[tuple[int, int]] = []
    joined = 0  # whole chunks in the last forward of ``out``, 0 if it is not a run of whole chunks
    for s, e in bounds:
        whole = e - s == chunk
        if whole and 0 < joined < per and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
            joined += 1
        else:
            out.append((s, e))
            joined = 1 if whole else 0
    return out
