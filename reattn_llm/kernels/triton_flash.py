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

from ._triton_utils import LOG2E, cdiv, next_pow2, tiles_per_split
from .cudnn_prefix import prefix_attention
from .triton_gather import gather_scope
from .triton_online_softmax import combine, dot, softmax_step

__all__ = ["flash_scope_attention"]

_LOG2E = tl.constexpr(LOG2E)  # a jit function reads globals only as constexpr


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
    io_ptr,
    il_ptr,
    ip_ptr,
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
    sio_b,
    sio_h,
    sio_r,
    sil_b,
    sil_h,
    sil_r,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TAIL: tl.constexpr,
    IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
    INIT: tl.constexpr,
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
    if INIT:
        # the keys before the chunk were attended elsewhere (cuDNN): start from their normalised
        # output and log-sum-exp, read at that call's row j * Q + i (heads of the group, then queries);
        # its pad zero keys (score 0, value 0) each added 1 to e^lse: the sum relative to e^lse is 1 - pad / e^lse
        prow = ((rows % G) * Q + qi).to(tl.int64)
        ib = b64 * sio_b + kvh.to(tl.int64) * sio_h + prow * sio_r
        acc = tl.load(io_ptr + ib[:, None] + d[None, :], mask=qm, other=0.0).to(tl.float32)
        lse = tl.load(il_ptr + b64 * sil_b + kvh.to(tl.int64) * sil_h + prow * sil_r, mask=rvalid, other=0.0)
        m_i = lse * _LOG2E  # natural log -> the kernel's log2 units
        pad = tl.load(ip_ptr + b64)
        real = tl.maximum(1.0 - pad * tl.exp2(-m_i), 0.0)  # (pad 0: 1 even where exp2 overflows)
        l_i = tl.where(rvalid, tl.where(pad > 0, real, 1.0), 0.0)
        base = N - Q  # only the chunk's own keys are left
    else:
        m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_R], tl.float32)
        acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
        base = 0
    start = base + split * KEYS_PER_SPLIT
    end = tl.minimum(start + KEYS_PER_SPLIT, N)
    offs_n = tl.arange(0, BLOCK_N)
    if TAIL:
        # keys before the chunk's own key of the block's first query: visible to every row
        i0 = (pid_r * BLOCK_R) // G
        i1 = tl.minimum((pid_r * BLOCK_R + BLOCK_R - 1) // G, Q - 1)
        first = N - Q
        open_end = base + ((first + i0 - base) // BLOCK_N) * BLOCK_N
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
    there; ``qk_scale`` already in log2 units): gather, then flash attention over the copies, the
    prefix first through cuDNN where ``cfg["PREFIX"]`` asks for it (:mod:`.cudnn_prefix`)."""
    B, H, Q, D = q.shape
    Hkv = k_cache.shape[1]
    N = gather_idx.shape[1]
    g = H // Hkv
    rows = g * Q
    BLOCK_R, BLOCK_N = cfg["BLOCK_R"], cfg["BLOCK_N"]
    n_rb = cdiv(rows, BLOCK_R)
    ko, vo = gather_scope(k_cache, v_cache, gather_idx, key_pos, cos, sin)
    init = None
    if cfg.get("PREFIX", "triton") != "triton" and chunk_tail and N > Q:
        init = prefix_attention(cfg["PREFIX"], q, ko, vo, key_pos, q_pos, cos, sin, qk_scale / LOG2E)
    tiles = cdiv(Q if init is not None else N, BLOCK_N)
    # split per batch entry: a batch of chunks splits (and rounds) as each chunk alone; the own keys
    # after cuDNN's prefix are never split
    per_split = tiles if init is not None else tiles_per_split(tiles, n_rb * Hkv, cfg)
    splits = cdiv(tiles, per_split)
    out = torch.empty((B, Q, H, D), device=q.device, dtype=q.dtype)
    split = splits > 1
    if split:
        po = torch.empty((B, H, Q, splits, D), device=q.device, dtype=torch.float32)
        pml = torch.empty((B, H, Q, splits, 2), device=q.device, dtype=torch.float32)
    else:
        po = pml = out
    io, il, ip = init if init is not None else (out, out, out)
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
        io,
        il,
        ip,
        Q,
        N,
        g,
        rows,
        per_split * BLOCK_N,
        splits,
        Hkv,
        qk_scale,
        *q.stride(),
        *key_pos.stride(),
        *q_pos.stride(),
        *cos.stride(),
        *sin.stride(),
        *(io.stride()[:2] + io.stride()[-2:-1] if init is not None else (0, 0, 0)),
        *(il.stride() if init is not None else (0, 0, 0)),
        D=D,
        BLOCK_D=max(16, next_pow2(D)),
        BLOCK_R=BLOCK_R,
        BLOCK_N=BLOCK_N,
        TAIL=bool(chunk_tail),
        IEEE=q.dtype == torch.float32,
        SPLIT=split,
        INIT=init is not None,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    if split:
        combine(po, pml, out)
    return out
