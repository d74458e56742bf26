"""One span selection per layer per forward: pool top-k hits, clip by votes, expand, merge.

Everything here is fixed-shape tensor work (no ``nonzero``, no ``unique``, no ``.item()``): the
number of selected tokens varies, so it is returned as a padded index tensor with a validity
mask, and the caller derives contiguous positions from the mask with a cumulative sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import mask_unwritten as kernel_mask_unwritten
from ..kernels import rank_spans as kernel_rank_spans


@dataclass
class Scope:
    """The keys one query chunk attends to, in scope order.

    Attributes:
        gather_idx: ``[B, N]`` int64 rows of the cache (padding rows hold a valid dummy index).
        key_pos: ``[B, N]`` int64 RoPE positions ``0..n_b-1`` in order, -1 for padding.
        q_pos: ``[B, Q]`` int64 RoPE positions of the chunk's queries (the last ``Q`` of ``n_b``).
        middle: ``[B, S]`` int64 absolute cache rows of the selected middle tokens, or None.
        middle_valid: ``[B, S]`` bool, which entries of ``middle`` are real, or None.
        chunk_tail: the scope's last ``Q`` keys are the chunk's own, in query order, and every
            earlier key is visible to every query unless it is padding (true of every scope built
            here but a static decode step's, :func:`mask_unwritten`); the prefill kernel skips
            masking work with it.
    """

    gather_idx: torch.Tensor
    key_pos: torch.Tensor
    q_pos: torch.Tensor
    middle: torch.Tensor | None = None
    middle_valid: torch.Tensor | None = None
    chunk_tail: bool = True


def select_spans(
    hits: torch.Tensor,
    middle_len: int,
    max_spans: int,
    span_size: int,
    pinned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the top-k hits of all heads and queries into at most ``max_spans`` merged spans:
    :func:`select_centres` then :func:`expand_spans`.

    Returns:
        ``sel [B, S]`` int64 middle positions in increasing order among valid entries, and
        ``valid [B, S]`` bool, with ``S = min(max_spans, M) * span_size``. Overlapping spans are
        merged (each position appears once).
    """
    centres = select_centres(hits, middle_len, max_spans, pinned)
    return expand_spans(centres, middle_len, span_size)


def select_centres(
    hits: torch.Tensor, middle_len: int, max_spans: int, pinned: torch.Tensor | None = None
) -> torch.Tensor:
    """The hits kept as span centres (:func:`rank_centres`), in increasing order; ``M`` marks an
    empty slot. ``[B, min(max_spans, M)]`` int64."""
    return rank_centres(hits, middle_len, max_spans, pinned)[0].sort(dim=1).values


def rank_centres(
    hits: torch.Tensor,
    middle_len: int,
    max_spans: int,
    pinned: torch.Tensor | None = None,
    carried: tuple[torch.Tensor, torch.Tensor] | None = None,
    by_rank: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``max_spans`` most voted hits, most voted first, ties to the earlier position (with
    ``by_rank``: first to the hit that some query head ranked higher, then to the earlier position).

    Args:
        hits: ``[B, ...]`` int64 middle positions in ``[0, middle_len)`` (e.g. ``[B, H, Q, k]``).
        middle_len: M, the number of middle keys.
        max_spans: centres kept per batch row.
        pinned: ``[B, P]`` int64 centres kept first, before any voted hit (the question's own
            centres during decoding); entries ``>= M`` are ignored.
        carried: ``(positions, votes)``, each ``[B, P]`` int64: votes earlier forwards cast, added
            to this forward's (entries ``>= M`` are ignored).
        by_rank: break ties of votes by the best rank a hit got (``hits[..., 0]`` is each query
            head's best key); for a decode step, whose few hits mostly get one vote each.

    Returns:
        ``centres, votes``, each ``[B, min(max_spans, M)]`` int64: centres by rank (``M`` marks an
        empty slot, ranked last) and the votes each got (pinned ones counted as cast).
    """
    b = hits.shape[0]
    m = middle_len
    dev = hits.device
    flat = hits.reshape(b, -1)
    votes = torch.zeros(b, m + 1, dtype=torch.int64, device=dev)
    votes.scatter_add_(1, flat, torch.ones_like(flat))
    if carried is not None and carried[0].numel():
        votes.scatter_add_(1, carried[0].clamp(max=m), carried[1])
    if pinned is not None and pinned.numel():
        # A pinned centre outranks every voted hit: it gets more votes than all hits together.
        p = pinned.clamp(max=m)
        votes.scatter_add_(1, p, torch.full_like(p, flat.shape[1] + 1))
    votes = votes[:, :m]
    n_keep = min(max_spans, m)
    primary = votes
    scale = 1
    if by_rank:  # votes, then the best rank (0 = some head's top hit) scored as k - rank
        k = hits.shape[-1]
        ranks = torch.arange(k, device=dev).expand(hits.shape).reshape(b, -1)
        best = torch.full((b, m + 1), k, dtype=torch.int64, device=dev)
        best.scatter_reduce_(1, flat, ranks, reduce="amin")
        scale = k + 1
        primary = votes * scale + (k - best[:, :m])
    # Most votes first; among equal votes the earlier position wins (larger tiebreak value).
    order_key = primary * m + (m - 1 - torch.arange(m, device=dev))
    top = order_key.topk(n_keep, dim=1).values
    counts = top // m // scale
    pos = (m - 1) - (top % m)
    empty = counts <= 0
    return torch.where(empty, torch.full_like(pos, m), pos), torch.where(empty, 0, counts)  # no votes: empty


def rank_spans(
    hits: torch.Tensor, middle_len: int, max_spans: int, span_size: int, backend: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`rank_centres`, but a centre is worth the hits its whole span covers: a fact that
    the question's words hit at several of its tokens outvotes a single token that many queries hit
    (a frequent word, a full stop, a line break).

    A centre c's span is ``[c - span//2, c - span//2 + span)`` (:func:`expand_spans`); its span votes
    are the hits in it. Centres are the spans' local maxima, ties to the centre with more hits of
    its own, then to the earlier one; no two lie within ``span - 1`` tokens of each other, so their
    spans do not overlap. When the whole middle fits the budget (``M <= max_spans * span``), the
    centres tile it instead (``span//2``, ``span + span//2``, ..., the last capped at ``M - 1``),
    ranked the same way: peaks alone would leave gaps between them. ``hits [B, ...]`` int64 in
    ``[0, M)``. ``backend``: the resolved kernel backend (:func:`~reattn_llm.kernels.rank_spans`;
    the torch twin, :func:`~reattn_llm.kernels.torch_select.rank_spans_torch`, is the rule as code).

    Returns:
        ``centres, votes``, each ``[B, min(max_spans, M)]`` int64, most span votes first (``M`` and 0:
        an empty slot).
    """
    return kernel_rank_spans(hits, middle_len, max_spans, span_size, backend)


def expand_spans(centres: torch.Tensor, middle_len: int, span_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``[B, n]`` (sorted, ``M`` = empty) -> merged spans ``sel, valid [B, n * span_size]``: each
    centre c becomes ``[c - span//2, c - span//2 + span)``, cut (not shifted) at 0 and M."""
    b = centres.shape[0]
    m = middle_len
    pos = centres
    half = span_size // 2
    start = (pos - half).clamp(min=0)
    end = (pos - half + span_size).clamp(max=m)
    start = torch.where(pos < m, start, torch.full_like(start, m))
    end = torch.where(pos < m, end, torch.full_like(end, m))
    # Merge overlaps: a span starts no earlier than every previous span's end.
    prev_end = torch.cat([torch.zeros_like(end[:, :1]), end[:, :-1].cummax(dim=1).values], dim=1)
    eff_start = torch.maximum(start, prev_end)
    cand = start[:, :, None] + torch.arange(span_size, device=centres.device)  # [B, n, span]
    valid = (cand >= eff_start[:, :, None]) & (cand < end[:, :, None])
    sel = cand.clamp(max=m - 1).reshape(b, -1)
    return sel, valid.reshape(b, -1)


def full_scope(batch: int, total: int, q_len: int, device: torch.device) -> Scope:
    """Every key ``0..T-1`` at its own position: the stock model's attention (T <= G + L)."""
    idx = torch.arange(total, device=device).expand(batch, total)
    q_pos = torch.arange(total - q_len, total, device=device).expand(batch, q_len)
    return Scope(gather_idx=idx, key_pos=idx, q_pos=q_pos)


def build_scope(
    sel: torch.Tensor | None,
    valid: torch.Tensor | None,
    total: int,
    q_len: int,
    global_size: int,
    local_size: int,
    batch: int,
    device: torch.device,
) -> Scope:
    """Global + selected middle + local, re-positioned contiguously from 0.

    Args:
        sel, valid: ``[B, S]`` from :func:`select_spans` (middle-relative), or None (streaming).
        total: T, keys visible to this chunk (the chunk is the last ``q_len`` of them).
    """
    glob = torch.arange(global_size, device=device).expand(batch, global_size)
    loc = torch.arange(total - local_size, total, device=device).expand(batch, local_size)
    ones_g = torch.ones(batch, global_size, dtype=torch.bool, device=device)
    ones_l = torch.ones(batch, local_size, dtype=torch.bool, device=device)
    if sel is None or sel.shape[1] == 0:
        idx = torch.cat([glob, loc], dim=1)
        mask = torch.cat([ones_g, ones_l], dim=1)
        middle = middle_valid = None
    else:
        middle = sel + global_size
        middle_valid = valid
        idx = torch.cat([glob, middle, loc], dim=1)
        mask = torch.cat([ones_g, valid, ones_l], dim=1)
    key_pos = mask.long().cumsum(dim=1) - 1
    n = key_pos[:, -1:] + 1  # [B, 1] keys in scope
    q_pos = n - q_len + torch.arange(q_len, device=device)
    key_pos = torch.where(mask, key_pos, torch.full_like(key_pos, -1))
    return Scope(gather_idx=idx, key_pos=key_pos, q_pos=q_pos, middle=middle, middle_valid=middle_valid)


def mask_unwritten(
    scope: Scope, total: torch.Tensor, backend: str = "torch", max_position: torch.Tensor | None = None
) -> Scope:
    """The scope of a decode step whose cache view reaches past the rows written so far (a static
    step, :class:`~reattn_llm.method.state.StaticStep`): scope rows at or past ``total`` (``[1]`` int64
    on the device, the rows written including this step's) become padding, and positions close up
    over the rest, as :func:`build_scope` would have numbered a scope without them
    (:func:`~reattn_llm.kernels.mask_unwritten`: one launch on Triton, which also raises
    ``max_position``, ``[1]`` int64, to the largest query position when given). Padding reads row 0, a
    written row; the attention never lets a padding row's content (an unwritten row may hold NaN)
    reach its output either."""
    q_len = scope.q_pos.shape[1]
    idx, key_pos, q_pos = kernel_mask_unwritten(
        scope.gather_idx, scope.key_pos, total, q_len, max_position, backend
    )
    return Scope(idx, key_pos, q_pos, scope.middle, scope.middle_valid, chunk_tail=False)
