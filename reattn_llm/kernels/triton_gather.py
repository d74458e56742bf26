"""The scope's rows copied out of the cache, rotated (Triton; twins: :func:`~.torch_ops.gather_kv`
with :func:`~.torch_ops.apply_rope`, and :func:`~.torch_ops.rotate_one_torch`).

``_gather_kernel``: ``K'[b, kv, n] = rope(k_cache[b, kv, idx[b, n]], key_pos[b, n])`` and
``V'[b, kv, n] = v_cache[b, kv, idx[b, n]]``, written contiguously at the caller's strides; padding
entries (``key_pos < 0``) are written as zeros, so whatever their cache row holds (NaN, for a row
not written yet) is never read again. About ``4·N·D`` bytes per KV head. The same kernel rotates a
layer's queries in one launch (:func:`rotate_rows`: every row in order, at the queries' positions
or at one position for all), for the flash path's prefix and for ``scoring="expected"``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import cdiv, next_pow2

__all__ = ["gather_scope", "rotate_rows"]


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
    x: torch.Tensor,
    pos: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads_first: bool = False,
) -> torch.Tensor:
    """``x [B, H, S, D]`` (any strides) rotated at ``pos`` (``[B, S]`` integer rows of ``cos``/``sin``
    ``[P, D]``; None: row 0 for all) as the gather rotates keys (rotate-half, fp32 math); returns
    ``[B, H, S, D]`` in ``x``'s dtype, a view of a ``[B, S, H, D]`` contiguous buffer (the layer's
    own layout of queries), or with ``heads_first`` itself contiguous."""
    B, H, S, D = x.shape
    if cos.shape[-1] != D or sin.shape[-1] != D:
        raise ValueError(
            f"rotate_rows: cos/sin must span the head dim {D}, got {cos.shape[-1]} and {sin.shape[-1]}; "
            "rotate a partial rotary width with the torch twin"
        )
    if heads_first:
        out = torch.empty((B, H, S, D), device=x.device, dtype=x.dtype)
        _gather(x, None, None, pos, cos, sin, out, None, (H * S * D, S * D, D))
        return out
    out = torch.empty((B, S, H, D), device=x.device, dtype=x.dtype)
    _gather(x, None, None, pos, cos, sin, out, None, (S * H * D, D, H * D))
    return out.transpose(1, 2)
