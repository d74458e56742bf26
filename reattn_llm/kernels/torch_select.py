"""Torch twins of the span selection kernels: the readable definition of each, the reference of
:mod:`.triton_select` and :mod:`.triton_spans` (shapes as in :mod:`.torch_ops`).

The fused span selection (:func:`select_scope_torch`) pools a chunk's hits into ranked span
centres and builds its scope; a prompt chunk ranks its centres by span votes
(:func:`rank_spans_torch`) and builds its scope from them (:func:`scope_from_centres_torch`). The
readable, histogram-based definition of the selection is :mod:`reattn_llm.method.selection`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .torch_ops import grown_first


class SelectedScope(NamedTuple):
    """One chunk's span selection and scope (:func:`select_scope_torch`); ``n = min(n_spans, M)``,
    ``S = n * span_size``, ``N = G + S + L``.

    Attributes:
        gather_idx: ``[B, N]`` int64 cache rows: global, selected middle (padding repeats a valid
            row), local.
        key_pos: ``[B, N]`` int64 RoPE positions ``0..n_b-1`` in order, -1 for padding.
        q_pos: ``[B, Q]`` int64 positions of the chunk's queries (the last ``Q`` of ``n_b``).
        middle: ``[B, S]`` int64 cache rows of the selected middle entries.
        middle_valid: ``[B, S]`` bool, which entries of ``middle`` are real.
        centres: ``[B, n]`` int64 middle positions of the span centres by rank, ``M`` = empty.
        votes: ``[B, n]`` int64 votes of each centre (a pinned one counts ``H*Q*k + 1``), 0 if empty.
    """

    gather_idx: torch.Tensor
    key_pos: torch.Tensor
    q_pos: torch.Tensor
    middle: torch.Tensor
    middle_valid: torch.Tensor
    centres: torch.Tensor
    votes: torch.Tensor


def rank_hits_torch(
    hits: torch.Tensor, pinned: torch.Tensor | None, middle_len: int, n_keep: int, by_rank: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``method.selection.rank_centres`` (no carried votes) without its ``[B, M]`` histogram: the
    ``(position, rank)`` keys of the hits and pins are sorted, and each run of one position is
    counted, so the work is ``O(H*Q*k + P)`` whatever ``M``.

    Args:
        hits: ``[B, H, Q, k]`` int64 middle positions in ``[0, M)``, each row best first.
        pinned: ``[B, P]`` int64 centres that outrank every voted hit (each counts as ``H*Q*k + 1``
            votes); entries ``>= M`` are ignored. Or None.
        middle_len: M. n_keep: centres kept (at most M).
        by_rank: ties of votes go first to the best rank any query head gave the position.

    Returns:
        ``centres, votes``, each ``[B, n_keep]`` int64, most voted first, ties to the better rank
        (``by_rank``) then the earlier position; ``M`` / 0 mark an empty slot.
    """
    b, k, m = hits.shape[0], hits.shape[-1], middle_len
    flat = hits.reshape(b, -1)
    f = flat.shape[1]
    dev = hits.device
    pos, rank = flat, (torch.arange(f, device=dev) % k).expand(b, f)
    if pinned is not None and pinned.shape[1]:
        pos = torch.cat([flat, pinned.clamp(max=m)], dim=1)
        rank = torch.cat([rank, torch.full_like(pinned, k)], dim=1)  # a pin has no hit rank (k)
    key = (pos * (k + 1) + rank).sort(dim=1).values
    pos, rank = key // (k + 1), key % (k + 1)
    weight = torch.where(rank < k, 1, f + 1)
    new = pos[:, 1:] != pos[:, :-1]
    edge = torch.ones_like(pos[:, :1], dtype=torch.bool)
    head, tail = torch.cat([edge, new], dim=1), torch.cat([new, edge], dim=1)
    cum = weight.cumsum(dim=1)
    votes = cum - torch.where(head, cum - weight, 0).cummax(dim=1).values  # the run's sum, at its tail
    scale = k + 1 if by_rank else 1
    primary = votes
    if by_rank:  # a run starts with its best rank (k: pins only)
        at = torch.arange(pos.shape[1], device=dev)
        best = rank.gather(1, torch.where(head, at, 0).cummax(dim=1).values)
        primary = votes * scale + (k - best)
    order = torch.where(tail & (pos < m), primary * m + (m - 1 - pos), -1)
    if order.shape[1] < n_keep:
        order = F.pad(order, (0, n_keep - order.shape[1]), value=-1)
    top = order.topk(n_keep, dim=1).values
    empty = top < 0
    return torch.where(empty, m, (m - 1) - top % m), torch.where(empty, 0, top // m // scale)


def scope_from_centres_torch(
    centres: torch.Tensor,
    middle_len: int,
    span_size: int,
    global_size: int,
    local_size: int,
    total: int,
    q_len: int,
    grow: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Centres ``[B, n]`` (any order, ``M`` = empty) -> ``gather_idx, key_pos, q_pos, middle,
    middle_valid`` of :class:`SelectedScope`: each centre c spans ``[c - span//2, c - span//2 + span)``
    cut at 0 and M, overlaps merged (each position once), positions counted from 0 in scope order.
    With ``grow``, batch entry b is a chunk with ``M_b = M - (B - 1 - b)·grow`` middle keys and
    ``total - (B - 1 - b)·grow`` keys in all (:func:`~.torch_ops.grown_first`; ``M_b`` = empty)."""
    b, m, g, span = centres.shape[0], middle_len, global_size, span_size
    if grow:
        first = grown_first("scope_from_centres_torch", m, b, grow)
        less = m - first  # the first entry's total is less by as much
        rows = [
            scope_from_centres_torch(
                centres[i : i + 1], first + i * grow, span, g, local_size, total - less + i * grow, q_len
            )
            for i in range(b)
        ]
        return tuple(torch.cat(parts) for parts in zip(*rows, strict=True))
    dev = centres.device
    c = centres.sort(dim=1).values
    live = c < m
    start = torch.where(live, (c - span // 2).clamp(min=0), m)
    end = torch.where(live, (c - span // 2 + span).clamp(max=m), m)
    prev_end = F.pad(end.cummax(dim=1).values[:, :-1], (1, 0), value=0)
    eff = torch.maximum(start, prev_end)  # a span starts no earlier than every previous span's end
    length = (end - eff).clamp(min=0)
    before = length.cumsum(dim=1) - length  # [B, n] selected tokens of the earlier spans
    n_mid = length.sum(dim=1, keepdim=True)
    cand = start[:, :, None] + torch.arange(span, device=dev)  # [B, n, span]
    valid = (cand >= eff[:, :, None]) & (cand < end[:, :, None])
    mid_pos = torch.where(valid, g + before[:, :, None] + cand - eff[:, :, None], -1).reshape(b, -1)
    middle = (cand.clamp(max=m - 1) + g).reshape(b, -1)
    glob = torch.arange(g, device=dev).expand(b, g)
    loc = torch.arange(local_size, device=dev)
    idx = torch.cat([glob, middle, (total - local_size + loc).expand(b, local_size)], dim=1)
    key_pos = torch.cat([glob, mid_pos, g + n_mid + loc], dim=1)
    q_pos = g + n_mid + local_size - q_len + torch.arange(q_len, device=dev)
    return idx, key_pos, q_pos, middle, valid.reshape(b, -1)


def select_scope_torch(
    hits: torch.Tensor,
    pinned: torch.Tensor | None,
    middle_len: int,
    n_spans: int,
    span_size: int,
    global_size: int,
    local_size: int,
    total: int,
    q_len: int,
    by_rank: bool = False,
) -> SelectedScope:
    """One chunk's span selection and scope without touching ``O(M)`` memory: what
    ``method.selection``'s ``rank_centres`` (no carried votes), the sort of the centres,
    ``expand_spans`` and ``build_scope`` compute.

    Args:
        hits: ``[B, H, Q, k]`` int64 middle positions in ``[0, M)``, each (head, query) row best first.
        pinned: ``[B, P]`` int64 centres ranked before every voted hit (entries ``>= M`` ignored), or None.
        middle_len: M, middle keys (cache rows ``G .. G+M-1``).
        n_spans: spans kept; ``n = min(n_spans, M)``. span_size: tokens of one span.
        global_size, local_size: G and L; total: T = G + M + L keys visible to the chunk.
        q_len: Q queries, the last ``Q`` of the scope.
        by_rank: ties of votes go to the best-ranked hit first (decode under ``decode_spans="union"``).
    """
    centres, votes = rank_hits_torch(hits, pinned, middle_len, min(n_spans, middle_len), by_rank)
    scope = scope_from_centres_torch(centres, middle_len, span_size, global_size, local_size, total, q_len)
    return SelectedScope(*scope, centres, votes)


def max_vote_middle(hits: int) -> int:
    """The longest middle whose span votes' int64 order keys, ``(votes·(hits + 1) + own)·M + M - 1 - row``
    for ``hits`` hits a batch entry, stay exact: ``(hits + 1)²·M < 2^63``."""
    return (2**63 - 1) // (hits + 1) ** 2


def check_vote_keys(name: str, hits: int, middle: int) -> None:
    """Raise unless a ``middle``-key middle fits :func:`max_vote_middle` (the engine's capacity keeps
    clear of it, :func:`~reattn_llm.runtime.capacity.vote_key_tokens`)."""
    if middle > max_vote_middle(hits):
        raise ValueError(
            f"{name}: {hits} hits a batch entry over a {middle}-key middle overflow the span votes' int64 "
            f"keys ((hits + 1)^2 * middle must stay below 2^63): score fewer hits (top_k) or shorter chunks"
        )


def rank_spans_torch(
    hits: torch.Tensor, middle_len: int, max_spans: int, span_size: int, grow: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Span votes (``vote_pooling="span"``): the twin of :func:`~.triton_spans.rank_spans_triton`
    and the readable definition of :func:`reattn_llm.method.selection.rank_spans` (whose docstring
    states the rule). ``hits [B, ...]`` int64 in ``[0, M)``. With ``grow``, batch entry b is a chunk
    whose middle is ``M_b = M - (B - 1 - b)·grow`` (:func:`~.torch_ops.grown_first`), ranked as alone.

    Returns:
        ``centres, votes``, each ``[B, min(max_spans, M_0)]`` int64, most span votes first (``M_b`` and
        0: an empty slot).
    """
    b, m = hits.shape[0], middle_len
    if grow:
        first = grown_first("rank_spans_torch", m, b, grow)
        keep = min(max_spans, first)
        rows = [rank_spans_torch(hits[i : i + 1], first + i * grow, max_spans, span_size) for i in range(b)]
        return torch.cat([c[:, :keep] for c, _ in rows]), torch.cat([v[:, :keep] for _, v in rows])
    dev = hits.device
    flat = hits.reshape(b, -1)
    check_vote_keys("rank_spans_torch", flat.shape[1], m)
    own = torch.zeros(b, m, dtype=torch.int64, device=dev)
    own.scatter_add_(1, flat, torch.ones_like(flat))
    half = span_size // 2
    total = torch.nn.functional.pad(own.cumsum(dim=1), (1, 0))  # [B, M + 1]: hits before each row
    pos = torch.arange(m, device=dev)
    span_votes = total[:, (pos - half + span_size).clamp(max=m)] - total[:, (pos - half).clamp(min=0)]
    # one key orders centres: span votes, then own hits, then the earlier position (all distinct)
    n_hits = flat.shape[1] + 1
    key = (span_votes * n_hits + own) * m + (m - 1 - pos)
    n_keep = min(max_spans, m)
    if m <= max_spans * span_size:  # the whole middle fits: tile it, so every middle token is in scope
        tiles = (torch.arange(0, m, span_size, device=dev) + half).clamp(max=m - 1)  # [ceil(M / span)]
        top = key[:, tiles].sort(dim=1, descending=True).values
        centre = (m - 1) - (top % m)
        pad = n_keep - tiles.numel()
        return (
            torch.nn.functional.pad(centre, (0, pad), value=m),
            torch.nn.functional.pad(top // m // n_hits, (0, pad), value=0),
        )
    ahead = key.clone()  # max of key[c .. c + span - 1], by doubling
    step = 1
    while step < min(span_size, m):
        width = min(step, span_size - step, m - step)
        ahead[:, : m - width] = torch.maximum(ahead[:, : m - width], ahead[:, width:])
        step += width
    around = ahead.clone()  # max over [c - span + 1, c + span - 1]
    shift = span_size - 1
    if 0 < shift < m:
        around[:, shift:] = torch.maximum(ahead[:, shift:], ahead[:, :-shift])
    if shift:
        around[:, :shift] = torch.maximum(ahead[:, :shift], ahead[:, :1])  # [0, c) lies inside ahead[0]
    peak = (key == around) & (span_votes > 0)
    top = torch.where(peak, key, torch.full_like(key, -1)).topk(n_keep, dim=1).values
    empty = top < 0
    centre = (m - 1) - (top % m)
    votes = top // m // n_hits
    return torch.where(empty, torch.full_like(centre, m), centre), torch.where(empty, 0, votes)


def mask_unwritten_torch(
    gather_idx: torch.Tensor,
    key_pos: torch.Tensor,
    total: torch.Tensor,
    q_len: int,
    max_position: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A static decode step's scope (its cache view reaching past the rows written so far) with the
    unwritten rows made padding: ``gather_idx [B, N]`` and ``key_pos [B, N]`` (-1: padding) of a scope,
    ``total`` (``[1]`` int64 on the device: the rows written, this step's included) -> ``(gather_idx,
    key_pos, q_pos [B, q_len])``. A row stays when it is not padding and ``gather_idx < total``; the
    positions close up over the kept rows, numbered as a scope built without the others; padding
    reads row 0 (a written row), and the queries take the last ``q_len`` positions. ``max_position``
    (``[1]`` int64, or None): raised in place to the largest query position."""
    valid = (key_pos >= 0) & (gather_idx < total)
    pos = valid.long().cumsum(dim=1) - 1
    q_pos = pos[:, -1:] + 1 - q_len + torch.arange(q_len, device=pos.device)
    key_pos = torch.where(valid, pos, torch.full_like(pos, -1)).to(key_pos.dtype)
    gather_idx = torch.where(valid, gather_idx, torch.zeros_like(gather_idx))
    if max_position is not None and q_len:
        max_position.clamp_(min=q_pos.max())
    return gather_idx, key_pos, q_pos.to(key_pos.dtype)
