"""Two-level selection's level 1 in Triton (twin: :func:`~reattn_llm.kernels.torch_ops.rank_blocks_torch`).

Each (query head, query) row of a KV head scores every key block from its summary
``[centre | radius]``: ``s = q·centre + |q|·radius`` (Quest's upper bound of q.k blended with the
mean key's score, :mod:`reattn_llm.kv.summaries`). A block's rank is its best *row-normalised*
score over the KV head's rows, ``max_r (s[r, n] - max_n' s[r, n'])``. The ``[rows, blocks]`` score
matrix never exists (at 1M keys it would be ``H·Q·M/bs`` fp32 per chunk):

1. ``_row_best_kernel``: one program per (batch x KV head, row tile, block split) walks its
   split's blocks in tiles, keeping each row's best score in registers -> ``[B, Hkv, S, rows]``
   fp32. A decode step has a handful of rows per KV head, so its blocks are split (S > 1) until
   the grid fills the GPU; a prompt chunk's row tiles fill it alone (S = 1).
2. ``_block_rank_kernel``: one program per (batch x KV head, block tile) holds its blocks'
   summaries and walks all rows in tiles, each row's best the maximum over the S splits, keeping
   each block's best ``s - row best`` -> ``[B, Hkv, n]``.

3. ``_top_blocks_kernel`` (:func:`top_blocks_triton`, twin
   :func:`~reattn_llm.kernels.torch_ops.top_blocks_torch`): the ``C`` best-ranked blocks of each
   KV head in increasing order, in one launch instead of a ``topk`` and a ``sort`` (which took
   about 60 us together at 4K blocks per head). One program holds a head's whole
   rank in registers (at most :data:`MAX_TOP_BLOCKS` blocks), finds the C-th largest value by a
   bitwise search over order-preserving int32 keys (32 counts), keeps every block above it and
   the lowest-indexed ones equal to it, and writes them where a prefix sum puts them.

4. :func:`candidate_blocks_triton`, a decode step's level 1 whole (at most :data:`FUSED_ROWS` rows
   per KV head): pass 1 also stores the few rows' scores, ``[B, Hkv, rows, n]`` fp32 (small for
   few rows), and the candidates kernel ranks the blocks from them, so the summaries are read
   once and pass 2 is not launched.

Each pass recomputes the dots (two ``tl.dot`` per tile, fp32 accumulation, IEEE for fp32
inputs): ``2 x 4·H·Q·n·D`` FLOPs, ``4/bs`` of exact scoring, and nothing written but the results.
Head dims up to 256 (non powers of two masked), fp16 / bf16 / fp32, any GQA group.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import cdiv, check_device, check_float, next_pow2, sm_count
from .torch_ops import grown_first

__all__ = [
    "FUSED_ROWS",
    "MAX_TOP_BLOCKS",
    "candidate_blocks_triton",
    "rank_blocks_triton",
    "top_blocks_triton",
]

#: The most blocks per KV head that :func:`top_blocks_triton` holds in one program's registers
#: (256K middle keys in blocks of 32). Past it one program is slower than torch's multi-block
#: ``topk`` (H200: 134 us against 96 us for topk + sort, 3 heads of 32K blocks).
MAX_TOP_BLOCKS = 1 << 13
#: The most rows per KV head (GQA heads x queries) whose scores :func:`candidate_blocks_triton`
#: keeps between its two launches (a decode step: one query per head).
FUSED_ROWS = 16

_NEG = tl.constexpr(float("-inf"))  # a jit function reads globals only as constexpr


@triton.jit
def _tile_scores(q, qa, s_ptrs, nmask, dmask, D: tl.constexpr, IEEE: tl.constexpr):
    """``[BR, BN]`` fp32 blended scores of row tile ``q`` (and ``qa = |q|``) against the summary tile
    at ``s_ptrs`` (``[BN, DP]`` pointers to the centre part): ``q·centre + |q|·radius``."""
    m2 = nmask[:, None] & dmask[None, :]
    centre = tl.load(s_ptrs, mask=m2, other=0.0)
    radius = tl.load(s_ptrs + D, mask=m2, other=0.0)
    if IEEE:
        s = tl.dot(q, tl.trans(centre), input_precision="ieee")
        s = tl.dot(qa, tl.trans(radius), s, input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(centre))
        s = tl.dot(qa, tl.trans(radius), s)
    return s


@triton.jit
def _entry(s_ptr, bh, HKV, NB, GROW, stride_sb, stride_sh):
    """Program ``bh`` (batch entry x KV head)'s summaries row and its blocks: ``NB`` less ``GROW`` per
    later batch entry (a batch of one forward's chunks; any batch stride, 0 when expanded)."""
    nb = NB - ((tl.num_programs(0) - 1 - bh) // HKV) * GROW
    return s_ptr + (bh // HKV) * stride_sb + (bh % HKV) * stride_sh, nb


@triton.jit
def _load_rows(q_ptr, r, rmask, d, dmask, stride_r):
    q = tl.load(q_ptr + r[:, None] * stride_r + d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    # bf16 abs may come back as fp32 in some Triton versions; tl.dot wants both sides alike
    return q, tl.abs(q).to(q.dtype)


@triton.jit(do_not_specialize=["NB", "S"])
def _row_best_kernel(
    q_ptr,
    s_ptr,
    best_ptr,
    sc_ptr,
    R,
    NB,
    S,
    PER_SPLIT,
    stride_qbh,
    stride_qr,
    stride_sb,
    stride_sh,
    stride_sn,
    HKV,
    GROW,
    D: tl.constexpr,
    DP: tl.constexpr,
    BR: tl.constexpr,
    BN: tl.constexpr,
    IEEE: tl.constexpr,
    STORE: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BR + tl.arange(0, BR)
    split = tl.program_id(2)
    rmask = r < R
    d = tl.arange(0, DP)
    dmask = d < D
    q, qa = _load_rows(q_ptr + bh * stride_qbh, r, rmask, d, dmask, stride_qr)
    s_base, nb = _entry(s_ptr, bh, HKV, NB, GROW, stride_sb, stride_sh)
    best = tl.full((BR,), _NEG, tl.float32)
    first = split * PER_SPLIT
    for n0 in range(first, tl.minimum(first + PER_SPLIT, nb), BN):
        n = n0 + tl.arange(0, BN)
        nmask = n < nb
        s_ptrs = s_base + n[:, None].to(tl.int64) * stride_sn + d[None, :]
        s = _tile_scores(q, qa, s_ptrs, nmask, dmask, D, IEEE)
        s = tl.where(nmask[None, :], s, _NEG)
        if STORE:  # a decode step's few rows: keep the scores, [B*Hkv, R, NB], for the fused rank
            sc = sc_ptr + (bh * R + r[:, None]) * NB + n[None, :]  # (STORE: decode, GROW 0)
            tl.store(sc, s, mask=rmask[:, None] & nmask[None, :])
        best = tl.maximum(best, tl.max(s, axis=1))
    tl.store(best_ptr + (bh * S + split) * R + r, best, mask=rmask)


@triton.jit(do_not_specialize=["NB", "S"])
def _block_rank_kernel(
    q_ptr,
    s_ptr,
    best_ptr,
    out_ptr,
    R,
    NB,
    S,
    stride_qbh,
    stride_qr,
    stride_sb,
    stride_sh,
    stride_sn,
    HKV,
    GROW,
    D: tl.constexpr,
    DP: tl.constexpr,
    BR: tl.constexpr,
    BN: tl.constexpr,
    IEEE: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    s_base, nb = _entry(s_ptr, bh, HKV, NB, GROW, stride_sb, stride_sh)
    nmask = n < nb
    d = tl.arange(0, DP)
    dmask = d < D
    s_ptrs = s_base + n[:, None].to(tl.int64) * stride_sn + d[None, :]
    rank = tl.full((BN,), _NEG, tl.float32)
    for r0 in range(0, R, BR):
        r = r0 + tl.arange(0, BR)
        rmask = r < R
        q, qa = _load_rows(q_ptr + bh * stride_qbh, r, rmask, d, dmask, stride_qr)
        s = _tile_scores(q, qa, s_ptrs, nmask, dmask, D, IEEE)
        row_best = tl.full((BR,), _NEG, tl.float32)
        for split in range(0, S):
            part = tl.load(best_ptr + (bh * S + split) * R + r, mask=rmask, other=0.0)
            row_best = tl.maximum(row_best, part)
        s = tl.where(rmask[:, None], s - row_best[:, None], _NEG)
        rank = tl.maximum(rank, tl.max(s, axis=0))
    tl.store(out_ptr + bh * NB + n, tl.where(nmask, rank, _NEG), mask=n < NB)  # past nb: no block, -inf


def _prepare(name: str, q: torch.Tensor, summaries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Checked ``q [B*Hkv, rows, D]`` (a KV head's GQA heads' queries, head-major) and summaries
    ``[B, Hkv, n, 2D]`` (any batch stride: one sequence's, expanded over a batch of its chunks) in
    one dtype, and the rows per KV head."""
    check_float(name, "q", q)
    check_float(name, "summaries", summaries)
    check_device(name, q, summaries)
    if q.dim() != 4 or summaries.dim() != 4:
        raise ValueError(
            f"{name}: q must be [B, H, Q, D] and summaries [B, Hkv, n, 2D], got "
            f"{tuple(q.shape)} and {tuple(summaries.shape)}"
        )
    b, h, nq, d = q.shape
    hkv = summaries.shape[1]
    if summaries.shape[0] != b or summaries.shape[3] != 2 * d or hkv < 1 or h % hkv or d > 256:
        raise ValueError(
            f"{name}: summaries {tuple(summaries.shape)} do not fit q {tuple(q.shape)}: need [B, Hkv, n, 2D] "
            "with H a multiple of Hkv and D <= 256"
        )
    rows = (h // hkv) * nq
    dt = q.dtype if q.dtype == summaries.dtype else torch.float32
    qr = q.to(dt).reshape(b * hkv, rows, d)
    if qr.stride(-1) != 1:
        qr = qr.contiguous()
    sm = summaries.to(dt)
    if sm.stride(-1) != 1:
        sm = sm.contiguous()
    return qr, sm, rows


def _row_best(
    qr: torch.Tensor,
    sm: torch.Tensor,
    config: dict | None,
    scores: torch.Tensor | None = None,
    grow: int = 0,
) -> tuple[torch.Tensor, dict, tuple]:
    """Pass 1 (each row's best block score per split, ``[B*Hkv, S, rows]``; with ``scores``, every
    score too); returns it with the launch's meta-parameters and arguments for pass 2. ``grow``:
    batch entry b has ``n - (B - 1 - b)·grow`` blocks."""
    bh, rows, d = qr.shape
    nb = sm.shape[2]
    tile = 64 if d <= 128 else 32  # four [tile, D] operands per step: keep them within shared memory
    row_tile = min(tile, max(16, next_pow2(rows)))  # a decode step's few rows: no 64-row tile of padding
    cfg = {"BR": row_tile, "BN": tile, "num_warps": 4, **(config or {})}
    br, bn = cfg["BR"], cfg["BN"]
    # split the blocks until the row-best pass has about two programs per SM, each at least 4 tiles
    grid = bh * cdiv(rows, br)
    splits = cfg.get("splits") or max(1, min(cdiv(2 * sm_count(qr.device), grid), cdiv(nb, 4 * bn)))
    per_split = cdiv(cdiv(nb, splits), bn) * bn
    splits = cdiv(nb, per_split)
    best = torch.empty(bh, splits, rows, dtype=torch.float32, device=qr.device)
    strides = (
        qr.stride(0),
        qr.stride(1),
        sm.stride(0),
        sm.stride(1),
        sm.stride(2),
        sm.shape[1],
        grow,
    )
    meta = {"D": d, "DP": max(16, next_pow2(d)), "BR": br, "BN": bn, "IEEE": qr.dtype == torch.float32}
    # pipeline depth: Triton's default unless a tested override asks (benchmarks/scoring_ab.py --only level1)
    if "num_stages" in cfg:
        meta["num_stages"] = cfg["num_stages"]
    _row_best_kernel[(bh, cdiv(rows, br), splits)](
        qr,
        sm,
        best,
        best if scores is None else scores,
        rows,
        nb,
        splits,
        per_split,
        *strides,
        **meta,
        STORE=scores is not None,
        num_warps=cfg["num_warps"],
    )
    return best, {**meta, "num_warps": cfg["num_warps"]}, (rows, nb, splits, *strides)


def rank_blocks_triton(
    q: torch.Tensor, summaries: torch.Tensor, grow: int = 0, *, _config: dict | None = None
) -> torch.Tensor:
    """Triton twin of :func:`~reattn_llm.kernels.torch_ops.rank_blocks_torch`: ``q [B, H, Q, D]``,
    ``summaries [B, Hkv, n, 2D]`` (``[centre | radius]``) -> ``[B, Hkv, n]`` fp32; with ``grow``
    batch entry b ranks its first ``n - (B - 1 - b)·grow`` blocks alone (the rest ``-inf``)."""
    name = "rank_blocks_triton"
    qr, sm, rows = _prepare(name, q, summaries)
    b, hkv, nb = summaries.shape[:3]
    if grow:
        grown_first(name, nb, b, grow)
    out = torch.empty(b, hkv, nb, dtype=torch.float32, device=q.device)
    if nb == 0 or rows == 0:
        return out.fill_(float("-inf"))
    best, meta, args = _row_best(qr, sm, _config, grow=grow)
    _block_rank_kernel[(b * hkv, cdiv(nb, meta["BN"]))](qr, sm, best, out, *args, **meta)
    return out


def candidate_blocks_triton(
    q: torch.Tensor, summaries: torch.Tensor, c: int, *, _config: dict | None = None
) -> torch.Tensor:
    """Level 1 whole for a decode step (twin: :func:`~reattn_llm.kernels.torch_ops.candidate_blocks_torch`):
    ``[B, Hkv, c]`` int64, the ``c`` best-ranked blocks per KV head, increasing. Pass 1 keeps the
    few rows' scores (``[B*Hkv, rows, n]`` fp32, small when rows are few), and the candidates
    kernel ranks the blocks from them: the summaries are read once, not twice, in two launches,
    not three. At most :data:`FUSED_ROWS` rows per KV head and :data:`MAX_TOP_BLOCKS` blocks."""
    name = "candidate_blocks_triton"
    qr, sm, rows = _prepare(name, q, summaries)
    b, hkv, nb = summaries.shape[:3]
    if not 1 <= rows <= FUSED_ROWS or not 0 <= c <= nb <= MAX_TOP_BLOCKS:
        raise ValueError(
            f"{name}: needs 1..{FUSED_ROWS} rows per KV head and 0 <= c <= n <= {MAX_TOP_BLOCKS}, "
            f"got {rows} rows, c={c}, n={nb}"
        )
    out = torch.empty(b, hkv, c, dtype=torch.int64, device=q.device)
    if c == 0:
        return out
    scores = torch.empty(b * hkv, rows, nb, dtype=torch.float32, device=q.device)
    best, _, _ = _row_best(qr, sm, _config, scores)
    _launch_top(scores, out, nb, c, best)
    return out


@triton.jit(do_not_specialize=["N", "C", "R", "S"])  # one compile for every length of a growing middle
def _top_blocks_kernel(r_ptr, out_ptr, best_ptr, N, C, R, S, BLOCK: tl.constexpr, FROM_SCORES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, BLOCK)
    valid = n < N
    if FROM_SCORES:  # r_ptr: the rows' scores [B*Hkv, R, N]; each block's best of s - row best
        rank = tl.full((BLOCK,), _NEG, tl.float32)
        for i in range(R):
            rb = tl.load(best_ptr + row * S * R + i)
            for j in range(1, S):
                rb = tl.maximum(rb, tl.load(best_ptr + (row * S + j) * R + i))
            s = tl.load(r_ptr + (row * R + i) * N + n, mask=valid, other=float("-inf"))
            rank = tl.maximum(rank, s - rb)
    else:
        rank = tl.load(r_ptr + row * N + n, mask=valid, other=float("-inf"))
    bits = rank.to(tl.int32, bitcast=True)
    bits = tl.where(bits == -2147483648, 0, bits)  # -0.0 ranks as +0.0
    # order-preserving int32 keys: negative floats' magnitude bits flipped
    key = tl.where(bits >= 0, bits, bits ^ 2147483647)
    key = tl.where(valid, key, -2147483648)  # padding below every real key (-inf's key is above it)
    # the C-th largest key, built bit by bit from the top in the unsigned domain (u = key + 2^31)
    t = tl.zeros([], tl.int64)
    for i in range(32):  # a loop, not unrolled: 32 copies of a wide reduction compile slowly
        cand = t | (tl.full([], 1, tl.int64) << (31 - i))
        cnt = tl.sum((key >= (cand - 2147483648).to(tl.int32)).to(tl.int32), axis=0)
        t = tl.where(cnt >= C, cand, t)
    thr = (t - 2147483648).to(tl.int32)
    above = key > thr
    eq = (key == thr) & valid
    n_above = tl.sum(above.to(tl.int32), axis=0)
    take = above | (eq & (tl.cumsum(eq.to(tl.int32), axis=0) <= C - n_above))
    pos = tl.cumsum(take.to(tl.int32), axis=0) - 1
    tl.store(out_ptr + row * C + pos, n.to(tl.int64), mask=take)


def top_blocks_triton(rank: torch.Tensor, c: int) -> torch.Tensor:
    """Triton twin of :func:`~reattn_llm.kernels.torch_ops.top_blocks_torch`: ``rank [B, Hkv, n]``
    fp32 (n <= :data:`MAX_TOP_BLOCKS`) -> ``[B, Hkv, c]`` int64, increasing."""
    name = "top_blocks_triton"
    check_device(name, rank)
    if rank.dim() != 3 or rank.dtype != torch.float32:
        raise ValueError(f"{name}: rank must be fp32 [B, Hkv, n], got {tuple(rank.shape)} {rank.dtype}")
    b, hkv, n = rank.shape
    if not 0 <= c <= n or n > MAX_TOP_BLOCKS:
        raise ValueError(f"{name}: need 0 <= c <= n <= {MAX_TOP_BLOCKS}, got c={c}, n={n}")
    out = torch.empty(b, hkv, c, dtype=torch.int64, device=rank.device)
    if c == 0 or b * hkv == 0:
        return out
    _launch_top(rank if rank.is_contiguous() else rank.contiguous(), out, n, c)
    return out


def _launch_top(
    src: torch.Tensor, out: torch.Tensor, n: int, c: int, row_best: torch.Tensor | None = None
) -> None:
    """The candidates kernel over ``src``: ranks ``[B*Hkv, n]``, or with ``row_best`` (pass 1's
    ``[B*Hkv, splits, rows]``) the rows' scores ``[B*Hkv, rows, n]``."""
    best = src if row_best is None else row_best
    splits, rows = (0, 0) if row_best is None else row_best.shape[1:]
    block = 2048 if n <= 2048 else MAX_TOP_BLOCKS  # two compiles, not one per power of two
    _top_blocks_kernel[(out.shape[0] * out.shape[1],)](
        src,
        out,
        best,
        n,
        c,
        rows,
        splits,
        BLOCK=block,
        FROM_SCORES=row_best is not None,
        num_warps=4 if block == 2048 else 8,
    )
