"""Scope attention for prefill chunks on a flash-attention path (Triton; twin: :func:`scope_attention_torch`).

A prefill chunk's row blocks each read every key of the scope, so the scope is copied once into
contiguous buffers and then read as flash attention reads its K/V:

1. ``_gather_kernel``: ``K'[b, kv, n] = rope(k_cache[b, kv, idx[b, n]], key_pos[b, n])`` and
   ``V'[b, kv, n] = v_cache[b, kv, idx[b, n]]``, ``[B, Hkv, N, D]`` contiguous; padding entries
   (``key_pos < 0``) are written as zeros, so whatever their cache row holds (NaN, for a row not
   written yet) is never read again. About ``4·N·D`` bytes per KV head: a few percent of the call.
2. ``_flash_kernel``: one program per (row block, batch x KV head, key split); a row is one
   (query, query head) pair of the KV head's GQA group, query-major (``row = i * g + j``), so each
   K/V tile is loaded once for the whole group. The queries are rotated at ``q_pos`` once, as full
   ``D``-wide vectors (``q·cos + rotate_half(q)·sin``), so each key tile is one ``D``-wide dot.
   Online softmax in exp2, fp32 accumulation.

Masking. In general query i sees key j iff ``0 <= key_pos[j] <= q_pos[i]`` and every tile is
masked so. A prefill chunk's scope has more structure, which ``chunk_tail=True`` promises (the
core's scopes keep it: :attr:`~reattn_llm.method.selection.Scope.chunk_tail`): the last ``Q`` keys
are the queries' own, in query order, and every earlier key is visible to every query unless it
is padding. Then a row block of queries ``i0..i1`` reads keys ``[0, N - Q + i0)`` with only a
per-key padding bias (no ``[rows, keys]`` comparison), and the tiles up to ``N - Q + i1`` with the
causal mask; the tiles past them are not read at all (the causal half of the chunk skipped, as
flash attention's causal loop does).

Long scopes with few row blocks (small models, short chunks) split the keys over programs as
flash-decoding does; :func:`~.triton_online_softmax.combine` merges the partial results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import cdiv, next_pow2
from .triton_online_softmax import combine, dot, softmax_step

__all__ = ["flash_scope_attention", "gather_scope", "rotate_rows"]


@triton.jit(do_not_specialize=["N"])
def _gather_kernel(
    k_ptr,
    v_ptr,
    idx_ptr,
    kpos_ptr,
    cos_ptr,
    sin_ptr,
    ko_ptr,
    vo_ptr,
    N,
    HKV,
    sk_b,
    sk_h,
    sk_t,
    sk_d,
    sv_b,
    sv_h,
    sv_t,
    sv_d,
    si_b,
    si_n,
    sp_b,
    sp_n,
    sc_p,
    sc_r,
    ss_p,
    ss_r,
    so_b,
    so_h,
    so_n,
    D: tl.constexpr,
    DH: tl.constexpr,
    BLOCK_DH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WITH_V: tl.constexpr,
    OWN_ROWS: tl.constexpr,
    POS0: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid = tl.program_id(1)
    kvh = (pid % HKV).to(tl.int64)
    b = (pid // HKV).to(tl.int64)
    offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nv = offs < N
    dh = tl.arange(0, BLOCK_DH)
    if OWN_ROWS:  # rows 0..N-1 of the source, in order (queries rotated in place of keys gathered)
        idx = offs.to(tl.int64)
    else:
        idx = tl.load(idx_ptr + b * si_b + offs * si_n, mask=nv, other=0).to(tl.int64)
    if POS0:  # every row rotated by the tables' row 0 (one RoPE for all)
        kp = tl.where(nv, 0, -1)
    else:
        kp = tl.load(kpos_ptr + b * sp_b + offs * sp_n, mask=nv, other=-1)
    real = nv & (kp >= 0)
    kp = tl.maximum(kp, 0).to(tl.int64)
    lm = real[:, None] & (dh < DH)[None, :]  # padding rows are not read: written as zeros
    sm = nv[:, None] & (dh < DH)[None, :]
    krow = k_ptr + b * sk_b + kvh * sk_h + idx[:, None] * sk_t
    k1 = tl.load(krow + dh[None, :] * sk_d, mask=lm, other=0.0).to(tl.float32)
    k2 = tl.load(krow + (dh[None, :] + DH) * sk_d, mask=lm, other=0.0).to(tl.float32)
    crow = cos_ptr + kp[:, None] * sc_p
    srow = sin_ptr + kp[:, None] * ss_p
    c1 = tl.load(crow + dh[None, :] * sc_r, mask=lm, other=0.0).to(tl.float32)
    c2 = tl.load(crow + (dh[None, :] + DH) * sc_r, mask=lm, other=0.0).to(tl.float32)
    s1 = tl.load(srow + dh[None, :] * ss_r, mask=lm, other=0.0).to(tl.float32)
    s2 = tl.load(srow + (dh[None, :] + DH) * ss_r, mask=lm, other=0.0).to(tl.float32)
    dtype = ko_ptr.dtype.element_ty
    orow = (b * so_b + kvh * so_h + offs.to(tl.int64) * so_n)[:, None]
    tl.store(ko_ptr + orow + dh[None, :], (k1 * c1 - k2 * s1).to(dtype), mask=sm)
    tl.store(ko_ptr + orow + DH + dh[None, :], (k2 * c2 + k1 * s2).to(dtype), mask=sm)
    if WITH_V:
        vrow = v_ptr + b * sv_b + kvh * sv_h + idx[:, None] * sv_t
        v1 = tl.load(vrow + dh[None, :] * sv_d, mask=lm, other=0.0)
        v2 = tl.load(vrow + (dh[None, :] + DH) * sv_d, mask=lm, other=0.0)
        tl.store(vo_ptr + orow + dh[None, :], v1.to(dtype), mask=sm)
        tl.store(vo_ptr + orow + DH + dh[None, :], v2.to(dtype), mask=sm)


def _gather(src, vsrc, idx, pos, cos, sin, out, vout, out_strides) -> None:
    """Launch :func:`_gather_kernel`: rows of ``src [B, heads, T, D]`` (and ``vsrc``) rotated at ``pos``
    into ``out`` (and ``vout``) at ``out_strides`` (batch, head, row). ``idx [B, n]`` the rows to take,
    or None: every row of ``src`` in order (``pos [B, T]``, or None: table row 0 for all)."""
    B, heads, T, D = src.shape
    n = T if idx is None else idx.shape[1]
    v = vsrc if vsrc is not None else src
    BN = 64 if D <= 128 else 32
    _gather_kernel[(cdiv(n, BN), B * heads)](
        src,
        v,
        cos if idx is None else idx,  # never read without idx (OWN_ROWS)
        cos if pos is None else pos,  # never read without pos (POS0)
        cos,
        sin,
        out,
        vout if vout is not None else out,
        n,
        heads,
        *src.stride(),
        *v.stride(),
        *((0, 0) if idx is None else idx.stride()),
        *((0, 0) if pos is None else pos.stride()),
        *cos.stride(),
        *sin.stride(),
        *out_strides,
        D=D,
        DH=D // 2,
        BLOCK_DH=max(16, next_pow2(D // 2)),
        BLOCK_N=BN,
        WITH_V=vsrc is not None,
        OWN_ROWS=idx is None,
        POS0=pos is None,
        num_warps=4,
    )


def gather_scope(k_cache, v_cache, gather_idx, key_pos, cos, sin) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(K', V')``, each ``[B, Hkv, N, D]`` contiguous in ``k_cache``'s dtype: the scope's keys
    rotated at ``key_pos`` and its values, zeros at padding entries. ``v_cache`` None: the keys
    alone (``V'`` None)."""
    B, Hkv, _, D = k_cache.shape
    N = gather_idx.shape[1]
    ko = torch.empty((B, Hkv, N, D), device=k_cache.device, dtype=k_cache.dtype)
    vo = torch.empty_like(ko) if v_cache is not None else None
    _gather(k_cache, v_cache, gather_idx, key_pos, cos, sin, ko, vo, (Hkv * N * D, N * D, D))
    return ko, vo


def rotate_rows(
    x: torch.Tensor, pos: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """``x [B, H, S, D]`` (any strides) rotated at ``pos`` (``[B, S]`` integer rows of ``cos``/``sin``
    ``[P, D]``; None: row 0 for all) as the gather rotates keys (rotate-half, fp32 math); returns
    ``[B, H, S, D]`` in ``x``'s dtype, a view of a ``[B, S, H, D]`` contiguous buffer (the layer's
    own layout of queries)."""
    B, H, S, D = x.shape
    out = torch.empty((B, S, H, D), device=x.device, dtype=x.dtype)
    _gather(x, None, None, pos, cos, sin, out, None, (S * H * D, D, H * D))
    return out.transpose(1, 2)


@triton.jit(do_not_specialize=["Q", "N", "ROWS", "SPLITS", "sqp_b"])
def _flash_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    kpos_ptr,
    qpos_ptr,
    cos_ptr,
    sin_ptr,
    o_ptr,
    po_ptr,
    pml_ptr,
    Q,
    N,
    G,
    ROWS,
    KEYS_PER_SPLIT,
    SPLITS,
    HKV,
    qk_scale,
    sq_b,
    sq_h,
    sq_q,
    sq_d,
    sp_b,
    sp_n,
    sqp_b,
    sqp_q,
    sc_p,
    sc_r,
    ss_p,
    ss_r,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TAIL: tl.constexpr,
    IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid = tl.program_id(1)
    split = pid % SPLITS
    bk = pid // SPLITS
    kvh = bk % HKV
    b = bk // HKV
    b64 = b.to(tl.int64)
    H = HKV * G
    dtype = q_ptr.dtype.element_ty
    DH: tl.constexpr = D // 2

    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rvalid = rows < ROWS
    qi = rows // G
    h = kvh * G + rows % G
    d = tl.arange(0, BLOCK_D)
    dv = d < D
    qm = rvalid[:, None] & dv[None, :]
    qpos = tl.load(qpos_ptr + b64 * sqp_b + qi * sqp_q, mask=rvalid, other=-1).to(tl.int32)
    qp = tl.maximum(qpos, 0).to(tl.int64)
    # q rotated as a full vector: q*cos + rotate_half(q)*sin, rotate_half(q) = [-q2 | q1]
    partner = tl.where(d < DH, d + DH, d - DH)
    sign = tl.where(d < DH, -1.0, 1.0)
    qrow = q_ptr + b64 * sq_b + h.to(tl.int64) * sq_h + qi.to(tl.int64) * sq_q
    qv = tl.load(qrow[:, None] + d[None, :] * sq_d, mask=qm, other=0.0).to(tl.float32)
    qo = tl.load(qrow[:, None] + partner[None, :] * sq_d, mask=qm, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + qp[:, None] * sc_p + d[None, :] * sc_r, mask=qm, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + qp[:, None] * ss_p + d[None, :] * ss_r, mask=qm, other=0.0).to(tl.float32)
    qr = (qv * c + sign[None, :] * qo * s).to(dtype)

    kv_off = (b64 * HKV + kvh) * N * D
    k_base = k_ptr + kv_off
    v_base = v_ptr + kv_off
    kpos_base = kpos_ptr + b64 * sp_b
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    start = split * KEYS_PER_SPLIT
    end = tl.minimum(start + KEYS_PER_SPLIT, N)
    offs_n = tl.arange(0, BLOCK_N)
    if TAIL:
        # keys before the chunk's own key of the block's first query: visible to every row
        i0 = (pid_r * BLOCK_R) // G
        i1 = tl.minimum((pid_r * BLOCK_R + BLOCK_R - 1) // G, Q - 1)
        first = N - Q
        open_end = ((first + i0) // BLOCK_N) * BLOCK_N
        causal_end = tl.minimum(end, first + i1 + 1)
        for n0 in range(start, tl.minimum(end, open_end), BLOCK_N):
            offs = n0 + offs_n
            kpos = tl.load(kpos_base + offs * sp_n)
            kt = tl.load(k_base + offs[:, None] * D + d[None, :], mask=dv[None, :], other=0.0)
            sc = dot(qr, tl.trans(kt), IEEE)
            sc = sc * qk_scale + tl.where(kpos >= 0, 0.0, float("-inf"))[None, :]
            vt = tl.load(v_base + offs[:, None] * D + d[None, :], mask=dv[None, :], other=0.0)
            m_i, l_i, acc = softmax_step(sc, m_i, l_i, acc, vt, IEEE, dtype)
        lo = tl.maximum(start, open_end)
    else:
        causal_end = end
        lo = start
    for n0 in range(lo, causal_end, BLOCK_N):
        offs = n0 + offs_n
        nv = offs < causal_end
        kpos = tl.load(kpos_base + offs * sp_n, mask=nv, other=-1)
        km = nv[:, None] & dv[None, :]
        kt = tl.load(k_base + offs[:, None] * D + d[None, :], mask=km, other=0.0)
        sc = dot(qr, tl.trans(kt), IEEE)
        if TAIL:  # key first + j is query j's own: query i sees it iff j <= i
            vis = (kpos[None, :] >= 0) & ((offs[None, :] - (N - Q)) <= qi[:, None])
        else:
            vis = (kpos[None, :] >= 0) & (kpos[None, :] <= qpos[:, None])
        sc = tl.where(vis, sc * qk_scale, float("-inf"))
        vt = tl.load(v_base + offs[:, None] * D + d[None, :], mask=km, other=0.0)
        m_i, l_i, acc = softmax_step(sc, m_i, l_i, acc, vt, IEEE, dtype)

    row_id = (b64 * H + h) * Q + qi  # [BLOCK_R]: (b, h, i) flattened
    if SPLIT:
        prow = row_id * SPLITS + split
        tl.store(po_ptr + prow[:, None] * D + d[None, :], acc, mask=qm)
        tl.store(pml_ptr + prow * 2, m_i, mask=rvalid)
        tl.store(pml_ptr + prow * 2 + 1, l_i, mask=rvalid)
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        orow = ((b64 * Q + qi) * H + h) * D  # output [B, Q, H, D] contiguous
        tl.store(o_ptr + orow[:, None] + d[None, :], out.to(dtype), mask=qm)


def flash_scope_attention(
    q, k_cache, v_cache, gather_idx, key_pos, q_pos, cos, sin, qk_scale, cfg, chunk_tail
):
    """The prefill path of :func:`~.triton_attention.scope_attention_triton` (arguments checked
    there; ``qk_scale`` already in log2 units): gather, then flash attention over the copies."""
    B, H, Q, D = q.shape
    Hkv = k_cache.shape[1]
    N = gather_idx.shape[1]
    g = H // Hkv
    rows = g * Q
    BLOCK_R, BLOCK_N = cfg["BLOCK_R"], cfg["BLOCK_N"]
    n_rb = cdiv(rows, BLOCK_R)
    tiles = cdiv(N, BLOCK_N)
    splits = cfg.get("splits")
    if splits is None:
        splits = max(1, min(cdiv(cfg["target"], n_rb * B * Hkv), cdiv(tiles, cfg["min_tiles"])))
    tiles_per_split = cdiv(tiles, splits)
    splits = cdiv(tiles, tiles_per_split)
    ko, vo = gather_scope(k_cache, v_cache, gather_idx, key_pos, cos, sin)
    out = torch.empty((B, Q, H, D), device=q.device, dtype=q.dtype)
    split = splits > 1
    if split:
        po = torch.empty((B, H, Q, splits, D), device=q.device, dtype=torch.float32)
        pml = torch.empty((B, H, Q, splits, 2), device=q.device, dtype=torch.float32)
    else:
        po = pml = out
    _flash_kernel[(n_rb, B * Hkv * splits)](
        q,
        ko,
        vo,
        key_pos,
        q_pos,
        cos,
        sin,
        out,
        po,
        pml,
        Q,
        N,
        g,
        rows,
        tiles_per_split * BLOCK_N,
        splits,
        Hkv,
        qk_scale,
        *q.stride(),
        *key_pos.stride(),
        *q_pos.stride(),
        *cos.stride(),
        *sin.stride(),
        D=D,
        BLOCK_D=max(16, next_pow2(D)),
        BLOCK_R=BLOCK_R,
        BLOCK_N=BLOCK_N,
        TAIL=bool(chunk_tail),
        IEEE=q.dtype == torch.float32,
        SPLIT=split,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    if split:
        combine(po, pml, out)
    return out
