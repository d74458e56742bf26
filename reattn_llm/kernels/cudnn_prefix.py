"""A prefill chunk's scope prefix through cuDNN's fused attention (twin: :func:`prefix_attention_torch`).

A prefill chunk's scope ends with the chunk's own keys (``chunk_tail``); every key before them, the
prefix (global rows, spans, the local rows before the chunk), is visible to every query unless it
is padding. That part is plain attention, which cuDNN's fused kernel runs at up to 611 TFLOP/s on
an H200 where the Triton flash kernel reaches about 350 (BENCHMARKS.md, #13 item 4). The split:

1. the queries rotated at their positions into ``[B, H, Q, D]`` (one gather launch) and read as
   ``[B, Hkv, g·Q, D]``: each KV head's GQA group folded into the query axis (row ``j·Q + i`` for
   head ``j`` of the group and query ``i``), so cuDNN runs plain multi-head attention over the
   gathered ``[B, Hkv, N - Q, D]`` keys and values, with no GQA support needed;
2. padding as an additive bias ``[B, 1, 1, N - Q]`` of :data:`MASKED` (finite in fp16 and bf16, so
   a row with no real key in the prefix stays a number: its weight is 0 once merged);
3. cuDNN's ``(out, lse)`` become the starting state of :mod:`.triton_flash`'s kernel (``INIT``),
   which folds in the chunk's own keys with the causal mask.

Chosen by the prefill configuration's ``PREFIX``: ``"cudnn"`` (the default; where cuDNN's fused
attention is not available, the single-kernel flash path), ``"torch"`` (the twin, for tests),
``"triton"`` (no split). A cuDNN error falls back to the single-kernel path for the rest of the
process, with one warning. Measured on one H200 (run 17, BENCHMARKS.md): cuDNN's call over 8,192
keys x 4,096 folded rows 324 us (424 TFLOP/s, the padding bias included), the 8B shape's prefill
3% faster at 32K and 1% at 128K than the flash kernel alone.
"""

from __future__ import annotations

import warnings

import torch

from ._triton_utils import cdiv
from .triton_gather import rotate_rows

__all__ = ["MASKED", "cudnn_prefix_available", "prefix_attention", "prefix_attention_torch"]

#: The bias of a padding key: exp underflows to 0 against any real score, and it stays finite in fp16.
MASKED = -30000.0

_failed: list[str] = []  # the first cuDNN error, once seen: the split is off for the process


def cudnn_prefix_available(q: torch.Tensor) -> bool:
    """Whether cuDNN's fused attention can take the prefix of ``q [B, H, Q, D]``'s scope: a CUDA
    device of compute capability 8.0+, fp16/bf16, head dim a multiple of 8 up to 128, and torch's
    cuDNN attention op present (and not failed before in this process)."""
    return (
        q.is_cuda
        and not _failed
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 128
        and torch.backends.cudnn.is_available()
        and hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention")
        and torch.cuda.get_device_capability(q.device) >= (8, 0)
    )


def prefix_attention_torch(
    qf: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, bias: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``qf [B, Hkv, R, D]`` over ``kp``/``vp [B, Hkv, P, D]`` with an additive ``bias``
    broadcast to ``[B, Hkv, R, P]``, fp32 math: ``(out [B, Hkv, R, D]`` in ``qf``'s dtype, normalised,
    ``lse [B, Hkv, R]`` fp32, natural log)."""
    s = torch.matmul(qf.float(), kp.float().transpose(-1, -2)) * scale + bias.float()
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse[..., None]), vp.float())
    return out.to(qf.dtype), lse


def _prefix_cudnn(qf, kp, vp, bias, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prefix_attention_torch`'s contract through torch's cuDNN attention op."""
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        qf, kp, vp, bias, True, 0.0, False, False, scale=scale
    )
    out, lse = res[0], res[1]
    return out if out.stride(-1) == 1 else out.contiguous(), lse[..., 0] if lse.dim() == 4 else lse


def prefix_attention(
    kind: str,
    q: torch.Tensor,
    ko: torch.Tensor,
    vo: torch.Tensor,
    key_pos: torch.Tensor,
    q_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The prefix part of a ``chunk_tail`` scope: ``q [B, H, Q, D]`` un-rotated, ``ko``/``vo [B, Hkv,
    N, D]`` the gathered scope (rotated keys, zeros at padding), ``key_pos [B, N]``. Returns
    ``(out [B, Hkv, g·Q, D], lse [B, Hkv, g·Q])`` by :func:`prefix_attention_torch`'s contract, or
    None where ``kind`` is ``"cudnn"`` and cuDNN is not available or has failed."""
    if kind not in ("cudnn", "torch"):
        raise ValueError(f"prefix_attention: kind must be 'cudnn' or 'torch', got {kind!r}")
    if kind == "cudnn" and not cudnn_prefix_available(q):
        return None
    B, H, Q, D = q.shape
    Hkv, N = ko.shape[1], ko.shape[2]
    P = N - Q
    qf = rotate_rows(q, q_pos, cos, sin, heads_first=True).view(B, Hkv, (H // Hkv) * Q, D)
    width = cdiv(P, 8) * 8  # rows 16-byte aligned for cuDNN
    bias = torch.zeros((B, width), device=q.device, dtype=q.dtype)[:, :P]
    bias.masked_fill_(key_pos[:, :P] < 0, MASKED)
    args = (qf, ko[:, :, :P], vo[:, :, :P], bias[:, None, None, :], scale)
    if kind == "torch":
        return prefix_attention_torch(*args)
    try:
        return _prefix_cudnn(*args)
    except RuntimeError as e:  # an unsupported shape or a cuDNN build without the fused kernel
        _failed.append(str(e))
        warnings.warn(
            f"cuDNN attention failed on a prefill chunk's prefix ({str(e)[:200]}); the Triton flash path "
            "takes every chunk from now on",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
