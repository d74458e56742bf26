"""A static decode step's scope in one launch (Triton; twin: :func:`~.torch_select.mask_unwritten_torch`).

A decode step replayed from a CUDA graph (:mod:`reattn_llm.runtime.graphs`) keeps its bucket's cache
view, which reaches past the rows written so far: its scope's unwritten rows become padding and the
positions close up over the rest. The twin takes about fifteen small torch ops a layer (comparisons,
a cumulative sum of two kernels, ``where``, fills), 1-3 us each from a graph; here one program per
batch row scans the scope in one tile (a longer one in blocks, a running count carrying each
block's prefix sum on).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import check_device

__all__ = ["mask_unwritten_triton"]


@triton.jit(do_not_specialize=["N", "Q"])
def _mask_unwritten_kernel(
    g_ptr, k_ptr, total_ptr, go_ptr, ko_ptr, qo_ptr, max_ptr, N, Q, BLOCK: tl.constexpr, MAX: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)
    total = tl.load(total_ptr)
    count = tl.sum(tl.zeros((BLOCK,), tl.int32), axis=0)  # kept rows so far
    for n0 in range(0, N, BLOCK):  # one pass for a decode scope (BLOCK covers it): no serial chain
        n = n0 + tl.arange(0, BLOCK)
        m = n < N
        g = tl.load(g_ptr + b * N + n, mask=m, other=0)
        k = tl.load(k_ptr + b * N + n, mask=m, other=-1)
        keep = ((k >= 0) & (g < total) & m).to(tl.int32)
        pos = count + tl.cumsum(keep, axis=0) - 1
        tl.store(ko_ptr + b * N + n, tl.where(keep != 0, pos, -1).to(ko_ptr.dtype.element_ty), mask=m)
        tl.store(go_ptr + b * N + n, tl.where(keep != 0, g, 0).to(go_ptr.dtype.element_ty), mask=m)
        count += tl.sum(keep, axis=0)
    for q0 in range(0, Q, BLOCK):
        j = q0 + tl.arange(0, BLOCK)
        tl.store(qo_ptr + b * Q + j, (count - Q + j).to(qo_ptr.dtype.element_ty), mask=j < Q)
    if MAX and Q > 0:  # the largest query position, kept across layers and steps (no host sync)
        tl.atomic_max(max_ptr, count - 1)


def mask_unwritten_triton(
    gather_idx: torch.Tensor,
    key_pos: torch.Tensor,
    total: torch.Tensor,
    q_len: int,
    max_position: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~.torch_select.mask_unwritten_torch` in one launch: ``gather_idx``, ``key_pos`` ``[B, N]``
    integer (any strides), ``total`` one integer on their device -> new contiguous ``gather_idx``,
    ``key_pos [B, N]`` and ``q_pos [B, q_len]`` (``key_pos``'s dtype); ``max_position`` (``[1]``
    int64, contiguous) raised to the largest query position in the same launch."""
    name = "mask_unwritten"
    check_device(name, gather_idx, key_pos, total, *([] if max_position is None else [max_position]))
    if max_position is not None and (max_position.dtype != torch.int64 or max_position.numel() != 1):
        raise ValueError(
            f"{name}: max_position must be one int64, got {max_position.dtype} x {max_position.numel()}"
        )
    if gather_idx.dim() != 2 or gather_idx.shape != key_pos.shape or total.numel() != 1 or q_len < 0:
        raise ValueError(
            f"{name}: needs gather_idx and key_pos [B, N] of one shape, one total and q_len >= 0, got "
            f"{tuple(gather_idx.shape)}, {tuple(key_pos.shape)}, {total.numel()} totals, q_len={q_len}"
        )
    if any(t.dtype not in (torch.int32, torch.int64) for t in (gather_idx, key_pos, total)):
        raise ValueError(
            f"{name}: int32 or int64 tensors, got {gather_idx.dtype}, {key_pos.dtype}, {total.dtype}"
        )
    g, k = gather_idx.contiguous(), key_pos.contiguous()
    b, n = g.shape
    go, ko = torch.empty_like(g), torch.empty_like(k)
    qo = torch.empty(b, q_len, dtype=k.dtype, device=k.device)
    if b:
        # the whole scope in one tile (up to 16K rows, 32 a thread): a walk in 1,024-row blocks took 24.5 us
        # for an 8B decode scope on one H100 (run 23, call G), about what the twin's fifteen kernels take
        block = max(16, min(1 << 14, triton.next_power_of_2(max(n, q_len, 1))))
        warps = max(1, min(16, block // 512))
        mx = qo if max_position is None else max_position
        _mask_unwritten_kernel[(b,)](
            g,
            k,
            total.reshape(1),
            go,
            ko,
            qo,
            mx,
            n,
            q_len,
            BLOCK=block,
            MAX=max_position is not None,
            num_warps=warps,
        )
    return go, ko, qo
