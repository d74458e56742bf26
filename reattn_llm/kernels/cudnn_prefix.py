"""A prefill chunk's scope prefix through cuDNN's fused attention (twin: :func:`prefix_attention_torch`).

A prefill chunk's scope ends with the chunk's own keys (``chunk_tail``); every key before them, the
prefix (global rows, spans, the local rows before the chunk), is visible to every query unless it
is padding. That part is plain attention, which cuDNN's fused kernel runs at up to 611 TFLOP/s on
an H200 where the Triton flash kernel reaches about 350 (BENCHMARKS.md, #13 item 4). The split:

1. the queries rotated at their positions into ``[B, H, Q, D]`` (one gather launch) and read as
   ``[B, Hkv, g·Q, D]``: each KV head's GQA group folded into the query axis (row ``j·Q + i`` for
   head ``j`` of the group and query ``i``), so cuDNN runs plain multi-head attention over the
   gathered ``[B, Hkv, N - Q, D]`` keys and values, with no GQA support needed;
2. no mask: a padding key is gathered as zeros (key and value), so its score is exactly 0 for
   every query and its value adds nothing; it only adds ``exp(0) = 1`` to each row's softmax sum.
   The call returns the padding count per batch entry beside cuDNN's ``(out, lse)``, and
   :mod:`.triton_flash`'s kernel takes the three as its starting state (``INIT``): numerator
   ``out·e^lse`` (exact: padding values are 0), denominator ``e^lse - pad`` (clamped at 0: a prefix
   of padding alone weighs nothing). An additive padding bias ``[B, 1, 1, N - Q]`` costs cuDNN a
   third of its speed (run 18: 424 against 640 TFLOP/s);
3. the flash kernel then folds in the chunk's own keys with the causal mask.

The subtraction loses precision only where a row's real keys weigh less than its padding keys
(``sum exp(s) < pad``, every real score below about ``log(pad)``): fp32 keeps ``e^lse`` to 2^-24,
so the real part to ``2^-24·pad / sum exp(s)`` relative, bf16's own rounding (2^-9) until the real
keys weigh 2^-15 of the padding. Attention sinks make real scores far larger in trained models.

Chosen by the prefill configuration's ``PREFIX``: ``"cudnn"`` (the default; where cuDNN's fused
attention is not available, the single-kernel flash path), ``"torch"`` (the twin, for tests),
``"triton"`` (no split). A cuDNN error falls back to the single-kernel path for the rest of the
process, with one warning. Measured on one H100 (run 18, BENCHMARKS.md): cuDNN's call over 8,192
keys x 4,096 folded rows 215 us unmasked (640 TFLOP/s) against 324 us with a padding bias; the 8B
shape's 128K exact prefill 4.3% faster than with the flash kernel alone.
"""

from __future__ import annotations

import warnings

import torch

from .triton_gather import rotate_rows

__all__ = ["cudnn_prefix_available", "prefix_attention", "prefix_attention_torch"]

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
    qf: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``qf [B, Hkv, R, D]`` over every key of ``kp``/``vp [B, Hkv, P, D]``, fp32 math:
    ``(out [B, Hkv, R, D]`` in ``qf``'s dtype, normalised, ``lse [B, Hkv, R]`` fp32, natural log)."""
    s = torch.matmul(qf.float(), kp.float().transpose(-1, -2)) * scale
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse[..., None]), vp.float())
    return out.to(qf.dtype), lse


def _prefix_cudnn(qf, kp, vp, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prefix_attention_torch`'s contract through torch's cuDNN attention op (no bias)."""
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        qf, kp, vp, None, True, 0.0, False, False, scale=scale
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The prefix part of a ``chunk_tail`` scope: ``q [B, H, Q, D]`` un-rotated, ``ko``/``vo [B, Hkv,
    N, D]`` the gathered scope (rotated keys, zeros at padding), ``key_pos [B, N]``. Returns
    ``(out [B, Hkv, g·Q, D], lse [B, Hkv, g·Q], pad [B])``: :func:`prefix_attention_torch`'s contract
    over all ``N - Q`` prefix keys, padding included, and ``pad`` the padding keys among them
    (fp32), each of which added exactly 1 to every row's ``e^lse`` and nothing to ``out``'s
    numerator (module docstring). None where ``kind`` is ``"cudnn"`` and cuDNN is not available or
    has failed."""
    if kind not in ("cudnn", "torch"):
        raise ValueError(f"prefix_attention: kind must be 'cudnn' or 'torch', got {kind!r}")
    if kind == "cudnn" and not cudnn_prefix_available(q):
        return None
    B, H, Q, D = q.shape
    Hkv, N = ko.shape[1], ko.shape[2]
    P = N - Q
    qf = rotate_rows(q, q_pos, cos, sin, heads_first=True).view(B, Hkv, (H // Hkv) * Q, D)
    pad = (key_pos[:, :P] < 0).sum(dim=1, dtype=torch.float32)
    args = (qf, ko[:, :, :P], vo[:, :, :P], scale)
    if kind == "torch":
        return (*prefix_attention_torch(*args), pad)
    try:
        return (*_prefix_cudnn(*args), pad)
    except RuntimeError as e:  # an unsupported shape or a cuDNN build without the fused kernel
        _failed.append(str(e))
        warnings.warn(
            f"cuDNN attention failed on a prefill chunk's prefix ({str(e)[:200]}); the Triton flash path "
            "takes every chunk from now on",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
