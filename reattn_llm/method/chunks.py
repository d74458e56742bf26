"""The prefill grid: how a prompt's queries are cut into chunks, each selecting against the keys
before it (:func:`chunk_bounds`, :func:`prefill_bounds`), and which of its tokens a later prompt can
reuse (:func:`reusable_length`)."""

from __future__ import annotations


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
