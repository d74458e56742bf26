"""Fused, exact position-agnostic scoring + top-k in Triton (twin: :func:`score_topk_torch`).

For each (batch, query head, query) the ``top_k`` middle keys with the largest raw ``q . k``
(un-rotated, no scale), accumulated in fp32. The ``[H, Q, M]`` score matrix never exists.

Algorithm (two launches, no host sync):

1. ``_score_topk_kernel``: one program per (row block, batch, KV head, key split). A row is one
   (query, query head) pair of the KV head's group, laid out query-major (row = i * g + j), so
   every K tile is loaded once per program and shared by the whole GQA group. Each K tile is
   scored by one ``tl.dot`` (fp32 accumulation; IEEE for fp32 inputs); full tiles run unmasked,
   the split's partial last tile is peeled off and masked with -inf. A running per-row top-k
   lives in registers:

   * **grouped mode** (more than 64 rows per KV head: prefill; bf16/fp16): each tile's scores are
     first reduced to *group maxima*, a group being the ``2*CI`` keys one thread already holds in
     the wgmma accumulator (columns ``8c + 2t + e`` for a fixed ``t`` and ``c`` in a block of
     ``CI``), so the reduction is register-only. The running top-k keeps the best ``top_k``
     *groups*. That is exact for keys: each true top-k key lies in one of the ``top_k`` groups
     with the largest maxima (if a group holding a top-k key x had ``top_k`` groups with larger
     maxima, there would be ``top_k`` keys larger than x). With ``PACK`` (the default) the group's
     index rides in the low mantissa bits of its max, so one max yields value and group and the
     knock-out is an equality test; the truncation (4 bits) is far below the fp32 rounding of a
     D-term dot, and only ranks groups: keys are rescored exactly in step 2.
     **Lazy insertion** (``EARLY_EXIT=3``, the prefill default): a tile's first insertion always
     runs, the other ``top_k - 1`` only when some row of the block still has a group that beats
     its k-th best. Past a program's first tiles a row rarely gains two groups from one tile (on
     the default model's keys the branch runs on 36% of a block's tiles at an 8K middle, 13% at
     32K, 4% at 128K: ``benchmarks/insertion_rate.py``); the result is the eager loop's bit for
     bit (a row without ``need`` is a no-op in it), and the next tile's K copy is issued before
     the branch (its loads stay pipelined). Decode (plain mode) is eager while a step's programs
     walk fewer than 8 tiles (the 8B shape's ~4 take the branch on ~80% of them) and lazy past it
     (SmolLM2 at 1M: 1.40x on the H200). (``EARLY_EXIT`` 1/2, plain mode only, skip
     insertions data-dependently from the first one; they measured slower on the H100 and stay as
     tested alternatives.)
   * **plain mode** (decode, tiny chunks, fp32): the same insertion on the key scores
     themselves; decode is memory-bound, so the per-key work hides under the K stream.

   With ``OVERLAP`` (:data:`EXACT_PREFILL`: a prompt chunk's scoring with 4 warps, over the middle
   or through a block table whose rows fit 32 bits) the loop issues the next tile's dot before it
   merges this tile's scores; same order, same arithmetic, the same indices bit for bit. (With 8
   warps it lost 0.72-0.80x: two live accumulators.)

   Each program writes its split's candidates: ``[B, H, Q, splits, top_k]`` values and ids.
2. ``_merge_refine_kernel``: one program per row merges the candidates of all splits (plain
   mode). Grouped mode's merge, ``_refine_groups_kernel``, takes 16 rows a program (every ranking
   step then reduces inside a warp; one row a program reduced across its four warps: 17 barriers
   and 2,720 sm_90 instructions a row against 3.4 and 784, ``benchmarks/topk_sass.py --merge``;
   0.1-1.3% of a scoring call faster on one H200), picks each row's ``top_k`` best groups,
   rescores their ``top_k * 2*CI`` keys exactly (fp32) and keeps the top-k keys. Ties go to the
   lower key index (plain mode), or to the lower group and then the lower key among the chosen
   groups' (grouped mode). Either way the running top-k keeps the best
   under (value, then the lower id) and evicts the highest id among tied slots, so how the keys
   are split over programs (and a batch of chunks, which splits them otherwise) never changes
   which of several exactly equal keys is kept: repeated tokens give equal un-rotated keys.

Supported: head dims up to 256 (any size; non powers of two are masked), any ``M``, any GQA
group size, top_k up to 32, fp16 / bf16 / fp32, strided views (the middle slice of the cache).
Measured on an H100 (BENCHMARKS.md, "Kernels" and run 21): 522 TFLOP/s for a forward's 8 chunks of
1024 queries over a 120K middle, 32/8 heads, d 128, bf16, top-4 (both launches; 391-411 TFLOP/s at a
late 32K forward's 27K middle, 318 for level 2's 508 blocks read in place); decode reads K at 79%
(128K) to 99% (1M) of the copy rate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import cdiv, check_device, check_float, next_pow2, sm_count, tiles_per_split
from .torch_ops import grown_first

__all__ = ["score_topk_blocks_triton", "score_topk_triton"]

MAX_TOP_K = 32


@triton.jit
def _worst_slot(vals, ids, thr, colk, KP: tl.constexpr):
    """Each row's worst slot: its k-th best value ``thr``, and among slots tied there the one of the
    highest id (a later tile or key). The running top-k keeps the best under (value, then lower id),
    a total order, so a split of the keys, or a batch that changes the splits, keeps the same ones."""
    tie = vals == thr[:, None]
    worst = tl.max(tl.where(tie, ids, -2), axis=1)
    return tl.min(tl.where(tie & (ids == worst[:, None]), colk, KP), axis=1)


@triton.jit
def _insert(vals, ids, thr, gm, gidx, tile, m, need, colk, KP: tl.constexpr, PACK: tl.constexpr):
    """One step of the running top-k: rows with ``need`` (their best remaining candidate ``m``
    beats their k-th best ``thr``) replace their worst slot by it; the candidate is knocked out.
    With ``PACK`` the group rides in ``m``'s low bits: the slot keeps the ``tile`` and the knock-out
    is an equality test; otherwise the candidate's index is looked up in ``gidx``."""
    if PACK:
        gi = tile
    else:
        gi = tl.min(tl.where(gm == m[:, None], gidx, 2147483647), axis=1)
    pos = _worst_slot(vals, ids, thr, colk, KP)
    repl = (colk == pos[:, None]) & need[:, None]
    vals = tl.where(repl, m[:, None], vals)
    if PACK:
        ids = tl.where(repl, gi, ids)
    else:
        ids = tl.where(repl, gi[:, None], ids)
    thr = tl.min(vals, axis=1)
    if PACK:
        gm = tl.where(gm == m[:, None], float("-inf"), gm)
    else:
        gm = tl.where(gidx == gi[:, None], float("-inf"), gm)
    m = tl.max(gm, axis=1)
    need = m > thr
    return vals, ids, thr, gm, m, need


@triton.jit
def _tile_scores(
    q,
    k_base,
    t_base,
    n0,
    end,
    offs_n,
    offs_d,
    k_offs,
    dvalid,
    sk_m,
    sk_d,
    NT,
    TAIL,
    BS: tl.constexpr,
    OFF32: tl.constexpr,
    IEEE: tl.constexpr,
    EVEN_D: tl.constexpr,
    MASKED: tl.constexpr,
):
    """The scores of the K tile of logical keys ``n0 ..`` (:func:`_tile_ptrs`) against the row
    block: ``[BLOCK_R, BLOCK_N]`` fp32, -inf past ``end``."""
    kptrs = _tile_ptrs(
        k_base, t_base, n0, end, offs_n, offs_d, k_offs, sk_m, sk_d, NT, TAIL, BS, MASKED, OFF32
    )
    if MASKED:
        nvalid = (n0 + offs_n) < end
        if EVEN_D:
            kv = tl.load(kptrs, mask=nvalid[:, None], other=0.0)
        else:
            kv = tl.load(kptrs, mask=nvalid[:, None] & dvalid[None, :], other=0.0)
    else:
        if EVEN_D:
            kv = tl.load(kptrs)
        else:
            kv = tl.load(kptrs, mask=dvalid[None, :], other=0.0)
    if IEEE:
        s = tl.dot(q, tl.trans(kv), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(kv))
    if MASKED:
        s = tl.where(nvalid[None, :], s, float("-inf"))
    return s


@triton.jit
def _merge_scores(
    s,
    n0,
    vals,
    ids,
    thr,
    gcol,
    colk,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GPT: tl.constexpr,
    CI: tl.constexpr,
    TOPK: tl.constexpr,
    KP: tl.constexpr,
    EARLY_EXIT: tl.constexpr,
    PACK: tl.constexpr,
):
    """Merge one tile's scores ``s`` (keys ``n0 ..``) into the running top-k."""
    NEG: tl.constexpr = float("-inf")
    if CI > 0:
        # group = the 2*CI columns one thread holds in the MMA accumulator: a register-only max
        NCB: tl.constexpr = BLOCK_N // (8 * CI)
        s5 = tl.reshape(s, [BLOCK_R, NCB, CI, 4, 2])
        gm = tl.max(tl.max(s5, axis=4), axis=2)  # [BLOCK_R, NCB, 4]
        gm = tl.reshape(gm, [BLOCK_R, GPT])
        gidx = gcol + (n0 // BLOCK_N) * GPT
    else:
        gm = s
        gidx = gcol + n0
    tile = n0 // BLOCK_N
    if PACK:
        # the group's index in the low bits of its max: one max yields value and group, and a
        # knock-out is an equality test. The truncation (log2(GPT) low mantissa bits) is far below
        # the fp32 rounding of a D-term dot product; the refine pass rescores keys exactly.
        packed = ((gm.to(tl.int32, bitcast=True) & ~(GPT - 1)) | gcol).to(tl.float32, bitcast=True)
        gm = tl.where(gm == NEG, NEG, packed)
    m = tl.max(gm, axis=1)
    need = m > thr
    if EARLY_EXIT == 3:  # one insertion; the others only when a row still has a candidate that beats it
        vals, ids, thr, gm, m, need = _insert(vals, ids, thr, gm, gidx, tile, m, need, colk, KP, PACK)
        if tl.max(need.to(tl.int32), axis=0) > 0:
            for _ in tl.static_range(TOPK - 1):
                vals, ids, thr, gm, m, need = _insert(vals, ids, thr, gm, gidx, tile, m, need, colk, KP, PACK)
    elif EARLY_EXIT == 1 and not PACK:  # data-dependent loop (defeats software pipelining of the K loads)
        cnt = tl.sum(need.to(tl.int32), axis=0)
        it = 0
        while (cnt > 0) & (it < TOPK):
            vals, ids, thr, gm, m, need = _insert(vals, ids, thr, gm, gidx, tile, m, need, colk, KP, False)
            cnt = tl.sum(need.to(tl.int32), axis=0)
            it += 1
    elif EARLY_EXIT == 2 and not PACK:  # skip the insertion when no row of the tile beats its k-th best
        if tl.max(need.to(tl.int32), axis=0) > 0:
            for _ in tl.static_range(TOPK):
                vals, ids, thr, gm, m, need = _insert(
                    vals, ids, thr, gm, gidx, tile, m, need, colk, KP, False
                )
    else:  # eager: every insertion on every tile
        for _ in tl.static_range(TOPK):
            vals, ids, thr, gm, m, need = _insert(vals, ids, thr, gm, gidx, tile, m, need, colk, KP, PACK)
    return vals, ids, thr


@triton.jit
def _tile_ptrs(
    k_base,
    t_base,
    n0,
    end,
    offs_n,
    offs_d,
    k_offs,
    sk_m,
    sk_d,
    NT,
    TAIL,
    BS: tl.constexpr,
    MASKED: tl.constexpr,
    OFF32: tl.constexpr,
):
    """Pointers of the K tile of logical keys ``n0 ..``: in place through the block table
    (``BS > 0``; a ``MASKED`` tile reads no table entry past ``end``), else rows of the middle.
    ``OFF32``: every row offset within the KV head fits int32 (the host checks the buffer's extent),
    so a table tile's rows and offsets are computed in 32 bits, and a tile that starts on a block
    boundary (``n0 % BS == 0``: every tile when ``BS`` divides the tile width) takes its blocks and
    in-block rows from loop-invariant ``offs_n // BS`` and ``offs_n % BS``."""
    if BS > 0:
        if MASKED:
            valid = n0 + offs_n < end
        else:
            valid = offs_n >= 0
        if OFF32:
            rows32 = _block_rows32(t_base, n0, offs_n, valid, NT, TAIL, BS, offs_n.shape[0] % BS == 0)
            return k_base + (rows32[:, None] * sk_m + offs_d[None, :] * sk_d)
        rows_n = _block_rows(t_base, n0 + offs_n, valid, NT, TAIL, BS)
        return k_base + rows_n[:, None] * sk_m + offs_d[None, :] * sk_d
    else:
        return k_base + tl.cast(n0, tl.int64) * sk_m + k_offs


@triton.jit
def _block_rows32(t_base, n0, offs_n, valid, NT, TAIL, BS: tl.constexpr, ON_GRID: tl.constexpr):
    """:func:`_block_rows` of the keys ``n0 + offs_n`` in int32 (rows that fit it). ``ON_GRID``: BS
    divides the tile width, and tiles start at multiples of it (a split holds whole tiles), so every
    tile starts on a block boundary and its in-block rows are the loop-invariant ``offs_n % BS``."""
    j = n0 // BS + offs_n // BS
    if ON_GRID:
        r = offs_n % BS
    else:
        r = n0 % BS + offs_n % BS
        j = tl.where(r >= BS, j + 1, j)
        r = tl.where(r >= BS, r - BS, r)
    blk = tl.load(t_base + j, mask=valid & (j < NT), other=0).to(tl.int32)
    return tl.where(j < NT, blk * BS + r, TAIL + (n0 + offs_n - NT * BS))


@triton.jit
def _entry_keys(M, GROW, TAIL, b, BS: tl.constexpr):
    """Batch entry ``b``'s logical keys and where its partial block starts (a batch of one forward's
    chunks, ``GROW`` rows apart): with a block table (``BS > 0``) every entry has ``M`` logical keys
    and its partial block starts ``b * GROW`` rows later; without one entry b scores its first
    ``M + b * GROW`` keys."""
    if BS > 0:
        mb = M
        tail = TAIL + b * GROW
    else:
        mb = M + b * GROW
        tail = TAIL
    return mb, tail


@triton.jit
def _block_rows(t_base, n, valid, NT, TAIL, BS: tl.constexpr):
    """Logical keys ``n`` -> their rows (int64): ``table[n // BS] * BS + n % BS`` for the ``NT``
    blocks of the table, then the partial block's rows from ``TAIL`` on."""
    j = n // BS
    blk = tl.load(t_base + j, mask=valid & (j < NT), other=0)
    return tl.where(j < NT, blk.to(tl.int64) * BS + n % BS, TAIL + (n - NT * BS).to(tl.int64))


@triton.jit(do_not_specialize=["Q", "M", "ROWS", "SPLITS", "NT", "TAIL", "GROW"])
def _score_topk_kernel(
    q_ptr,
    k_ptr,
    cand_v_ptr,
    cand_i_ptr,
    t_ptr,
    Q,
    M,
    GROW,
    G,
    ROWS,
    KEYS_PER_SPLIT,
    SPLITS,
    HKV,
    NT,
    TAIL,
    sq_b,
    sq_h,
    sq_q,
    sq_d,
    sk_b,
    sk_h,
    sk_m,
    sk_d,
    BS: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TOPK: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CI: tl.constexpr,
    EARLY_EXIT: tl.constexpr,
    PACK: tl.constexpr,
    IEEE: tl.constexpr,
    OVERLAP: tl.constexpr,
    OFF32: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid = tl.program_id(1)
    split = pid % SPLITS
    bk = pid // SPLITS
    kvh = bk % HKV
    b = bk // HKV

    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rvalid = rows < ROWS
    qi = rows // G
    h = kvh * G + rows % G
    offs_d = tl.arange(0, BLOCK_D)
    dvalid = offs_d < D
    EVEN_D: tl.constexpr = D == BLOCK_D
    q_off = b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h + qi.to(tl.int64) * sq_q
    q = tl.load(
        q_ptr + q_off[:, None] + offs_d[None, :] * sq_d, mask=rvalid[:, None] & dvalid[None, :], other=0.0
    )

    k_base = k_ptr + b.to(tl.int64) * sk_b + kvh.to(tl.int64) * sk_h
    start = split * KEYS_PER_SPLIT
    MB, TAIL = _entry_keys(M, GROW, TAIL, b, BS)
    end = tl.maximum(tl.minimum(start + KEYS_PER_SPLIT, MB), start)  # an entry's keys may end before a split
    full_end = start + ((end - start) // BLOCK_N) * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)

    if CI > 0:
        GPT: tl.constexpr = (BLOCK_N // (8 * CI)) * 4  # groups per tile
    else:
        GPT: tl.constexpr = BLOCK_N
    gcol = tl.arange(0, GPT)[None, :]
    colk = tl.arange(0, KP)[None, :]
    if PACK:
        # slots start at distinct finite sentinels just above -inf (-FLT_MAX, -FLT_MAX + ulp, ...)
        sent = (-8388609 - colk + tl.zeros([BLOCK_R, KP], tl.int32)).to(tl.float32, bitcast=True)
        vals = tl.where(colk < TOPK, sent, float("inf"))
        thr = tl.min(vals, axis=1)
    else:
        vals = tl.where(colk < TOPK, float("-inf"), float("inf")) + tl.zeros([BLOCK_R, KP], tl.float32)
        thr = tl.full([BLOCK_R], float("-inf"), tl.float32)
    ids = tl.full([BLOCK_R, KP], -1, tl.int32)

    k_offs = offs_n[:, None] * sk_m + offs_d[None, :] * sk_d
    t_base = t_ptr + (b.to(tl.int64) * HKV + kvh) * NT  # block table row (BS > 0)
    if OVERLAP:
        # the next tile's dot is issued before this tile's merge, so the tensor cores can run it
        # while the merge's reductions run (the merge's order and arithmetic are unchanged)
        if full_end > start:
            s = _tile_scores(
                q, k_base, t_base, start, end, offs_n, offs_d, k_offs, dvalid, sk_m, sk_d, NT, TAIL,
                BS, OFF32, IEEE, EVEN_D, False,
            )  # fmt: skip
            for n0 in range(start, full_end - BLOCK_N, BLOCK_N):
                s_next = _tile_scores(
                    q, k_base, t_base, n0 + BLOCK_N, end, offs_n, offs_d, k_offs, dvalid, sk_m, sk_d, NT,
                    TAIL, BS, OFF32, IEEE, EVEN_D, False,
                )  # fmt: skip
                vals, ids, thr = _merge_scores(
                    s, n0, vals, ids, thr, gcol, colk, BLOCK_R, BLOCK_N, GPT, CI, TOPK, KP, EARLY_EXIT, PACK
                )
                s = s_next
            last = full_end - BLOCK_N
            vals, ids, thr = _merge_scores(
                s, last, vals, ids, thr, gcol, colk, BLOCK_R, BLOCK_N, GPT, CI, TOPK, KP, EARLY_EXIT, PACK
            )
    else:
        for n0 in range(start, full_end, BLOCK_N):  # full tiles: no masks
            s = _tile_scores(
                q, k_base, t_base, n0, end, offs_n, offs_d, k_offs, dvalid, sk_m, sk_d, NT, TAIL,
                BS, OFF32, IEEE, EVEN_D, False,
            )  # fmt: skip
            vals, ids, thr = _merge_scores(
                s, n0, vals, ids, thr, gcol, colk, BLOCK_R, BLOCK_N, GPT, CI, TOPK, KP, EARLY_EXIT, PACK
            )
    if full_end < end:  # the split's partial last tile
        s = _tile_scores(
            q, k_base, t_base, full_end, end, offs_n, offs_d, k_offs, dvalid, sk_m, sk_d, NT, TAIL,
            BS, OFF32, IEEE, EVEN_D, True,
        )  # fmt: skip
        vals, ids, thr = _merge_scores(
            s, full_end, vals, ids, thr, gcol, colk, BLOCK_R, BLOCK_N, GPT, CI, TOPK, KP, EARLY_EXIT, PACK
        )

    # candidates [B, H, Q, SPLITS, TOPK], contiguous
    H = HKV * G
    row_off = ((b.to(tl.int64) * H + h) * Q + qi) * (SPLITS * TOPK) + split * TOPK
    omask = rvalid[:, None] & (colk < TOPK)
    if PACK:  # (tile, low bits) -> group id; sentinels -> -1
        ids = tl.where(ids >= 0, ids * GPT + (vals.to(tl.int32, bitcast=True) & (GPT - 1)), -1)
    tl.store(cand_v_ptr + row_off[:, None] + colk, vals, mask=omask)
    tl.store(cand_i_ptr + row_off[:, None] + colk, ids, mask=omask)


@triton.jit(do_not_specialize=["Q", "M", "C", "NT", "TAIL", "GROW"])
def _merge_refine_kernel(
    cand_v_ptr,
    cand_i_ptr,
    out_ptr,
    t_ptr,
    Q,
    M,
    GROW,
    G,
    H,
    C,
    NT,
    TAIL,
    BS: tl.constexpr,
    KK: tl.constexpr,
    CP: tl.constexpr,
):
    """Plain mode's merge: one program a row keeps the ``KK`` best of its splits' candidates."""
    row = tl.program_id(0).to(tl.int64)  # = (b * H + h) * Q + qi
    c = tl.arange(0, CP)
    cmask = c < C
    cv = tl.load(cand_v_ptr + row * C + c, mask=cmask, other=float("-inf"))
    cid = tl.load(cand_i_ptr + row * C + c, mask=cmask, other=-1)
    b = row // (H * Q)
    h = (row // Q) % H
    kvh = h // G
    t_base = t_ptr + (b * (H // G) + kvh) * NT  # block table row (BS > 0)
    _, TAIL = _entry_keys(M, GROW, TAIL, b, BS)
    for t in tl.static_range(KK):
        m = tl.max(cv, axis=0)
        sel = tl.min(tl.where(cv == m, cid, 2147483647), axis=0)
        if BS > 0:  # a logical key of the table -> its row
            out = _block_rows(t_base, sel, sel >= 0, NT, TAIL, BS)
        else:
            out = sel.to(tl.int64)
        tl.store(out_ptr + row * KK + t, out)
        cv = tl.where((cid == sel) & (cv == m), float("-inf"), cv)


@triton.jit(do_not_specialize=["Q", "M", "C", "NT", "TAIL", "GROW", "NROWS"])
def _refine_groups_kernel(
    cand_v_ptr,
    cand_i_ptr,
    q_ptr,
    k_ptr,
    out_ptr,
    t_ptr,
    Q,
    M,
    GROW,
    G,
    H,
    C,
    NT,
    TAIL,
    NROWS,
    sq_b,
    sq_h,
    sq_q,
    sq_d,
    sk_b,
    sk_h,
    sk_m,
    sk_d,
    BS: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TOPK: tl.constexpr,
    KK: tl.constexpr,
    KP: tl.constexpr,
    CP: tl.constexpr,
    CI: tl.constexpr,
    BLOCK_N: tl.constexpr,
    RB: tl.constexpr,
    DC: tl.constexpr,
):
    """Grouped mode's merge and refinement for ``RB`` rows a program: each row's candidates and
    keys lie along the rows' own axis, so every ranking step reduces inside a warp, and the exact
    rescoring walks the head dim in slices of ``DC``. Ties go to the lower group, then the lower key."""
    row = tl.program_id(0).to(tl.int64) * RB + tl.arange(0, RB).to(tl.int64)  # (b * H + h) * Q + qi
    rv = row < NROWS
    c = tl.arange(0, CP)
    cm = rv[:, None] & (c < C)[None, :]
    cv = tl.load(cand_v_ptr + row[:, None] * C + c[None, :], mask=cm, other=float("-inf"))
    cid = tl.load(cand_i_ptr + row[:, None] * C + c[None, :], mask=cm, other=-1)
    b = row // (H * Q)
    h = (row // Q) % H
    kvh = h // G
    qi = row % Q
    MB, TAILB = _entry_keys(M, GROW, TAIL, b, BS)
    zero = tl.zeros([RB], tl.int64)
    # 1. each row's TOPK best groups over all splits
    colk = tl.arange(0, KP)
    grp = tl.full([RB, KP], -1, tl.int32)
    for t in tl.static_range(TOPK):
        m = tl.max(cv, axis=1)
        sel = tl.min(tl.where(cv == m[:, None], cid, 2147483647), axis=1)
        grp = tl.where(colk[None, :] == t, sel[:, None], grp)
        cv = tl.where((cid == sel[:, None]) & (cv == m[:, None]), float("-inf"), cv)
    # 2. their keys: group (tile, cb, t) holds columns 8 * (cb * CI + ci) + 2 * t + e
    S: tl.constexpr = 2 * CI
    GPT: tl.constexpr = (BLOCK_N // (8 * CI)) * 4
    mem = tl.arange(0, S)
    tile = grp // GPT
    loc = grp % GPT
    key = (
        tile[:, :, None] * BLOCK_N
        + 8 * ((loc // 4)[:, :, None] * CI + (mem // 2)[None, None, :])
        + 2 * (loc % 4)[:, :, None]
        + (mem % 2)[None, None, :]
    )  # [RB, KP, S]
    kvalid = (grp[:, :, None] >= 0) & (key < (zero + MB)[:, None, None])
    key = tl.reshape(key, [RB, KP * S])
    kvalid = tl.reshape(kvalid, [RB, KP * S])
    if BS > 0:  # logical keys of the table -> their rows (increasing with the key when sorted)
        t_base = t_ptr + (b * (H // G) + kvh) * NT
        key = _block_rows(t_base[:, None], key, kvalid, NT, (zero + TAILB)[:, None], BS)
    qrow = (q_ptr + b * sq_b + h * sq_h + qi * sq_q)[:, None]  # [RB, 1]
    krow = (k_ptr + (b * sk_b + kvh * sk_h)[:, None] + key.to(tl.int64) * sk_m)[:, :, None]  # [RB, KP*S, 1]
    kmask = kvalid[:, :, None]
    dd = tl.arange(0, DC)
    s = tl.zeros([RB, KP * S], tl.float32)
    for d0 in tl.static_range(0, BLOCK_D, DC):
        dm = (d0 + dd) < D
        # padding rows (row >= NROWS) must not load: their address lies past q (a fault when q ends a mapping)
        qc = tl.load(qrow + (d0 + dd)[None, :] * sq_d, mask=rv[:, None] & dm[None, :], other=0.0)  # [RB, DC]
        kc = tl.load(krow + (d0 + dd)[None, None, :] * sk_d, mask=kmask & dm[None, None, :], other=0.0)
        s += tl.sum(kc.to(tl.float32) * qc.to(tl.float32)[:, None, :], axis=2)
    s = tl.where(kvalid, s, float("-inf"))
    for t in tl.static_range(KK):
        m = tl.max(s, axis=1)
        sel = tl.min(tl.where(s == m[:, None], key, 2147483647), axis=1)
        tl.store(out_ptr + row * KK + t, sel.to(tl.int64), mask=rv)
        s = tl.where(key == sel[:, None], float("-inf"), s)


# Tuning hook for benchmarks: ``{"decode": {...}, "prefill": {...}}`` merged into the picked config.
CONFIG_OVERRIDES: dict[str, dict] = {"decode": {}, "prefill": {}}


#: A prompt chunk's scoring, d <= 128: the next tile's dot issued before this tile's merge, with 4 warps.
#: H100, ``benchmarks/scoring_ab.py``, the same indices as 8 warps without it. Over the middle itself
#: (session 28): 1.085x at 8 chunks x 1024 over a 120K middle (522 TFLOP/s), 1.039x at 64K, 1.024x at a
#: late 32K forward, 1.014x at 24K, SmolLM2 1.012x. Through a block table (level 2, session 29: 1.026x
#: for 8 chunks' 508 blocks of 32, 375 TFLOP/s) only while its rows are computed in 32 bits: with int64
#: rows (a KV head past 2^31 elements) it lost 0.876x, so those keep 8 warps without it. (In SASS the
#: 4-warp loop is 513 instructions a warp a tile against 293 for 8 warps: 16.0 a row and 128 keys
#: against 18.3; ``benchmarks/topk_sass.py``.)
EXACT_PREFILL = dict(OVERLAP=True, num_warps=4)


def _pick_config(rows: int, M: int, D: int, n_sm: int, batch_heads: int, rows64: bool = False) -> dict:
    """Tile configuration for ``rows = g * Q`` rows per KV head and ``M`` keys (``rows64``: read
    through a block table whose rows need int64, :func:`_fits_int32`)."""
    bd = next_pow2(D)
    if rows <= 64:  # decode / tiny chunks: memory-bound, plain mode
        cfg = dict(
            BLOCK_R=max(16, next_pow2(rows)),
            BLOCK_N=128 if bd <= 128 else 64,
            CI=0,
            EARLY_EXIT=0,
            num_warps=4,
            num_stages=3,
            target=16 * n_sm,
            min_tiles=4,
        )
        # lazy insertion pays once a program walks 8+ tiles (H200, scoring_ab.py: 1.40x for SmolLM2
        # at a 1M middle, 12 tiles a program; 0.88x for the 8B shape at 127K, 4 tiles a program)
        if tiles_per_split(cdiv(M, cfg["BLOCK_N"]), batch_heads, cfg) >= 8:  # one row block a head
            cfg["EARLY_EXIT"] = 3
        cfg.update(CONFIG_OVERRIDES["decode"])
    else:
        # H100 sweep (benchmarks/kernels.py --sweep): 464 TFLOP/s at 2048 x 128K, d 128, top-4; d 64
        # takes 3 stages (H200, scoring_ab.py: 1.23x for SmolLM2's 16 chunks x 512 at 128K, 0.86x at d 128)
        cfg = dict(
            BLOCK_R=128,
            BLOCK_N=128 if bd <= 128 else 64,
            CI=4,
            EARLY_EXIT=3,
            PACK=True,
            num_warps=8,
            num_stages=3 if bd <= 64 else 2,
            target=4 * n_sm,
            min_tiles=8,
        )
        if bd <= 128:
            if not rows64:
                cfg.update(EXACT_PREFILL)
            cfg.update(CONFIG_OVERRIDES["prefill"])
    return cfg


def _candidate_bucket(c: int, ci: int) -> int:
    """The merge's candidate width (a constexpr) for ``c = splits * top_k`` candidates a row: a
    bucket that one compile serves for many lengths (the split count grows with the middle), so a
    long prompt does not compile a new merge kernel inside its prefill."""
    return max(16 if ci > 0 else 1024, next_pow2(c))


def _fits_int32(k: torch.Tensor) -> bool:
    """Whether every element offset within one ``k[b, h]`` fits int32 (a table tile's row
    offsets are then computed in 32 bits)."""
    extent = sum((n - 1) * abs(st) for n, st in zip(k.shape[2:], k.stride()[2:], strict=True))
    return extent + 256 * abs(k.stride(3)) < 2**31  # + a padded head dim's masked lanes


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    top_k: int,
    cfg: dict,
    table: torch.Tensor | None = None,
    block_size: int = 0,
    grow: int = 0,
    rows32: bool = False,
) -> torch.Tensor:
    """Both launches; with ``table [B, Hkv, NT]`` the keys are its blocks, then the partial block
    at the end of ``k`` (:func:`score_topk_blocks_triton`; ``rows32``: :func:`_fits_int32` of
    ``k``); with ``grow`` batch entry b scores the first ``M - (B - 1 - b)·grow`` keys
    (:func:`score_topk_triton`)."""
    B, H, Q, D = q.shape
    Hkv = k.shape[1]
    M, tab, nt, tail = k.shape[2], k, 0, 0  # without a table (BS = 0) tab is never read
    if table is not None:
        nt, tail = table.shape[2], k.shape[2] // block_size * block_size
        M, tab = nt * block_size + k.shape[2] - tail, table
    if table is None:
        m0 = M - (B - 1) * grow  # the first batch entry's keys (the kernels add b * grow)
    else:  # every entry has M logical keys; the first's partial block starts (B - 1) * grow rows earlier
        m0, tail = M, tail - (B - 1) * grow
    g = H // Hkv
    kk = min(top_k, m0)
    rows = g * Q
    BLOCK_R, BLOCK_N, CI = cfg["BLOCK_R"], cfg["BLOCK_N"], cfg["CI"]
    if CI > 0 and BLOCK_N % (8 * CI) != 0:
        raise ValueError(f"BLOCK_N={BLOCK_N} must be a multiple of 8*CI={8 * CI}")
    n_rb = cdiv(rows, BLOCK_R)
    tiles = cdiv(M, BLOCK_N)
    per_split = tiles_per_split(tiles, n_rb * B * Hkv, cfg)
    keys_per_split = per_split * BLOCK_N
    splits = cdiv(tiles, per_split)
    kp = next_pow2(top_k)
    cand_v = torch.empty((B, H, Q, splits, top_k), device=q.device, dtype=torch.float32)
    cand_i = torch.empty((B, H, Q, splits, top_k), device=q.device, dtype=torch.int32)
    ieee = q.dtype == torch.float32
    _score_topk_kernel[(n_rb, B * Hkv * splits)](
        q,
        k,
        cand_v,
        cand_i,
        tab,
        Q,
        m0,
        grow,
        g,
        rows,
        keys_per_split,
        splits,
        Hkv,
        nt,
        tail,
        *q.stride(),
        *k.stride(),
        BS=block_size if table is not None else 0,
        D=D,
        BLOCK_D=max(16, next_pow2(D)),
        TOPK=top_k,
        KP=kp,
        BLOCK_R=BLOCK_R,
        BLOCK_N=BLOCK_N,
        CI=CI,
        EARLY_EXIT=cfg["EARLY_EXIT"],
        PACK=cfg.get("PACK", False) and CI > 0,
        IEEE=ieee,
        OVERLAP=cfg.get("OVERLAP", False),
        OFF32=table is not None and rows32 and cfg.get("OFF32", True),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    out = torch.empty((B, H, Q, kk), device=q.device, dtype=torch.int64)
    C = splits * top_k
    cp = _candidate_bucket(C, CI)
    bs = block_size if table is not None else 0
    if CI > 0:
        _refine_groups(
            cand_v, cand_i, q, k, out, tab, (Q, m0, grow, g, H, C, nt, tail), bs, top_k, kk, cp, cfg
        )
        return out
    _merge_refine_kernel[(B * H * Q,)](
        cand_v,
        cand_i,
        out,
        tab,
        Q,
        m0,
        grow,
        g,
        H,
        C,
        nt,
        tail,
        BS=bs,
        KK=kk,
        CP=cp,
        num_warps=4 if cp > 1024 else 1,  # one warp past 1,024 candidates spills registers
    )
    return out


#: Grouped mode's merge: rows a program times keys rescored a row (``RB * KP * 2CI``), the head-dim
#: slice it rescores at a time and its warps. A slice of 32 bf16 values reads whole 32-byte sectors
#: of each gathered key (a slice of 8 read half of each sector it fetched, 16 times a key): on an
#: H100 (``benchmarks/scoring_ab.py``, session 28) the whole scoring call 1.085x at a late 32K
#: forward's 8 chunks, 1.106x for level 2's 508 candidate blocks, 1.01x at a 120K middle, SmolLM2
#: (d 64) 1.005x, against slices of 8 with 4 warps.
REFINE_ROW_KEYS, REFINE_DC, REFINE_WARPS = 512, 32, 8


def _refine_groups(cand_v, cand_i, q, k, out, tab, sizes, bs, top_k, kk, cp, cfg) -> None:
    """Launch :func:`_refine_groups_kernel` over every row (``sizes``: ``Q, M, GROW, G, H, C, NT,
    TAIL`` as the scoring kernel's; ``bs``: the block table's block size, 0 without one)."""
    B, H, Q, D = q.shape
    kps = next_pow2(top_k) * 2 * cfg["CI"]
    rb = max(1, min(64, cfg.get("REFINE_ROW_KEYS", REFINE_ROW_KEYS) // kps))
    rows = B * H * Q
    _refine_groups_kernel[(cdiv(rows, rb),)](
        cand_v,
        cand_i,
        q,
        k,
        out,
        tab,
        *sizes,
        rows,
        *q.stride(),
        *k.stride(),
        BS=bs,
        D=D,
        BLOCK_D=max(16, next_pow2(D)),
        TOPK=top_k,
        KK=kk,
        KP=next_pow2(top_k),
        CP=cp,
        CI=cfg["CI"],
        BLOCK_N=cfg["BLOCK_N"],
        RB=rb,
        DC=cfg.get("REFINE_DC", REFINE_DC),
        num_warps=cfg.get("REFINE_WARPS", REFINE_WARPS),
    )


def _check(name: str, q: torch.Tensor, k: torch.Tensor, top_k: int) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"{name}: q [B,H,Q,D] and k [B,Hkv,M,D] must be 4-D, got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    B, H, _, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim")
    Hkv = k.shape[1]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{name}: query heads {H} not a multiple of KV heads {Hkv}")
    if not 1 <= D <= 256:
        raise ValueError(f"{name}: head dim {D} not in 1..256")
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"{name}: top_k={top_k} not in 1..{MAX_TOP_K}")
    check_float(name, "q", q)
    if k.dtype != q.dtype:
        raise ValueError(f"{name}: q is {q.dtype} but k is {k.dtype}")
    check_device(name, q, k)


#: fp32 inputs (IEEE dots on the FMA units): plain mode, one stage, tiles of at most 64 x 64
FP32_PLAIN = dict(num_warps=4, num_stages=1, CI=0, EARLY_EXIT=0, PACK=False, OVERLAP=False)


def _config_for(q: torch.Tensor, hkv: int, m: int, _config: dict | None, rows64: bool = False) -> dict:
    B, H, Q, D = q.shape
    cfg = _pick_config((H // hkv) * Q, m, D, sm_count(q.device), B * hkv, rows64)
    if q.dtype == torch.float32:  # IEEE fp32 dots run on the FMA units: small tiles, plain mode
        cfg.update(FP32_PLAIN, BLOCK_N=min(cfg["BLOCK_N"], 64), BLOCK_R=min(cfg["BLOCK_R"], 64))
    if _config:
        cfg.update(_config)
    return cfg


def score_topk_triton(
    q: torch.Tensor, k: torch.Tensor, top_k: int, *, grow: int = 0, _config: dict | None = None
) -> torch.Tensor:
    """Exact position-agnostic top-k (Triton); same contract as :func:`score_topk_torch`.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries (any strides).
        k: ``[B, Hkv, M, D]`` un-rotated middle keys (any strides, e.g. a slice of the cache buffer,
            or one sequence's keys expanded over a batch of its chunks with batch stride 0).
        top_k: keys per (batch, head, query), 1..32.
        grow: batch entry b scores only the first ``M - (B - 1 - b)·grow`` keys (one forward's
            chunks, each a chunk further into the sequence than the one before).

    Returns:
        ``[B, H, Q, min(top_k, M0)]`` int64 indices into ``[0, M)``, best first; ties go to the
        lower index (``M0``: the first entry's keys, ``M`` without ``grow``).
    """
    name = "score_topk_triton"
    _check(name, q, k, top_k)
    B, H, Q, _ = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    kk = min(top_k, grown_first(name, M, B, grow) if grow else M)
    if B * H * Q == 0 or kk == 0:
        return torch.empty((B, H, Q, kk), device=q.device, dtype=torch.int64)
    return _launch(q, k, top_k, _config_for(q, Hkv, M, _config), grow=grow)


def score_topk_blocks_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    blocks: torch.Tensor,
    block_size: int,
    top_k: int,
    *,
    grow: int = 0,
    _config: dict | None = None,
) -> torch.Tensor:
    """Exact top-k over per-KV-head key blocks read in place (Triton); twin
    :func:`~reattn_llm.kernels.torch_ops.score_topk_blocks_torch`, same contract.

    The keys of KV head j are its full blocks ``blocks[b, j, :]`` (block i is rows ``i·bs ..`` of
    ``k``, the table of paged attention) and then the partial block at the end of ``k``: two-level
    selection's level 2 scores its candidates where they lie, without gathering them. Scores, ties
    and modes are :func:`score_topk_triton`'s over those keys in that order; the result is rows of ``k``.
    With ``grow`` (a multiple of ``block_size``) batch entry b's middle is its first
    ``M - (B - 1 - b)·grow`` rows: its partial block ends there.
    """
    name = "score_topk_blocks_triton"
    _check(name, q, k, top_k)
    _check_blocks(name, k, blocks, block_size, grow)
    B, H, Q, _ = q.shape
    n_keys = blocks.shape[2] * block_size + k.shape[2] % block_size
    kk = min(top_k, n_keys)
    if B * H * Q == 0 or kk == 0:
        return torch.empty((B, H, Q, kk), device=q.device, dtype=torch.int64)
    table = blocks if blocks.is_contiguous() else blocks.contiguous()
    rows32 = _fits_int32(k)
    cfg = _config_for(q, k.shape[1], n_keys, _config, rows64=not rows32)
    return _launch(q, k, top_k, cfg, table, block_size, grow, rows32)


def _check_blocks(name: str, k: torch.Tensor, blocks: torch.Tensor, block_size: int, grow: int = 0) -> None:
    if blocks.dim() != 3 or blocks.shape[:2] != k.shape[:2] or blocks.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{name}: blocks must be int32/int64 [B, Hkv, C] for k {tuple(k.shape)}, got "
            f"{tuple(blocks.shape)} {blocks.dtype}"
        )
    if block_size < 1 or blocks.shape[2] > k.shape[2] // block_size:
        raise ValueError(
            f"{name}: need block_size >= 1 and at most M // block_size blocks per head "
            f"({k.shape[2]} // {block_size}), got {block_size} and {blocks.shape[2]}"
        )
    if grow:
        first = grown_first(name, k.shape[2], k.shape[0], grow)
        if grow % block_size or blocks.shape[2] > first // block_size:
            raise ValueError(
                f"{name}: grow={grow} must be a multiple of block_size={block_size}, and the first batch "
                f"entry's {first} rows hold {first // block_size} full blocks, fewer than {blocks.shape[2]}"
            )
    check_device(name, k, blocks)
