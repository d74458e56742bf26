"""Bounded-scope attention in Triton (twin: :func:`scope_attention_torch`).

Flash-attention forward over the gathered scope, indexing the KV cache in place. One program per
(row block, batch, KV head, key split); a row is one (query, query head) pair of the KV head's
GQA group, laid out query-major (row = i * g + j), so each K/V tile is loaded once for the whole
group. Queries are rotated at ``q_pos`` once on entry. Per key tile the program

* loads ``gather_idx`` / ``key_pos`` of the tile and the K rows ``k_cache[b, kv, idx]`` by
  pointer arithmetic, as two halves (rotate-half RoPE needs no permuted second load), and
  rotates them at their scope positions with the ``cos``/``sin`` rows of ``key_pos`` (fp32 math,
  rounded to the input dtype for the tensor cores),
* scores ``q1.k1 + q2.k2`` (two half-width dots), masks ``0 <= key_pos <= q_pos`` (causal,
  bottom-right for the chunk), runs the online softmax in exp2 and accumulates ``P @ V`` with V
  gathered from the cache by index.

Prefill chunks (more than 64 rows) take the flash path of :mod:`.triton_flash` by default: the
scope's K (rotated) and V copied once into contiguous buffers, full-width dots, and with
``chunk_tail`` no masking work outside the chunk's own keys. This module's kernel below stays for
decode and short chunks, and as the prefill baseline of the benchmarks (``FLASH=False``):

Long chunks (prefill, ``PREROT``): every row-block program reads every scope key, so
re-rotating K in each of them costs more (cos/sin traffic, RoPE math) than rotating once:
:func:`~.triton_gather.gather_scope` gathers + rotates the scope's keys into an ``[B, Hkv, N, D]``
buffer first (N * D elements; 21 us of a 511 us call on the H100 at N 8192, about 0.7% of a 128K prefill),
then the programs read that buffer; V is still read from the cache in place.
Short query counts (decode: one query per head) stay fully fused (nothing is copied), split the
scope over programs (flash-decoding) and a second tiny kernel combines the partial results.
Optionally (``CAUSAL_SKIP``) a tile whose smallest valid position is beyond the row block's
largest query position is skipped without loading K/V (it defeats software pipelining, so it is
off by default).

Partial rotary tables (``cos.shape[-1] < D``, e.g. Phi-3) fall back to the torch twin.
Rows that see no key at all return zeros (the twin returns NaN there); the core never builds
such rows, since the local window always holds the current chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import LOG2E, cdiv, check_device, check_float, next_pow2, sm_count, tiles_per_split
from .torch_ops import scope_attention_torch
from .triton_flash import flash_scope_attention
from .triton_gather import gather_scope
from .triton_online_softmax import combine, softmax_step

__all__ = ["scope_attention_triton"]


@triton.jit(do_not_specialize=["Q", "ROWS", "SPLITS", "sqp_b"])
def _scope_attn_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    idx_ptr,
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
    sqp_b,
    sqp_q,
    sc_p,
    sc_r,
    ss_p,
    ss_r,
    D: tl.constexpr,
    DH: tl.constexpr,
    BLOCK_DH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL_SKIP: tl.constexpr,
    IEEE: tl.constexpr,
    SPLIT: tl.constexpr,
    PREROT: tl.constexpr,
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

    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rvalid = rows < ROWS
    qi = rows // G
    h = kvh * G + rows % G
    dh = tl.arange(0, BLOCK_DH)
    dhv = dh < DH
    qpos = tl.load(qpos_ptr + b64 * sqp_b + qi * sqp_q, mask=rvalid, other=-1).to(tl.int32)
    qp = tl.maximum(qpos, 0)
    qrow = q_ptr + b64 * sq_b + h.to(tl.int64) * sq_h + qi.to(tl.int64) * sq_q
    qm = rvalid[:, None] & dhv[None, :]
    q1 = tl.load(qrow[:, None] + dh[None, :] * sq_d, mask=qm, other=0.0).to(tl.float32)
    q2 = tl.load(qrow[:, None] + (dh[None, :] + DH) * sq_d, mask=qm, other=0.0).to(tl.float32)
    crow = cos_ptr + qp.to(tl.int64)[:, None] * sc_p
    srow = sin_ptr + qp.to(tl.int64)[:, None] * ss_p
    c1 = tl.load(crow + dh[None, :] * sc_r, mask=qm, other=0.0).to(tl.float32)
    c2 = tl.load(crow + (dh[None, :] + DH) * sc_r, mask=qm, other=0.0).to(tl.float32)
    s1 = tl.load(srow + dh[None, :] * ss_r, mask=qm, other=0.0).to(tl.float32)
    s2 = tl.load(srow + (dh[None, :] + DH) * ss_r, mask=qm, other=0.0).to(tl.float32)
    q1r = (q1 * c1 - q2 * s1).to(dtype)
    q2r = (q2 * c2 + q1 * s2).to(dtype)
    qmax = tl.max(tl.where(rvalid, qpos, -1), axis=0)

    d = tl.arange(0, BLOCK_D)
    dv = d < D
    k_base = k_ptr + b64 * sk_b + kvh.to(tl.int64) * sk_h
    v_base = v_ptr + b64 * sv_b + kvh.to(tl.int64) * sv_h
    idx_base = idx_ptr + b64 * si_b
    kpos_base = kpos_ptr + b64 * sp_b

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    start = split * KEYS_PER_SPLIT
    end = tl.minimum(start + KEYS_PER_SPLIT, N)
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        offs = n0 + offs_n
        nv = offs < end
        kpos = tl.load(kpos_base + offs * sp_n, mask=nv, other=-1).to(tl.int32)
        if CAUSAL_SKIP:
            kmin = tl.min(tl.where(kpos >= 0, kpos, 2147483647), axis=0)
            if kmin <= qmax:
                m_i, l_i, acc = _attend_tile(
                    q1r,
                    q2r,
                    qpos,
                    m_i,
                    l_i,
                    acc,
                    kpos,
                    offs,
                    nv,
                    idx_base,
                    si_n,
                    k_base,
                    sk_t,
                    sk_d,
                    v_base,
                    sv_t,
                    sv_d,
                    cos_ptr,
                    sc_p,
                    sc_r,
                    sin_ptr,
                    ss_p,
                    ss_r,
                    qk_scale,
                    dh,
                    dhv,
                    d,
                    dv,
                    DH,
                    IEEE,
                    dtype,
                    PREROT,
                )
        else:
            m_i, l_i, acc = _attend_tile(
                q1r,
                q2r,
                qpos,
                m_i,
                l_i,
                acc,
                kpos,
                offs,
                nv,
                idx_base,
                si_n,
                k_base,
                sk_t,
                sk_d,
                v_base,
                sv_t,
                sv_d,
                cos_ptr,
                sc_p,
                sc_r,
                sin_ptr,
                ss_p,
                ss_r,
                qk_scale,
                dh,
                dhv,
                d,
                dv,
                DH,
                IEEE,
                dtype,
                PREROT,
            )

    row_id = (b64 * H + h) * Q + qi  # [BLOCK_R]: (b, h, i) flattened
    if SPLIT:
        # partial results: acc [B, H, Q, SPLITS, D] (unnormalised), (m, l) [B, H, Q, SPLITS, 2]
        prow = row_id * SPLITS + split
        tl.store(po_ptr + prow[:, None] * D + d[None, :], acc, mask=rvalid[:, None] & dv[None, :])
        tl.store(pml_ptr + prow * 2, m_i, mask=rvalid)
        tl.store(pml_ptr + prow * 2 + 1, l_i, mask=rvalid)
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        orow = ((b64 * Q + qi) * H + h) * D  # output [B, Q, H, D] contiguous
        tl.store(o_ptr + orow[:, None] + d[None, :], out.to(dtype), mask=rvalid[:, None] & dv[None, :])


@triton.jit
def _attend_tile(
    q1r,
    q2r,
    qpos,
    m_i,
    l_i,
    acc,
    kpos,
    offs,
    nv,
    idx_base,
    si_n,
    k_base,
    sk_t,
    sk_d,
    v_base,
    sv_t,
    sv_d,
    cos_ptr,
    sc_p,
    sc_r,
    sin_ptr,
    ss_p,
    ss_r,
    qk_scale,
    dh,
    dhv,
    d,
    dv,
    DH: tl.constexpr,
    IEEE: tl.constexpr,
    dtype: tl.constexpr,
    PREROT: tl.constexpr,
):
    """One key tile of the online softmax: gather, rotate, score, mask, accumulate."""
    idx = tl.load(idx_base + offs * si_n, mask=nv, other=0).to(tl.int64)
    km = nv[:, None] & dhv[None, :]
    if PREROT:  # keys already gathered + rotated into a contiguous scope buffer (row = scope index)
        krow = k_base + offs.to(tl.int64)[:, None] * sk_t
        k1r = tl.load(krow + dh[None, :] * sk_d, mask=km, other=0.0)
        k2r = tl.load(krow + (dh[None, :] + DH) * sk_d, mask=km, other=0.0)
    else:
        kp = tl.maximum(kpos, 0).to(tl.int64)
        krow = k_base + idx[:, None] * sk_t
        k1 = tl.load(krow + dh[None, :] * sk_d, mask=km, other=0.0).to(tl.float32)
        k2 = tl.load(krow + (dh[None, :] + DH) * sk_d, mask=km, other=0.0).to(tl.float32)
        crow = cos_ptr + kp[:, None] * sc_p
        srow = sin_ptr + kp[:, None] * ss_p
        c1 = tl.load(crow + dh[None, :] * sc_r, mask=km, other=0.0).to(tl.float32)
        c2 = tl.load(crow + (dh[None, :] + DH) * sc_r, mask=km, other=0.0).to(tl.float32)
        s1 = tl.load(srow + dh[None, :] * ss_r, mask=km, other=0.0).to(tl.float32)
        s2 = tl.load(srow + (dh[None, :] + DH) * ss_r, mask=km, other=0.0).to(tl.float32)
        k1r = (k1 * c1 - k2 * s1).to(dtype)
        k2r = (k2 * c2 + k1 * s2).to(dtype)
    if IEEE:
        s = tl.dot(q1r, tl.trans(k1r), input_precision="ieee")
        s = tl.dot(q2r, tl.trans(k2r), s, input_precision="ieee")
    else:
        s = tl.dot(q1r, tl.trans(k1r))
        s = tl.dot(q2r, tl.trans(k2r), s)
    vis = (kpos[None, :] >= 0) & (kpos[None, :] <= qpos[:, None])
    s = tl.where(vis, s * qk_scale, float("-inf"))
    # padding rows (kpos -1) are never read for V: whatever they hold (NaN) times a weight of 0 stays out
    vm = (nv & (kpos >= 0))[:, None] & dv[None, :]
    v = tl.load(v_base + idx[:, None] * sv_t + d[None, :] * sv_d, mask=vm, other=0.0)
    return softmax_step(s, m_i, l_i, acc, v, IEEE, dtype)


# Tuning hook for benchmarks: ``{"decode": {...}, "prefill": {...}}`` merged into the picked config.
CONFIG_OVERRIDES: dict[str, dict] = {"decode": {}, "prefill": {}}


def _pick_config(rows: int, N: int, D: int, n_sm: int) -> dict:
    bd = next_pow2(D)
    if rows <= 64:  # decode / tiny chunks: split the scope (flash-decoding)
        cfg = dict(
            BLOCK_R=max(16, next_pow2(rows)),
            BLOCK_N=64 if bd <= 128 else 32,
            CAUSAL_SKIP=False,
            num_warps=4,
            num_stages=3,
            target=2 * n_sm,
            min_tiles=2,
        )
        cfg.update(CONFIG_OVERRIDES["decode"])
        return cfg
    # prefill: the flash path (triton_flash.py; H200 sweep, 1024 queries x 8192 keys, 32/8 heads, d 128:
    # R64 N64 w4 s3 391 us, R128 N64 w8 s3 422, R256 N64 w8 449, R128 N128 w8 527). FLASH=False runs
    # this module's kernel (PREROT: its H100 sweep's best, 520 us on the H200), the benchmarks' baseline
    if bd <= 128:
        cfg = dict(BLOCK_R=64, BLOCK_N=64, num_warps=4, num_stages=3)
    else:
        cfg = dict(BLOCK_R=64, BLOCK_N=32, num_warps=8, num_stages=2)
    # PREFIX "cudnn": a chunk's keys before its own through cuDNN where it runs (cudnn_prefix.py; H200,
    # run 17: prefill 32K 1.622 s against 1.676, 128K 9.799 against 9.884), else all in the flash kernel
    cfg.update(FLASH=True, CAUSAL_SKIP=False, PREROT=True, PREFIX="cudnn", target=n_sm, min_tiles=16)
    if bd <= 128:
        cfg.update(CONFIG_OVERRIDES["prefill"])
    return cfg


def _launch(
    q, k_cache, v_cache, gather_idx, key_pos, q_pos, cos, sin, scaling, cfg, chunk_tail
) -> torch.Tensor:
    if cfg.get("FLASH"):
        qk = float(scaling) * LOG2E
        return flash_scope_attention(
            q, k_cache, v_cache, gather_idx, key_pos, q_pos, cos, sin, qk, cfg, chunk_tail
        )
    B, H, Q, D = q.shape
    Hkv = k_cache.shape[1]
    N = gather_idx.shape[1]
    g = H // Hkv
    rows = g * Q
    BLOCK_R, BLOCK_N = cfg["BLOCK_R"], cfg["BLOCK_N"]
    n_rb = cdiv(rows, BLOCK_R)
    tiles = cdiv(N, BLOCK_N)
    per_split = tiles_per_split(tiles, n_rb * B * Hkv, cfg)
    splits = cdiv(tiles, per_split)
    out = torch.empty((B, Q, H, D), device=q.device, dtype=q.dtype)
    split = splits > 1
    if split:
        po = torch.empty((B, H, Q, splits, D), device=q.device, dtype=torch.float32)
        pml = torch.empty((B, H, Q, splits, 2), device=q.device, dtype=torch.float32)
    else:
        po = pml = out
    DH = D // 2
    prerot = bool(cfg.get("PREROT", False))
    # PREROT: gather + rotate the scope's keys once per call (N*D elements, a few % of the
    # attention's time), so the row-block programs, which each read every key, skip the RoPE math
    # and its cos/sin traffic; values are still read from the cache in place.
    k_src = gather_scope(k_cache, None, gather_idx, key_pos, cos, sin)[0] if prerot else k_cache
    _scope_attn_kernel[(n_rb, B * Hkv * splits)](
        q,
        k_src,
        v_cache,
        gather_idx,
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
        per_split * BLOCK_N,
        splits,
        Hkv,
        float(scaling) * LOG2E,
        *q.stride(),
        *k_src.stride(),
        *v_cache.stride(),
        *gather_idx.stride(),
        *key_pos.stride(),
        *q_pos.stride(),
        *cos.stride(),
        *sin.stride(),
        D=D,
        DH=DH,
        BLOCK_DH=max(16, next_pow2(DH)),
        BLOCK_D=max(16, next_pow2(D)),
        BLOCK_R=BLOCK_R,
        BLOCK_N=BLOCK_N,
        CAUSAL_SKIP=cfg["CAUSAL_SKIP"],
        IEEE=q.dtype == torch.float32,
        SPLIT=split,
        PREROT=prerot,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    if split:
        combine(po, pml, out)
    return out


def scope_attention_triton(
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
    *,
    _config: dict | None = None,
) -> torch.Tensor:
    """Attention of un-rotated queries over a gathered scope of the cache (Triton); same contract
    as :func:`scope_attention_torch`.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries (any strides).
        k_cache, v_cache: ``[B, Hkv, T, D]`` un-rotated keys / values (views of the cache buffers).
        gather_idx: ``[B, N]`` integer rows of the cache, in scope order (padding: any row in range,
            whose content, NaN included, never reaches the output).
        key_pos: ``[B, N]`` integer scope position of each gathered key, -1 for padding.
        q_pos: ``[B, Q]`` integer position of each query.
        cos, sin: ``[P, R]`` RoPE tables (rotate-half layout); ``R < D`` falls back to the twin.
        scaling: softmax scale.
        chunk_tail: a promise about the scope that lets prefill skip masking work
            (:mod:`.triton_flash`): its last ``Q`` keys are the queries' own, in query order, and
            every earlier key is visible to every query unless it is padding.

    Returns:
        ``[B, Q, H, D]`` in ``q``'s dtype; query i sees key j iff ``0 <= key_pos[j] <= q_pos[i]``.
    """
    name = "scope_attention_triton"
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.dim() != 4:
        raise ValueError(f"{name}: q, k_cache, v_cache must be 4-D")
    B, H, Q, D = q.shape
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(
            f"{name}: k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)} "
            f"do not match q {tuple(q.shape)}"
        )
    Hkv = k_cache.shape[1]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{name}: query heads {H} not a multiple of KV heads {Hkv}")
    if gather_idx.dim() != 2 or gather_idx.shape[0] != B or key_pos.shape != gather_idx.shape:
        raise ValueError(
            f"{name}: gather_idx {tuple(gather_idx.shape)} and key_pos {tuple(key_pos.shape)} must be [B, N]"
        )
    if q_pos.shape != (B, Q):
        raise ValueError(f"{name}: q_pos {tuple(q_pos.shape)} must be [B, Q] = {(B, Q)}")
    if cos.dim() != 2 or cos.shape != sin.shape:
        raise ValueError(f"{name}: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must be [P, R]")
    for what, t in (("gather_idx", gather_idx), ("key_pos", key_pos), ("q_pos", q_pos)):
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name}: {what} must be int64 or int32, got {t.dtype}")
    check_float(name, "q", q)
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            f"{name}: q, k_cache, v_cache dtypes differ: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    check_float(name, "cos", cos)
    check_device(name, q, k_cache, v_cache, gather_idx, key_pos, q_pos, cos, sin)
    if D % 2 != 0 or not 2 <= D <= 256:
        raise ValueError(f"{name}: head dim {D} must be even and <= 256")
    if cos.shape[1] != D:
        if cos.shape[1] > D:
            raise ValueError(f"{name}: rotary width {cos.shape[1]} > head dim {D}")
        # partial rotary (Phi-3): the torch twin handles it
        return scope_attention_torch(
            q, k_cache, v_cache, gather_idx, key_pos, q_pos, cos, sin, scaling, chunk_tail
        )
    N = gather_idx.shape[1]
    if B * H * Q == 0:
        return torch.empty((B, Q, H, D), device=q.device, dtype=q.dtype)
    if N == 0:
        return torch.zeros((B, Q, H, D), device=q.device, dtype=q.dtype)
    cfg = _pick_config((H // Hkv) * Q, N, D, sm_count(q.device))
    if q.dtype == torch.float32:  # IEEE fp32 dots run on the FMA units: small tiles, no spills
        cfg.update(
            BLOCK_R=min(cfg["BLOCK_R"], 32), BLOCK_N=min(cfg["BLOCK_N"], 32), num_warps=4, num_stages=1
        )
    if _config:
        cfg.update(_config)
    if chunk_tail and N < Q:
        raise ValueError(f"{name}: chunk_tail promises the last Q={Q} of N={N} keys are the queries' own")
    return _launch(q, k_cache, v_cache, gather_idx, key_pos, q_pos, cos, sin, scaling, cfg, chunk_tail)
