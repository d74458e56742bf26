"""The prefill grid: how a prompt's queries are cut into chunks, each selecting against the keys
before it (:func:`chunk_bounds`, :func:`prefill_bounds`), which chunks one model forward carries
(:func:`plan_forwards`), and which of its tokens a later prompt can reuse (:func:`reusable_length`)."""

from __future__ import annotations

from dataclasses import dataclass
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


def prompt_reusable(total: int, chunk: int, tail: int, question_start: int | None = None) -> int:
    """:func:`reusable_length` of a ``total``-token prompt cut by :func:`prefill_bounds`: the whole grid
    chunks of its document (before ``question_start``, else before its ``tail``)."""
    if question_start is not None and 0 < question_start < total:
        return reusable_length(question_start, chunk)
    return reusable_length(total, chunk, tail)


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


def plan_prefill(
    total: int,
    chunk: int,
    tail: int,
    tokens: int,
    question_start: int | None = None,
    start: int = 0,
    answer: bool = True,
    end_at_reuse: bool = False,
) -> list[Forward]:
    """The forwards of a prefill of prompt tokens ``[start, total)`` (``start`` on the grid: the cache
    holds the rest), relative to ``start``: :func:`prefill_bounds`' chunks joined by
    :func:`plan_forwards` into forwards of at most ``tokens``. ``end_at_reuse``: a forward ends where a
    later prompt may reuse the cache (:func:`prompt_reusable`; a sliding-window layer keeps its rows
    only at forward ends, ``ReAttentionCache.cut_at_forward_ends``)."""
    q = None if question_start is None else question_start - start
    bounds = prefill_bounds(total - start, chunk, tail, q)
    ends = (prompt_reusable(total, chunk, tail, question_start) - start,) if end_at_reuse else ()
    return plan_forwards(bounds, tokens, answer, ends)


@dataclass(frozen=True)
class Forward:
    """One model forward of a prefill: queries ``[start, end)`` of the prompt, cut into ``chunks``
    (``[s, e)`` relative to ``start``, in order, covering it), each selecting against the keys before
    it as if fed alone (:meth:`~reattn_llm.method.state.PatchState.running`). ``answer``: its last chunk
    is the one an answer is read from (the question, or the prompt's tail), which two-level selection
    scores exactly (``ReAttentionConfig.exact_answer``); a document's chunks are never that chunk,
    however the forwards cut them."""

    start: int
    end: int
    chunks: tuple[tuple[int, int], ...]
    answer: bool = False


def plan_forwards(
    bounds: list[tuple[int, int]], tokens: int, answer: bool = True, ends: tuple[int, ...] = ()
) -> list[Forward]:
    """The model forwards that feed the chunks ``bounds`` (contiguous ``[start, end)``): consecutive
    chunks joined while a forward holds at most ``tokens`` tokens (at least one chunk each;
    :func:`engine_forward` gives the engine's) and does not run past one of ``ends`` (positions where
    a forward must end: a sliding-window layer can be cut back only to a forward's end), so the linear
    layers run once for all while the layers split each forward back into its chunks. A prompt's short
    last chunks (the document's remainder, the question, the tail) join the chunks before them: a
    131,072-token prompt on the grid of 1,024 with a 16-token tail is 16 forwards of 8,192, not 18.
    ``answer``: the last forward's last chunk is the answer's (False: the prompt is a document
    alone, :meth:`~reattn_llm.runtime.engine.Engine.warm`)."""
    out: list[list[tuple[int, int]]] = []
    for s, e in bounds:
        if out and e - out[-1][0][0] <= tokens and s not in ends:
            out[-1].append((s, e))
        else:
            out.append([(s, e)])
    return [
        Forward(
            f[0][0], f[-1][1], tuple((s - f[0][0], e - f[0][0]) for s, e in f), answer and i == len(out) - 1
        )
        for i, f in enumerate(out)
    ]
