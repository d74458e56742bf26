"""Fused span selection in Triton (twin: :func:`~reattn_llm.kernels.torch_select.select_scope_torch`).

From one chunk's top-k hits to its scope in one launch, one program per batch row, no host
sync and nothing of size ``M``:

1. **Votes among the hits.** The ``C = H*Q*k`` hits and the ``P`` pinned centres are packed as
   ``position * (k+1) + rank`` (a pin's rank is ``k``), held in registers and sorted; a run of
   one position is one candidate centre. Its votes (1 per hit, ``H*Q*k + 1`` per pin) are a
   prefix-sum difference, its best rank the rank at its head (the run is sorted by rank).
2. **Ranking.** Each run's tail gets the order key of ``method.selection.rank_centres``
   (votes, then ``k - best rank`` with ``by_rank``, then the earlier position); a descending sort
   puts the ``n = min(n_spans, M)`` centres first.
3. **Spans and scope.** The centres sorted by position, each span cut at 0 and M and started no
   earlier than the previous spans' end (a running max), its kept length prefix-summed; the
   output loop then writes ``gather_idx`` / ``key_pos`` (global, spans, local) and ``q_pos``
   directly, positions counted from those lengths instead of a cumulative sum over the mask.

A batch row's scope is written by up to 16 programs (1,024 entries each), every one of them doing
steps 1-2 itself: a decode step's selection was one program on one SM, its 8,192-entry output loop
about 60% of the instructions (sm_90 SASS: 8 x 686 of ~8,800 a warp; 18.4 us a layer on the H200
in run 16's profile); the loop's arithmetic is int32 (positions and rows below 2**31, checked).

More than :data:`MAX_FUSED` hits and pins (large prefill chunks) do not fit one program's
registers: they are ranked by the twin's sort-based :func:`rank_hits_torch` (still ``O(C)``),
and the kernel does step 3 from the given centres.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import cdiv, check_device, next_pow2
from .torch_ops import grown_first
from .torch_select import SelectedScope, rank_hits_torch

__all__ = ["MAX_FUSED", "scope_from_centres_triton", "select_scope_triton"]

#: The most hits + pinned centres ranked inside the kernel (one program's registers); decode
#: steps always fit (``H * k + P``), larger prefill chunks are ranked by :func:`rank_hits_torch`.
MAX_FUSED = 4096
#: Output entries written per loop step, and the most programs a batch row's scope is written by.
_BLOCK_OUT = 1024
_MAX_PARTS = 16


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit(do_not_specialize=["M", "T", "Q"])
def _select_scope_kernel(
    hits_ptr,
    pin_ptr,
    cen_ptr,
    votes_ptr,
    idx_ptr,
    kpos_ptr,
    qpos_ptr,
    mid_ptr,
    valid_ptr,
    C_HITS,
    P,
    M,
    NK,
    G,
    L,
    T,
    Q,
    stride_hb,
    stride_pb,
    GROW,
    K: tl.constexpr,
    SPAN: tl.constexpr,
    CB: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BY_RANK: tl.constexpr,
    RANKED: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)  # which of the scope's output blocks this program writes (every part ranks)
    parts = tl.num_programs(1)
    M = M + b * GROW  # batch entry b: a chunk further on by b * GROW queries (0: all alike)
    T = T + b * GROW
    i = tl.arange(0, CB).to(tl.int64)
    if RANKED:  # centres given (ranked outside): [B, NK]
        cen = tl.load(cen_ptr + b * NK + i, mask=i < NK, other=M)
    else:
        is_hit = i < C_HITS
        is_pin = (i >= C_HITS) & (i < C_HITS + P)
        hp = tl.load(hits_ptr + b * stride_hb + i, mask=is_hit, other=0)
        pp = tl.load(pin_ptr + b * stride_pb + (i - C_HITS), mask=is_pin, other=0)
        pos = tl.where(is_hit, hp, tl.where(is_pin, tl.minimum(pp, M), M))  # M: ignored
        rank = tl.where(is_hit, i % K, K)
        key = tl.sort(pos * (K + 1) + rank)
        pos = key // (K + 1)
        rank = key % (K + 1)
        weight = tl.where(rank < K, 1, C_HITS + 1).to(tl.int64)
        head = (i == 0) | (pos != tl.gather(pos, tl.maximum(i - 1, 0), 0))
        tail = (i == CB - 1) | (pos != tl.gather(pos, tl.minimum(i + 1, CB - 1), 0))
        cum = tl.cumsum(weight, 0)
        votes = cum - tl.associative_scan(tl.where(head, cum - weight, 0), 0, _max)  # run sum at its tail
        if BY_RANK:
            best = tl.gather(rank, tl.associative_scan(tl.where(head, i, 0), 0, _max), 0)
            primary = votes * (K + 1) + (K - best)
        else:
            primary = votes
        order = tl.where(tail & (pos < M), primary * M + (M - 1 - pos), -1)
        order = tl.sort(order, descending=True)
        live = (order >= 0) & (i < NK)
        cen = tl.where(live, M - 1 - order % M, M)
        if BY_RANK:
            cvotes = order // M // (K + 1)
        else:
            cvotes = order // M
        nk_out = tl.where(part == 0, NK, 0)  # the first part writes the centres
        tl.store(cen_ptr + b * NK + i, cen, mask=i < nk_out)
        tl.store(votes_ptr + b * NK + i, tl.where(live, cvotes, 0), mask=i < nk_out)
    # spans of the centres in position order (empties, M, last)
    c = tl.sort(cen)
    live = c < M
    start = tl.where(live, tl.maximum(c - SPAN // 2, 0), M)
    end = tl.where(live, tl.minimum(c - SPAN // 2 + SPAN, M), M)
    prev_end = tl.where(i == 0, 0, tl.gather(tl.associative_scan(end, 0, _max), tl.maximum(i - 1, 0), 0))
    eff = tl.maximum(start, prev_end)
    length = tl.maximum(end - eff, 0)
    before = tl.cumsum(length, 0) - length
    n_mid = tl.sum(length, 0).to(tl.int32)
    # the scope's entries in int32 (every position and row < 2**31: the launcher checks), stored as int64
    start, eff, end, before = start.to(tl.int32), eff.to(tl.int32), end.to(tl.int32), before.to(tl.int32)
    M32, T32 = M.to(tl.int32), T.to(tl.int32)
    S = NK * SPAN
    N = G + S + L
    for j0 in range(part * BLOCK_OUT, N, parts * BLOCK_OUT):
        j = j0 + tl.arange(0, BLOCK_OUT)
        in_mid = (j >= G) & (j < G + S)
        jm = tl.where(in_mid, j - G, 0)
        ci = jm // SPAN
        st = tl.gather(start, ci, 0)
        ef = tl.gather(eff, ci, 0)
        cand = st + jm % SPAN
        ok = (cand >= ef) & (cand < tl.gather(end, ci, 0))
        mid = tl.minimum(cand, M32 - 1) + G
        mid_pos = tl.where(ok, G + tl.gather(before, ci, 0) + cand - ef, -1)
        jl = j - G - S
        idx = tl.where(j < G, j, tl.where(in_mid, mid, T32 - L + jl))
        kp = tl.where(j < G, j, tl.where(in_mid, mid_pos, G + n_mid + jl))
        tl.store(idx_ptr + b * N + j, idx.to(tl.int64), mask=j < N)
        tl.store(kpos_ptr + b * N + j, kp.to(tl.int64), mask=j < N)
        tl.store(mid_ptr + b * S + jm, mid.to(tl.int64), mask=in_mid)
        tl.store(valid_ptr + b * S + jm, ok, mask=in_mid)
    for q0 in range(part * BLOCK_OUT, Q, parts * BLOCK_OUT):
        qi = q0 + tl.arange(0, BLOCK_OUT)
        tl.store(qpos_ptr + b * Q + qi, (G + n_mid + L - Q + qi).to(tl.int64), mask=qi < Q)


def select_scope_triton(
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
    """Triton twin of :func:`~reattn_llm.kernels.torch_select.select_scope_torch` (same arguments,
    same result, exactly): ``hits [B, H, Q, k]`` int64, ``pinned [B, P]`` int64 or None."""
    name = "select_scope_triton"
    if hits.dtype != torch.int64 or hits.dim() < 2:
        raise ValueError(f"{name}: hits must be int64 [B, H, Q, k], got {hits.dtype} {tuple(hits.shape)}")
    if pinned is not None and (
        pinned.dtype != torch.int64 or pinned.dim() != 2 or pinned.shape[0] != hits.shape[0]
    ):
        raise ValueError(f"{name}: pinned must be int64 [B, P], got {pinned.dtype} {tuple(pinned.shape)}")
    check_device(name, hits, *([pinned] if pinned is not None else []))
    m, g, loc = middle_len, global_size, local_size
    if min(m, n_spans, span_size, q_len) < 1 or min(g, loc) < 0 or total != g + m + loc or q_len > total:
        raise ValueError(
            f"{name}: need M, n_spans, span_size, q_len >= 1 and total = G + M + L >= q_len, got M={m}, "
            f"n_spans={n_spans}, span_size={span_size}, G={g}, L={loc}, total={total}, q_len={q_len}"
        )
    b, k = hits.shape[0], hits.shape[-1]
    flat = hits.reshape(b, -1)
    if flat.shape[1] > 1 and flat.stride(1) != 1:
        flat = flat.contiguous()
    c_hits = flat.shape[1]
    pins = pinned if pinned is not None and pinned.shape[1] else None
    if pins is not None and pins.shape[1] > 1 and pins.stride(1) != 1:
        pins = pins.contiguous()
    n_pins = pins.shape[1] if pins is not None else 0
    nk = min(n_spans, m)
    dev = hits.device
    ranked = c_hits + n_pins > MAX_FUSED
    if ranked:
        cen, votes = rank_hits_torch(hits, pins, m, nk, by_rank)
        cb = next_pow2(max(nk, 2))
    else:
        cen = torch.empty(b, nk, dtype=torch.int64, device=dev)
        votes = torch.empty(b, nk, dtype=torch.int64, device=dev)
        cb = next_pow2(max(c_hits + n_pins, nk, 2))
    scope = _launch(
        flat,
        pins,
        cen,
        votes,
        (c_hits, n_pins, m, nk, g, loc, total, q_len),
        k,
        span_size,
        cb,
        by_rank,
        ranked,
    )
    return SelectedScope(*scope, cen, votes)


def _launch(
    flat, pins, cen, votes, sizes, k, span_size, cb, by_rank, ranked, grow=0
) -> tuple[torch.Tensor, ...]:
    """One launch of the kernel; ``sizes``: ``(C_HITS, P, M, NK, G, L, total, Q)`` of the first batch
    entry (entry b: ``M`` and ``total`` larger by ``b·grow``). Returns ``gather_idx, key_pos, q_pos,
    middle, middle_valid``."""
    c_hits, n_pins, m, nk, g, loc, total, q_len = sizes
    b, s = cen.shape[0], nk * span_size
    n = g + s + loc
    dev = cen.device
    idx = torch.empty(b, n, dtype=torch.int64, device=dev)
    key_pos = torch.empty(b, n, dtype=torch.int64, device=dev)
    q_pos = torch.empty(b, q_len, dtype=torch.int64, device=dev)
    middle = torch.empty(b, s, dtype=torch.int64, device=dev)
    valid = torch.empty(b, s, dtype=torch.bool, device=dev)
    if total + (b - 1) * grow >= 2**31:
        raise ValueError(
            f"select_scope_triton: {total} cached tokens exceed the kernel's int32 positions (2**31)"
        )
    # every part ranks the hits (a few microseconds, in parallel) and writes its share of the scope
    parts = max(1, min(_MAX_PARTS, cdiv(n, _BLOCK_OUT)))
    _select_scope_kernel[(b, parts)](
        flat,
        pins if pins is not None else flat,
        cen,
        votes,
        idx,
        key_pos,
        q_pos,
        middle,
        valid,
        c_hits,
        n_pins,
        m,
        nk,
        g,
        loc,
        total,
        q_len,
        flat.stride(0),
        pins.stride(0) if pins is not None else 0,
        grow,
        K=k,
        SPAN=span_size,
        CB=cb,
        BLOCK_OUT=_BLOCK_OUT,
        BY_RANK=bool(by_rank),
        RANKED=ranked,
        num_warps=max(4, min(16, cb // 256)),
    )
    return idx, key_pos, q_pos, middle, valid


def scope_from_centres_triton(
    centres: torch.Tensor,
    middle_len: int,
    span_size: int,
    global_size: int,
    local_size: int,
    total: int,
    q_len: int,
    grow: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Triton twin of :func:`~reattn_llm.kernels.torch_select.scope_from_centres_torch` (same arguments,
    same result, exactly): step 3 of the kernel from centres ranked elsewhere (a prompt chunk's span
    votes, :func:`~.triton_spans.rank_spans_triton`). ``centres [B, n]`` int64, ``M`` = empty; with
    ``grow`` entry b has ``M - (B - 1 - b)·grow`` middle keys (and as many fewer in ``total``)."""
    name = "scope_from_centres_triton"
    if centres.dtype != torch.int64 or centres.dim() != 2 or centres.shape[1] < 1:
        raise ValueError(
            f"{name}: centres must be int64 [B, n >= 1], got {centres.dtype} {tuple(centres.shape)}"
        )
    check_device(name, centres)
    m, g, loc = middle_len, global_size, local_size
    if min(m, span_size, q_len) < 1 or min(g, loc) < 0 or total != g + m + loc or q_len > total:
        raise ValueError(
            f"{name}: need M, span_size, q_len >= 1 and total = G + M + L >= q_len, got M={m}, "
            f"span_size={span_size}, G={g}, L={loc}, total={total}, q_len={q_len}"
        )
    first = grown_first(name, m, centres.shape[0], grow) if grow else m
    if g + first + loc < q_len:
        raise ValueError(
            f"{name}: the first batch entry's {g + first + loc} keys are fewer than q_len={q_len}"
        )
    cen = centres.contiguous()
    nk = cen.shape[1]
    sizes = (0, 0, first, nk, g, loc, total - (m - first), q_len)
    return _launch(cen, None, cen, cen, sizes, 1, span_size, next_pow2(max(nk, 2)), False, True, grow)
