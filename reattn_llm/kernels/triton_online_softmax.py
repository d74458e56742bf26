"""Online-softmax pieces shared by the scope-attention kernels (:mod:`.triton_attention`,
:mod:`.triton_flash`): one key tile folded into the running (max, sum, accumulator), and the merge
of a row's partial results when its keys were split over programs (flash-decoding)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import next_pow2

__all__ = ["combine", "dot", "softmax_step"]


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """``a @ b`` with fp32 accumulation; IEEE fp32 products for fp32 inputs."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def softmax_step(s, m_i, l_i, acc, v, IEEE: tl.constexpr, dtype: tl.constexpr):
    """Fold one tile's masked, scaled (log2) scores ``s [R, BN]`` and values ``v [BN, D]`` in."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot(p.to(dtype), v, IEEE)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["Q", "SPLITS"])
def _combine_kernel(
    po_ptr,
    pml_ptr,
    o_ptr,
    Q,
    H,
    SPLITS,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # (b * H + h) * Q + i
    b = row // (H * Q)
    h = (row // Q) % H
    qi = row % Q
    sidx = tl.arange(0, SP)
    sv = sidx < SPLITS
    m = tl.load(pml_ptr + (row * SPLITS + sidx) * 2, mask=sv, other=float("-inf"))
    lsum = tl.load(pml_ptr + (row * SPLITS + sidx) * 2 + 1, mask=sv, other=0.0)
    mmax = tl.max(m, axis=0)
    mu = tl.where(mmax == float("-inf"), 0.0, mmax)
    w = tl.exp2(m - mu)
    L = tl.sum(w * lsum, axis=0)
    d = tl.arange(0, BLOCK_D)
    dv = d < D
    acc = tl.load(
        po_ptr + (row * SPLITS + sidx)[:, None] * D + d[None, :], mask=sv[:, None] & dv[None, :], other=0.0
    )
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(L == 0.0, 1.0, L)
    tl.store(o_ptr + ((b * Q + qi) * H + h) * D + d, out.to(o_ptr.dtype.element_ty), mask=dv)


def combine(po: torch.Tensor, pml: torch.Tensor, out: torch.Tensor) -> None:
    """Merge split partial results into ``out [B, Q, H, D]``: ``po [B, H, Q, S, D]`` un-normalised
    fp32 accumulators, ``pml [B, H, Q, S, 2]`` their (log2 max, sum) pairs."""
    B, H, Q, S, D = po.shape
    _combine_kernel[(B * H * Q,)](
        po,
        pml,
        out,
        Q,
        H,
        S,
        D=D,
        BLOCK_D=max(16, next_pow2(D)),
        SP=max(64, next_pow2(S)),  # a bucket: one compile for split counts up to 64
        num_warps=4 if D > 64 else 2,
    )
