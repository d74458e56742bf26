"""Torch twins of the kernels: the portable, readable definition of each operation.

Every Triton kernel in this package has a twin here with the identical signature; the twin is
what runs on CPU and is the reference the kernels are tested against. Shapes use
B batch, H query heads, Hkv key/value heads (H % Hkv == 0, query head h reads KV head
h // (H // Hkv)), Q queries, M middle keys, T cached tokens, N gathered keys, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Upper bound on the fp32 score block materialised at once by the twin (elements): 64 MB on CPU,
# 1 GB on a GPU.
_SCORE_BLOCK_ELEMS = {"cpu": 1 << 24, "cuda": 1 << 28}


def score_topk_torch(q: torch.Tensor, k: torch.Tensor, top_k: int) -> torch.Tensor:
    """Exact position-agnostic top-k: for each (batch, query head, query) the ``top_k`` middle keys
    with the largest raw dot product ``q . k`` (no scaling, no softmax), scored in fp32
    (fp64 for fp64 inputs).

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k: ``[B, Hkv, M, D]`` un-rotated middle keys (a strided view into the cache is fine).
        top_k: keys to keep per query; ``min(top_k, M)`` are returned.

    Returns:
        ``[B, H, Q, min(top_k, M)]`` int64 indices into ``[0, M)``, best first (ties in any order).
        The ``[H, Q, M]`` score matrix is never materialised whole: keys are scored in blocks
        and a running top-k is merged.
    """
    B, H, Q, D = q.shape
    _, Hkv, M, _ = k.shape
    g = H // Hkv
    kk = min(top_k, M)
    # [B, Hkv, g*Q, D]: query heads of one KV group side by side (h = kv * g + j).
    acc = torch.promote_types(q.dtype, torch.float32)
    qg = q.to(acc).reshape(B, Hkv, g * Q, D)
    block = max(256, _SCORE_BLOCK_ELEMS.get(q.device.type, 1 << 24) // max(1, B * H * Q))
    best_v: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start in range(0, M, block):
        kb = k[:, :, start : start + block].to(acc)
        s = torch.matmul(qg, kb.transpose(-1, -2))  # [B, Hkv, g*Q, blk]
        v, i = s.topk(min(kk, s.shape[-1]), dim=-1)
        best_v, best_i = merge_topk(best_v, best_i, v, i + start, kk)
    assert best_i is not None
    return best_i.reshape(B, H, Q, kk)


def merge_topk(
    best_v: torch.Tensor | None, best_i: torch.Tensor | None, v: torch.Tensor, i: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a block's top hits (scores ``v``, indices ``i``, ``[..., k']``) into a running top-``k``
    (``None`` before the first block): ``(scores, indices)``, best first."""
    if best_v is None or best_i is None:
        return v, i
    v, j = torch.cat([best_v, v], dim=-1).topk(min(k, best_v.shape[-1] + v.shape[-1]), dim=-1)
    return v, torch.cat([best_i, i], dim=-1).gather(-1, j)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[..., D] -> [..., D]``: the rotate-half RoPE convention of Llama-family models."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, h, S, D]`` by ``cos, sin [B, S, R]`` (R <= D: partial rotary keeps x[..., R:])."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    xr, xp = x[..., :r], x[..., r:]
    return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)


def gather_kv(cache: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``cache [B, Hkv, T, D]``, ``idx [B, N]`` -> ``[B, Hkv, N, D]`` (rows ``idx`` of each batch)."""
    if cache.shape[0] == 1:
        return cache.index_select(2, idx[0])
    b = torch.arange(cache.shape[0], device=cache.device)[:, None]
    return cache.permute(0, 2, 1, 3)[b, idx].permute(0, 2, 1, 3)


def scope_attention_torch(
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
    """Attention of un-rotated queries over a gathered, re-positioned scope of the cache.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k_cache, v_cache: ``[B, Hkv, T, D]`` un-rotated keys and values (views are fine).
        gather_idx: ``[B, N]`` int64 rows of the cache forming the scope, in scope order.
            Padding entries may hold any valid row (their ``key_pos`` is -1).
        key_pos: ``[B, N]`` int64 RoPE position of each gathered key, -1 for padding.
        q_pos: ``[B, Q]`` int64 RoPE position of each query.
        cos, sin: ``[P, R]`` RoPE tables (rotate-half layout, the model's scaling included),
            ``P`` > every position used, ``R <= D`` rotary dims (partial rotary keeps the rest).
        scaling: softmax scale (usually ``D ** -0.5``).

    Returns:
        ``[B, Q, H, D]`` in ``q``'s dtype. Query i sees key j iff ``0 <= key_pos[j] <= q_pos[i]``.
    """
    k = gather_kv(k_cache, gather_idx)
    v = gather_kv(v_cache, gather_idx)
    kp = key_pos.clamp(min=0)
    k = apply_rope(k, cos[kp], sin[kp])
    qr = apply_rope(q, cos[q_pos], sin[q_pos])
    mask = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= q_pos[:, :, None])  # [B, Q, N]
    out = F.scaled_dot_product_attention(
        qr, k, v, attn_mask=mask[:, None], scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.transpose(1, 2)
