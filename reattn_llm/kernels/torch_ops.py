"""Torch twins of the kernels: the portable, readable definition of each operation.

Every Triton kernel in this package has a twin here with the identical signature; the twin is
what runs on CPU and is the reference the kernels are tested against. Shapes use
B batch, H query heads, Hkv key/value heads (H % Hkv == 0, query head h reads KV head
h // (H // Hkv)), Q queries, M middle keys, T cached tokens, N gathered keys, D head dim.
The fused span selection (:func:`select_scope_torch`) is here too; its readable, histogram-based
definition is :mod:`reattn_llm.method.selection`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Upper bound on the fp32 score block materialised at once by the twin (elements): 64 MB on CPU,
# 1 GB on a GPU.
_SCORE_BLOCK_ELEMS = {"cpu": 1 << 24, "cuda": 1 << 28}


def score_topk_torch(q: torch.Tensor, k: torch.Tensor, top_k: int) -> torch.Tensor:
    """Exact position-agnostic top-k: for each (batch, query head, query) the ``top_k`` middle keys
    with the largest raw dot product ``q . k`` (no scaling, no softmax), scored in fp32
    (fp64 for fp64 inputs).

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k: ``[B, Hkv, M, D]`` un-rotated middle keys (a strided view into the cache is fine).
        top_k: keys to keep per query; ``min(top_k, M)`` are returned.

    Returns:
        ``[B, H, Q, min(top_k, M)]`` int64 indices into ``[0, M)``, best first (ties in any order).
        The ``[H, Q, M]`` score matrix is never materialised whole: keys are scored in blocks
        and a running top-k is merged.
    """
    B, H, Q, D = q.shape
    _, Hkv, M, _ = k.shape
    g = H // Hkv
    kk = min(top_k, M)
    # [B, Hkv, g*Q, D]: query heads of one KV group side by side (h = kv * g + j).
    acc = torch.promote_types(q.dtype, torch.float32)
    qg = q.to(acc).reshape(B, Hkv, g * Q, D)
    block = max(256, _SCORE_BLOCK_ELEMS.get(q.device.type, 1 << 24) // max(1, B * H * Q))
    best_v: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start in range(0, M, block):
        kb = k[:, :, start : start + block].to(acc)
        s = torch.matmul(qg, kb.transpose(-1, -2))  # [B, Hkv, g*Q, blk]
        v, i = s.topk(min(kk, s.shape[-1]), dim=-1)
        best_v, best_i = merge_topk(best_v, best_i, v, i + start if start else i, kk)
    assert best_i is not None
    return best_i.reshape(B, H, Q, kk)


def score_topk_blocks_torch(
    q: torch.Tensor, k: torch.Tensor, blocks: torch.Tensor, block_size: int, top_k: int
) -> torch.Tensor:
    """:func:`score_topk_torch` over per-KV-head key blocks: two-level selection's level 2.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k: ``[B, Hkv, M, D]`` un-rotated keys (the middle).
        blocks: ``[B, Hkv, C]`` int full blocks of each KV head (block i is rows ``i·bs ..`` of
            ``k``; increasing blocks keep ties on the lower row), at most ``M // bs``.
        block_size: bs.

    Returns:
        ``[B, H, Q, min(top_k, n)]`` int64 rows of ``k``, best first, over the ``n = C·bs + M % bs``
        keys of the blocks and then of the partial block at the end of ``k`` (none when bs divides M).
    """
    rows = block_rows(blocks, block_size, k.shape[2])
    local = score_topk_torch(q, k.gather(2, rows[..., None].expand(-1, -1, -1, k.shape[3])), top_k)
    return rows_of_hits(rows, local)


def block_rows(blocks: torch.Tensor, block_size: int, m: int) -> torch.Tensor:
    """Level 2's keys as rows of a middle of ``m`` rows: the full blocks ``blocks [B, Hkv, C]`` (block i
    is rows ``i·bs ..``), then the partial block at the end -> ``[B, Hkv, C·bs + m % bs]`` int64."""
    offsets = torch.arange(block_size, device=blocks.device)
    full = (blocks[..., None].long() * block_size + offsets).flatten(2)  # [B, Hkv, C·bs]
    tail = torch.arange(m // block_size * block_size, m, device=blocks.device)
    return torch.cat([full, tail.expand(*blocks.shape[:2], -1)], dim=2)


def rows_of_hits(rows: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """Hits ``[B, H, Q, k]`` indexing each KV head's keys ``rows [B, Hkv, n]`` -> the rows they name
    (query head h reads KV head ``h // (H / Hkv)``)."""
    rows_h = rows.repeat_interleave(hits.shape[1] // rows.shape[1], dim=1)  # [B, H, n]
    return rows_h.gather(2, hits.flatten(2)).reshape(hits.shape)


def merge_topk(
    best_v: torch.Tensor | None, best_i: torch.Tensor | None, v: torch.Tensor, i: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a block's top hits (scores ``v``, indices ``i``, ``[..., k']``) into a running top-``k``
    (``None`` before the first block): ``(scores, indices)``, best first."""
    if best_v is None or best_i is None:
        return v, i
    v, j = torch.cat([best_v, v], dim=-1).topk(min(k, best_v.shape[-1] + v.shape[-1]), dim=-1)
    return v, torch.cat([best_i, i], dim=-1).gather(-1, j)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[..., D] -> [..., D]``: the rotate-half RoPE convention of Llama-family models."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, h, S, D]`` by ``cos, sin [B, S, R]`` (R <= D: partial rotary keeps x[..., R:])."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    xr, xp = x[..., :r], x[..., r:]
    return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)


def gather_kv(cache: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``cache [B, Hkv, T, D]``, ``idx [B, N]`` -> ``[B, Hkv, N, D]`` (rows ``idx`` of each batch)."""
    if cache.shape[0] == 1:
        return cache.index_select(2, idx[0])
    b = torch.arange(cache.shape[0], device=cache.device)[:, None]
    return cache.permute(0, 2, 1, 3)[b, idx].permute(0, 2, 1, 3)


def scope_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    gather_idx: torch.Tensor,
    key_pos: torch.Tensor,
    q_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    scaling: float,
    chunk_tail: bool = False,
) -> torch.Tensor:
    """Attention of un-rotated queries over a gathered, re-positioned scope of the cache.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k_cache, v_cache: ``[B, Hkv, T, D]`` un-rotated keys and values (views are fine).
        gather_idx: ``[B, N]`` int64 rows of the cache forming the scope, in scope order.
            Padding entries may hold any row index in range (their ``key_pos`` is -1); what that
            row holds, NaN included, never reaches the output.
        key_pos: ``[B, N]`` int64 RoPE position of each gathered key, -1 for padding.
        q_pos: ``[B, Q]`` int64 RoPE position of each query.
        cos, sin: ``[P, R]`` RoPE tables (rotate-half layout, the model's scaling included),
            ``P`` > every position used, ``R <= D`` rotary dims (partial rotary keeps the rest).
        scaling: softmax scale (usually ``D ** -0.5``).
        chunk_tail: the caller's promise that the last ``Q`` keys are the queries' own, in query
            order, and every earlier key is visible to every query unless it is padding. The
            kernel skips masking work with it; the result is the same, so the twin ignores it.

    Returns:
        ``[B, Q, H, D]`` in ``q``'s dtype. Query i sees key j iff ``0 <= key_pos[j] <= q_pos[i]``.
    """
    del chunk_tail  # the full position mask below is right with or without the promise
    pad = (key_pos < 0)[:, None, :, None]  # a padding row may hold anything (NaN): 0 x NaN is NaN
    k = gather_kv(k_cache, gather_idx).masked_fill(pad, 0)
    v = gather_kv(v_cache, gather_idx).masked_fill(pad, 0)
    kp = key_pos.clamp(min=0)
    k = apply_rope(k, cos[kp], sin[kp])
    qr = apply_rope(q, cos[q_pos], sin[q_pos])
    mask = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= q_pos[:, :, None])  # [B, Q, N]
    out = F.scaled_dot_product_attention(
        qr, k, v, attn_mask=mask[:, None], scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.transpose(1, 2)


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
) -> tuple[torch.Tensor, ...]:
    """Centres ``[B, n]`` (any order, ``M`` = empty) -> ``gather_idx, key_pos, q_pos, middle,
    middle_valid`` of :class:`SelectedScope`: each centre c spans ``[c - span//2, c - span//2 + span)``
    cut at 0 and M, overlaps merged (each position once), positions counted from 0 in scope order."""
    b, m, g, span = centres.shape[0], middle_len, global_size, span_size
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


def rank_blocks_torch(q: torch.Tensor, summaries: torch.Tensor, weight: float) -> torch.Tensor:
    """Two-level selection's level-1 rank of every key block (:mod:`reattn_llm.method.two_level`):
    ``q [B, H, Q, D]``, ``summaries [B, Hkv, n, 3D]`` (``[max | min | mean]`` per block) -> ``[B, Hkv, n]``
    fp32 (fp64 for fp64 inputs): per KV head, the block's best over the head's rows (its GQA heads'
    queries) of ``s - max_blocks s``, with ``s = weight·(relu(q)·max + min(q, 0)·min) + (1 - weight)·q·mean``
    (Quest's bound of q.k blended with the mean key's score; higher is better). Rows are scored in
    slices, so the ``[rows, n]`` matrix is never whole."""
    b, h, nq, d = q.shape
    hkv, n = summaries.shape[1], summaries.shape[2]
    rows = (h // hkv) * nq
    acc = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(acc).reshape(b, hkv, rows, d)
    qq = torch.cat([weight * qf.clamp(min=0), weight * qf.clamp(max=0), (1.0 - weight) * qf], dim=-1)
    st = summaries.to(acc).transpose(-1, -2)  # [B, Hkv, 3D, n]
    step = max(1, _SCORE_BLOCK_ELEMS.get(q.device.type, 1 << 24) // max(1, b * hkv * n))
    best = torch.full((b, hkv, n), float("-inf"), dtype=acc, device=q.device)
    for r0 in range(0, rows, step):
        s = torch.matmul(qq[:, :, r0 : r0 + step], st)  # [B, Hkv, rows', n]
        s = (s - s.amax(dim=-1, keepdim=True)).amax(dim=2)
        best = torch.maximum(best, s)
    return best


def top_blocks_torch(rank: torch.Tensor, c: int) -> torch.Tensor:
    """Two-level selection's candidates: ``rank [B, Hkv, n]`` -> ``[B, Hkv, c]`` int64, the ``c``
    best-ranked blocks of each KV head in increasing order (ties to the lower block)."""
    best = rank.sort(dim=-1, descending=True, stable=True).indices[..., :c]
    return best.sort(dim=-1).values


def candidate_blocks_torch(q: torch.Tensor, summaries: torch.Tensor, weight: float, c: int) -> torch.Tensor:
    """Two-level selection's level 1 whole: :func:`rank_blocks_torch`, then :func:`top_blocks_torch`
    -> ``[B, Hkv, c]`` int64 blocks, increasing."""
    return top_blocks_torch(rank_blocks_torch(q, summaries, weight), c)


def rank_spans_torch(
    hits: torch.Tensor, middle_len: int, max_spans: int, span_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Span votes (``vote_pooling="span"``): the twin of :func:`~.triton_spans.rank_spans_triton`
    and the readable definition of :func:`reattn_llm.method.selection.rank_spans` (whose docstring
    states the rule). ``hits [B, ...]`` int64 in ``[0, M)``.

    Returns:
        ``centres, votes``, each ``[B, min(max_spans, M)]`` int64, most span votes first (``M`` and 0:
        an empty slot).
    """
    b, m = hits.shape[0], middle_len
    dev = hits.device
    flat = hits.reshape(b, -1)
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
