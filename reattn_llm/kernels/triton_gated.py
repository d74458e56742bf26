"""The gated MLP's ``act(gate) * up`` in one launch (Triton; twin: :func:`~.torch_ops.gated_act_torch`).

transformers runs the activation and the product as two kernels: the activation writes an
intermediate the size of the MLP's hidden states (``[tokens, intermediate]``, 235 MB a layer for
an 8B model's 8,192-token forward) that the product reads back. ``_gated_act_kernel`` reads
``gate`` and ``up`` once and writes the product once, rounding the activation to the output's
dtype first as the stock pair does. Activations: SiLU (Llama, Mistral, Qwen, Phi-3) and GELU's
tanh approximation (Gemma 3).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_utils import cdiv, check_device

__all__ = ["GATED_ACTS", "gated_act_triton"]

#: activation name -> the kernel's ``ACT``
GATED_ACTS = {"silu": 0, "gelu_tanh": 1}


@triton.jit(do_not_specialize=["M", "N"])
def _gated_act_kernel(g_ptr, u_ptr, o_ptr, M, N, sg, su, so, BLOCK_N: tl.constexpr, ACT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = cols < N
    g = tl.load(g_ptr + row * sg + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * su + cols, mask=m, other=0.0).to(tl.float32)
    if ACT == 0:  # SiLU: g * sigmoid(g)
        a = g / (1.0 + tl.exp(-g))
    else:  # GELU, tanh approximation; tanh(z) = 1 - 2 / (1 + exp(2z)) (saturates cleanly both ways)
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        a = 0.5 * g * (2.0 - 2.0 / (1.0 + tl.exp(tl.minimum(2.0 * z, 80.0))))
    dtype = o_ptr.dtype.element_ty
    a = a.to(dtype).to(tl.float32)  # the stock activation's output, rounded before the product
    tl.store(o_ptr + row * so + cols, (a * u).to(dtype), mask=m)


def gated_act_triton(gate: torch.Tensor, up: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """``act(gate) * up`` (Triton; see :func:`~.torch_ops.gated_act_torch`).

    Args:
        gate, up: ``[..., N]`` of one shape and dtype (fp16 / bf16 / fp32), last dim contiguous (a
            half of a fused ``gate_up_proj`` output is fine: rows may be strided).
        act: ``"silu"`` or ``"gelu_tanh"``.

    Returns:
        ``[..., N]`` in their dtype, contiguous.
    """
    check_device("gated_act", gate, up)
    if act not in GATED_ACTS:
        raise ValueError(f"gated_act: act must be one of {sorted(GATED_ACTS)}, got {act!r}")
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"gated_act: gate and up must match, got {list(gate.shape)} {gate.dtype} and {list(up.shape)} {up.dtype}"
        )
    if gate.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"gated_act: fp16, bf16 or fp32 inputs, got {gate.dtype}")
    n = gate.shape[-1]
    g2, u2 = gate.reshape(-1, n), up.reshape(-1, n)  # views where the rows are evenly strided
    if n > 1 and g2.stride(-1) != 1:
        g2 = g2.contiguous()
    if n > 1 and u2.stride(-1) != 1:
        u2 = u2.contiguous()
    m = g2.shape[0]
    out = torch.empty(m, n, device=gate.device, dtype=gate.dtype)
    if m and n:
        # four elements a thread (blocks of 1024 columns, 8 warps): on one H100 (bf16, BENCHMARKS.md run 19)
        # 8,192 x 14,336 (the 8B MLP's prefill forward) 295 us against 429 us with 4 warps and 385 us for
        # the stock pair; one row (a decode step, from a CUDA graph) 1.5 / 1.7 / 2.8 us; 64 rows 2.9 / 5.9 / 4.5
        bn = min(1024, triton.next_power_of_2(n))
        warps = max(1, min(8, bn // 128))
        _gated_act_kernel[(m, cdiv(n, bn))](
            g2,
            u2,
            out,
            m,
            n,
            g2.stride(0),
            u2.stride(0),
            out.stride(0),
            BLOCK_N=bn,
            ACT=GATED_ACTS[act],
            num_warps=warps,
        )
    return out.reshape(gate.shape)
