"""Scope attention for prefill chunks through torch's own flash-attention kernel (varlen).

A prefill chunk's scope promises ``chunk_tail`` (:attr:`~reattn_llm.method.selection.Scope.chunk_tail`):
its last ``Q`` keys are the chunk's own, in query order, and every earlier key is visible to every
query unless it is padding. Once the padding is squeezed out, that is plain causal attention with
the mask aligned to the bottom right, which is what flash attention's variable-length interface
computes per sequence. So the scope is handed to the library kernel torch ships for
``scaled_dot_product_attention`` (``aten._flash_attention_forward``, FlashAttention-2) instead of
our Triton loop (:mod:`.triton_flash`, 1.86x that kernel's time at the 8B shape; run 11):

1. :func:`~.triton_flash.gather_scope` with ``dest``: the scope's keys, rotated at their scope
   positions, and values into ``[B, N, Hkv, D]`` buffers, entry ``b``'s ``n_b`` real keys in its
   first ``n_b`` rows in scope order (``dest``: each real key's rank, a cumulative count); the rows
   past ``n_b`` are never written nor read. Visibility then follows the order alone (the promise),
   so the scope positions, which only rotate, need not be ``0..n_b-1``.
2. The queries rotated at ``q_pos`` into ``[B, Q, H, D]`` (:func:`~.triton_flash.rotate_rows`,
   the same kernel over the queries' own rows).
3. One varlen call: entry ``b`` is a sequence of ``Q`` queries over ``seqused_k[b] = n_b`` keys
   (``cu_seq_k`` steps by ``N``), ``is_causal`` (bottom-right), GQA native. Each sequence is one
   set of programs whose key loop depends on ``n_b`` and ``Q`` only, so a batch of chunks gives each
   chunk what it gets alone, bit for bit.

Used when the kernel exists (CUDA, fp16/bf16, head dim a multiple of 8 up to 256, a torch whose
varlen op takes ``seqused_k``); otherwise the Triton flash path runs, which also stays the
benchmarks' baseline (``scope_attention_triton(..., _config={"LIBRARY": False})``).
"""

from __future__ import annotations

import functools

import torch

from .triton_flash import gather_scope, rotate_rows

__all__ = ["available", "varlen_scope_attention"]


@functools.cache
def _op_takes_seqused_k() -> bool:
    try:
        schema = torch.ops.aten._flash_attention_forward.default._schema
    except (AttributeError, RuntimeError):
        return False
    return any(a.name == "seqused_k" for a in schema.arguments)


def available(q: torch.Tensor) -> bool:
    """Whether the library kernel can run the scope attention of ``q`` (``[B, H, Q, D]``)."""
    D = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and D % 8 == 0
        and D <= 256
        and torch.cuda.get_device_capability(q.device)[0] >= 8
        and _op_takes_seqused_k()
    )


@functools.cache
def _steps(n: int, step: int, device: torch.device) -> torch.Tensor:
    """``[0, step, 2·step, ..., n·step]`` int32 on ``device`` (cumulative lengths, cached)."""
    return torch.arange(0, (n + 1) * step, step, device=device, dtype=torch.int32)


def _flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, seqused_k, scale):
    """The library call: ``q [Tq, H, D]``, ``k``/``v [Tk, Hkv, D]`` -> ``[Tq, H, D]``. Tests swap
    it for a torch reference on machines without the kernel."""
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale, seqused_k=seqused_k
    )
    return out[0]


def varlen_scope_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    gather_idx: torch.Tensor,
    key_pos: torch.Tensor,
    q_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """The ``chunk_tail`` prefill path of :func:`~.triton_attention.scope_attention_triton`
    (arguments checked there, the promise included): ``q [B, H, Q, D]`` un-rotated, the caches
    ``[B, Hkv, T, D]``, ``gather_idx`` / ``key_pos`` ``[B, N]``, ``q_pos [B, Q]``; returns ``[B, Q, H, D]``."""
    B, H, Q, D = q.shape
    Hkv = k_cache.shape[1]
    N = gather_idx.shape[1]
    count = torch.cumsum(key_pos >= 0, dim=1, dtype=torch.int32)  # [B, N] real keys up to each entry
    ko, vo = gather_scope(k_cache, v_cache, gather_idx, key_pos, cos, sin, dest=count - 1)
    qr = rotate_rows(q, q_pos, cos, sin).transpose(1, 2)  # [B, Q, H, D] contiguous
    used = count[:, -1].contiguous()  # n_b
    out = _flash_varlen(
        qr.view(B * Q, H, D),
        ko.view(B * N, Hkv, D),
        vo.view(B * N, Hkv, D),
        _steps(B, Q, q.device),
        _steps(B, N, q.device),
        Q,
        N,
        used,
        float(scaling),
    )
    return out.view(B, Q, H, D)
