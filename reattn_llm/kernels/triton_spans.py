"""Span votes of a prompt chunk in Triton (twin: :func:`~.torch_select.rank_spans_torch`).

A prompt chunk ranks span centres by the hits each centre's span covers
(:func:`reattn_llm.method.selection.rank_spans` states the rule). The twin builds it from about
forty torch ops over ``[B, M]`` arrays (a histogram, a cumulative sum, a doubling loop for the
window maxima, ...), each a kernel launch per layer per chunk; here it takes four kernels and one
``topk``, bit for bit the same result:

1. ``_hist_kernel``: ``own[b, c]``, the hits on middle row c (atomic adds, int32).
2. ``_key_kernel``: each row's order key ``(span_votes · (n + 1) + own) · M + (M - 1 - c)``
   (``n`` hits per batch entry; span votes summed from ``own`` over the span
   ``[c - span//2, c - span//2 + span)`` cut at 0 and M), int64, written once.
3. ``_peak_kernel``: a row is a centre when its key is the largest within ``span - 1`` rows either
   side and its span holds a hit. Keys are unique, so centres lie at least ``span`` rows apart: each
   block appends its centres' keys to the entry's list of ``cdiv(M, span)`` slots (an atomic count;
   empty slots -1), in any order.
4. ``topk`` of that list (torch; values only, so the order the blocks appended in does not show), then
   ``_decode_kernel`` splits each kept key into centre and votes. (A ``topk`` over the whole ``[B, M]``
   row of int64 keys was 0.55 ms a layer of a late 32K forward on an H100, 4% of the forward.)

When the whole middle fits the budget (``M <= max_spans * span``) the centres tile it; that small
case runs the twin. With ``grow`` the batch is one forward's chunks, entry b a chunk whose middle
is ``M_b = M - (B - 1 - b)·grow``: each is ranked over its own middle in the same launches (rows
are ``M`` long; entries past ``M_b`` are never peaks), as if alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import cdiv, check_device, next_pow2
from .torch_ops import grown_first
from .torch_select import check_vote_keys, rank_spans_torch

__all__ = ["rank_spans_triton"]


@triton.jit(do_not_specialize=["n", "M"])
def _hist_kernel(hits_ptr, own_ptr, n, M, s_hb, s_hn, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    h = tl.load(hits_ptr + b * s_hb + offs.to(tl.int64) * s_hn, mask=ok, other=0).to(tl.int64)
    ok = ok & (h >= 0) & (h < M)  # a hit outside the middle counts nowhere (never a write past ``own``)
    tl.atomic_add(own_ptr + b * M + h, tl.full([BLOCK], 1, tl.int32), mask=ok)


@triton.jit(do_not_specialize=["M0", "scale", "GROW"])
def _key_kernel(own_ptr, key_ptr, MS, M0, GROW, scale, half, span, SP: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    M = M0 + b * GROW  # this batch entry's middle (rows are MS long)
    pos = pid * BLOCK + tl.arange(0, BLOCK)
    pv = pos < M
    j = tl.arange(0, SP)
    win = pos[:, None] - half + j[None, :]
    wm = pv[:, None] & (j[None, :] < span) & (win >= 0) & (win < M)
    base = own_ptr + b * MS
    votes = tl.sum(tl.load(base + win, mask=wm, other=0), axis=1).to(tl.int64)
    own = tl.load(base + pos, mask=pv, other=0).to(tl.int64)
    key = (votes * scale + own) * M + (M - 1 - pos)
    tl.store(key_ptr + b * MS + pos, key, mask=pv)


@triton.jit(do_not_specialize=["M0", "scale", "GROW", "CAP"])
def _peak_kernel(
    key_ptr, out_ptr, count_ptr, MS, M0, GROW, scale, reach, CAP, SP: tl.constexpr, BLOCK: tl.constexpr
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    M = M0 + b * GROW
    pos = pid * BLOCK + tl.arange(0, BLOCK)
    pv = pos < M
    j = tl.arange(0, SP)
    win = pos[:, None] - reach + j[None, :]
    wm = pv[:, None] & (j[None, :] < 2 * reach + 1) & (win >= 0) & (win < M)
    base = key_ptr + b * MS
    around = tl.max(tl.load(base + win, mask=wm, other=-1), axis=1)
    key = tl.load(base + pos, mask=pv, other=-1)
    peak = pv & (key == around) & (key >= scale * M)  # the largest key around, and its span holds a hit
    flag = peak.to(tl.int32)
    found = tl.sum(flag, axis=0)
    if found > 0:  # append this block's peaks to the entry's list (their order there does not matter)
        at = tl.atomic_add(count_ptr + b, found)
        slot = at + tl.cumsum(flag, axis=0) - 1
        tl.store(out_ptr + b * CAP + slot, key, mask=peak & (slot < CAP))


@triton.jit(do_not_specialize=["M0", "scale", "GROW"])
def _decode_kernel(top_ptr, cen_ptr, vot_ptr, K, M0, GROW, scale, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    M = M0 + b * GROW
    i = tl.arange(0, BLOCK)
    ok = i < K
    top = tl.load(top_ptr + b * K + i, mask=ok, other=-1)
    empty = top < 0
    centre = tl.where(empty, M, (M - 1) - top % M)
    votes = tl.where(empty, 0, top // M // scale)
    tl.store(cen_ptr + b * K + i, centre, mask=ok)
    tl.store(vot_ptr + b * K + i, votes, mask=ok)


def rank_spans_triton(
    hits: torch.Tensor, middle_len: int, max_spans: int, span_size: int, grow: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~.torch_select.rank_spans_torch` on the GPU (same arguments and result, bit for bit).

    Args:
        hits: ``[B, ...]`` int64 middle rows in ``[0, M_b)`` (a chunk's top-k, ``[B, H, Q, k]``).
        middle_len: M (the last batch entry's).
        max_spans: centres kept, at most.
        span_size: tokens per span.
        grow: batch entry b is a chunk whose middle is ``M_b = M - (B - 1 - b)·grow``.

    Returns:
        ``centres, votes``, each ``[B, min(max_spans, M_0)]`` int64, most span votes first.
    """
    name = "rank_spans_triton"
    if hits.dim() < 1 or hits.dtype != torch.int64:
        raise ValueError(
            f"{name}: hits must be an int64 tensor [B, ...], got {hits.dtype} {tuple(hits.shape)}"
        )
    if middle_len < 1 or max_spans < 1 or span_size < 1:
        raise ValueError(
            f"{name}: middle_len {middle_len}, max_spans {max_spans} and span_size {span_size} must be >= 1"
        )
    check_device(name, hits)
    m, b = middle_len, hits.shape[0]
    first = grown_first(name, m, b, grow) if grow else m
    if first <= max_spans * span_size:  # a middle fits the budget: the spans tile it (small; the twin)
        return rank_spans_torch(hits, middle_len, max_spans, span_size, grow)
    flat = hits.reshape(b, -1)
    n = flat.shape[1]
    scale = n + 1  # the twin's n_hits: more than any span's votes
    check_vote_keys(name, n, m)  # the order keys below are int64
    dev = hits.device
    own = torch.zeros((b, m), dtype=torch.int32, device=dev)
    if n:
        hb = 1024
        _hist_kernel[(cdiv(n, hb), b)](flat, own, n, m, flat.stride(0), flat.stride(1), BLOCK=hb, num_warps=4)
    key = torch.empty((b, m), dtype=torch.int64, device=dev)
    sp = max(2, next_pow2(span_size))
    blk = max(16, min(256, 8192 // sp))
    _key_kernel[(cdiv(m, blk), b)](
        own, key, m, first, grow, scale, span_size // 2, span_size, SP=sp, BLOCK=blk, num_warps=4
    )
    n_keep = min(max_spans, first)
    # keys are unique, so two peaks lie at least ``span_size`` rows apart: a row holds at most
    # cdiv(M, span) of them, listed compactly (-1 = none) for a topk over 1/span of the middle
    cap = max(n_keep, cdiv(m, span_size))
    peaks = torch.full((b, cap), -1, dtype=torch.int64, device=dev)
    found = torch.zeros((b,), dtype=torch.int32, device=dev)
    reach = span_size - 1
    sp2 = max(2, next_pow2(2 * reach + 1))
    blk2 = max(16, min(256, 8192 // sp2))
    _peak_kernel[(cdiv(m, blk2), b)](
        key, peaks, found, m, first, grow, scale, reach, cap, SP=sp2, BLOCK=blk2, num_warps=4
    )
    top = peaks.topk(n_keep, dim=1).values.contiguous()
    centres = torch.empty_like(top)
    votes = torch.empty_like(top)
    _decode_kernel[(b,)](
        top, centres, votes, n_keep, first, grow, scale, BLOCK=max(2, next_pow2(n_keep)), num_warps=1
    )
    return centres, votes
