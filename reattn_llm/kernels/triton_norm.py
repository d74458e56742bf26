"""The model's RMSNorm in one launch (Triton; twin: :func:`~.torch_ops.rms_norm_torch`).

transformers' RMSNorm runs as about eight kernels (a cast to fp32, ``pow``, ``mean``, ``+ eps``,
``rsqrt``, a product, a cast back, the weight), each a pass over the hidden states; a decoder layer
has two, so a decode step of a 32-layer model launches some 500 of them and a prefill forward of
8,192 tokens moves about 2 GB a layer through them. ``_rms_norm_kernel`` reads each row once and
writes it once, with the stock arithmetic: the mean of squares in fp32, then either Llama's order
(``weight * (x * r).to(dtype)``, the cast before the weight) or Gemma's (``(x * r) * (offset +
weight)`` in fp32, then the cast). Only the sum's order differs from torch's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import MAX_NORM_WIDTH, cdiv, check_device, next_pow2

__all__ = ["MAX_NORM_WIDTH", "rms_norm_triton"]


@triton.jit(do_not_specialize=["M"])
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    o_ptr,
    M,
    N,
    sx,
    so,
    eps,
    offset,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAST_FIRST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cm = cols < N
    m = (rows < M)[:, None] & cm[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=m, other=0.0).to(tl.float32)
    var = tl.sum(x * x, axis=1) / N
    y = x * (1.0 / tl.sqrt(var + eps))[:, None]
    w = tl.load(w_ptr + cols, mask=cm, other=0.0).to(tl.float32)
    if CAST_FIRST:  # Llama: the normalised row cast to the input's dtype, then times the weight
        out = w[None, :] * y.to(x_ptr.dtype.element_ty).to(tl.float32)
    else:  # Gemma: times (offset + weight) in fp32, then the cast
        out = y * (offset + w)[None, :]
    tl.store(o_ptr + r64 * so + cols[None, :], out.to(o_ptr.dtype.element_ty), mask=m)


def rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0, cast_first: bool = True
) -> torch.Tensor:
    """RMSNorm of ``x [..., N]`` over its last dim (Triton; see :func:`~.torch_ops.rms_norm_torch`).

    Args:
        x: ``[..., N]`` fp16 / bf16 / fp32, last dim contiguous, ``N <= MAX_NORM_WIDTH``.
        weight: ``[N]``.
        eps: added to the mean of squares.
        offset: added to the weight (Gemma's ``1 + weight``); only with ``cast_first=False``.
        cast_first: Llama's order (``weight * normed.to(x.dtype)``, the result in the two dtypes'
            promotion) or Gemma's (``normed * (offset + weight)`` in fp32, the result in ``x``'s dtype).

    Returns:
        ``[..., N]``, a new contiguous tensor.
    """
    check_device("rms_norm", x, weight)
    n = x.shape[-1]
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"rms_norm: x must be fp16, bf16 or fp32, got {x.dtype}")
    if weight.shape != (n,):
        raise ValueError(f"rms_norm: weight must be [{n}] (x's last dim), got {list(weight.shape)}")
    if not 0 < n <= MAX_NORM_WIDTH:
        raise ValueError(f"rms_norm: rows of 1..{MAX_NORM_WIDTH} elements, got {n}; use the torch twin")
    if cast_first and offset:
        raise ValueError("rms_norm: offset applies with cast_first=False (Gemma's order) only")
    x2 = x.reshape(-1, n)
    if n > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    weight = weight.contiguous()  # the kernel reads it densely (an expanded weight would read past it)
    m = x2.shape[0]
    dtype = torch.promote_types(x.dtype, weight.dtype) if cast_first else x.dtype
    out = torch.empty(m, n, device=x.device, dtype=dtype)
    if m == 0:
        return out.reshape(x.shape)
    bn = next_pow2(n)
    bm = max(1, min(16, 2048 // bn, next_pow2(m)))
    elems = bm * bn
    warps = 4 if elems <= 2048 else 8 if elems <= 8192 else 16
    _rms_norm_kernel[(cdiv(m, bm),)](
        x2,
        weight,
        out,
        m,
        n,
        x2.stride(0),
        out.stride(0),
        float(eps),
        float(offset),
        BLOCK_M=bm,
        BLOCK_N=bn,
        CAST_FIRST=cast_first,
        num_warps=warps,
    )
    return out.reshape(x.shape)
