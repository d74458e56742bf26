"""Torch twins of the kernels: the portable, readable definition of each operation.

Every Triton kernel in this package has a twin with the identical signature, here or (the span
selection's) in :mod:`.torch_select`; the twin is what runs on CPU and is the reference the
kernels are tested against. Shapes use B batch, H query heads, Hkv key/value heads (H % Hkv == 0,
query head h reads KV head h // (H // Hkv)), Q queries, M middle keys, T cached tokens, N
gathered keys, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Upper bound on the fp32 score block materialised at once by the twin (elements): 64 MB on CPU,
# 1 GB on a GPU.
_SCORE_BLOCK_ELEMS = {"cpu": 1 << 24, "cuda": 1 << 28}


def grown_first(name: str, middle_len: int, batch: int, grow: int) -> int:
    """The first batch entry's middle in a call with ``grow``: batch entry b has
    ``middle_len - (batch - 1 - b)·grow`` keys (one forward's chunks as a batch, each ``grow``
    queries further into the sequence than the one before; the last has ``middle_len``). A
    ``ValueError`` when ``grow`` is negative or leaves the first entry no key."""
    first = middle_len - (batch - 1) * grow
    if grow < 0 or first < 1:
        raise ValueError(
            f"{name}: grow={grow} over {batch} batch entries leaves the first entry {first} of {middle_len} "
            "middle keys; grow must be >= 0 and (batch - 1) * grow < middle_len (batch fewer chunks)"
        )
    return first


def score_topk_torch(q: torch.Tensor, k: torch.Tensor, top_k: int, grow: int = 0) -> torch.Tensor:
    """Exact position-agnostic top-k: for each (batch, query head, query) the ``top_k`` middle keys
    with the largest raw dot product ``q . k`` (no scaling, no softmax), scored in fp32
    (fp64 for fp64 inputs).

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k: ``[B, Hkv, M, D]`` un-rotated middle keys (a strided view into the cache is fine).
        top_k: keys to keep per query; ``min(top_k, M)`` are returned.
        grow: batch entry b scores only the first ``M - (B - 1 - b)·grow`` keys
            (:func:`grown_first`): one sequence's chunks, its keys expanded over them.

    Returns:
        ``[B, H, Q, min(top_k, M0)]`` int64 indices into ``[0, M)``, best first (ties in any order;
        ``M0`` the first entry's keys, ``M`` without ``grow``). The ``[H, Q, M]`` score matrix is
        never materialised whole: keys are scored in blocks and a running top-k is merged.
    """
    B, H, Q, D = q.shape
    _, Hkv, M, _ = k.shape
    if grow:
        first = grown_first("score_topk_torch", M, B, grow)
        kk = min(top_k, first)
        rows = (score_topk_torch(q[b : b + 1], k[b : b + 1, :, : first + b * grow], top_k) for b in range(B))
        return torch.cat([r[..., :kk] for r in rows])
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
        best_v, best_i = merge_topk(best_v, best_i, v, i + start if start else i, kk)
    assert best_i is not None
    return best_i.reshape(B, H, Q, kk)


def score_topk_blocks_torch(
    q: torch.Tensor, k: torch.Tensor, blocks: torch.Tensor, block_size: int, top_k: int, grow: int = 0
) -> torch.Tensor:
    """:func:`score_topk_torch` over per-KV-head key blocks: two-level selection's level 2.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k: ``[B, Hkv, M, D]`` un-rotated keys (the middle).
        blocks: ``[B, Hkv, C]`` int full blocks of each KV head (block i is rows ``i·bs ..`` of
            ``k``; increasing blocks keep ties on the lower row), at most ``M // bs``.
        block_size: bs.
        grow: batch entry b's middle is only its first ``M - (B - 1 - b)·grow`` rows
            (:func:`grown_first`; a multiple of bs, so every entry has ``C·bs + M % bs`` keys).

    Returns:
        ``[B, H, Q, min(top_k, n)]`` int64 rows of ``k``, best first, over the ``n = C·bs + M % bs``
        keys of the blocks and then of the partial block at the end of ``k`` (none when bs divides M).
    """
    if grow:
        b, m = k.shape[0], k.shape[2]
        first = grown_first("score_topk_blocks_torch", m, b, grow)
        if grow % block_size:
            raise ValueError(
                f"score_topk_blocks_torch: grow={grow} must be a multiple of block_size={block_size}"
            )
        return torch.cat(
            [
                score_topk_blocks_torch(
                    q[i : i + 1], k[i : i + 1, :, : first + i * grow], blocks[i : i + 1], block_size, top_k
                )
                for i in range(b)
            ]
        )
    rows = block_rows(blocks, block_size, k.shape[2])
    local = score_topk_torch(q, k.gather(2, rows[..., None].expand(-1, -1, -1, k.shape[3])), top_k)
    return rows_of_hits(rows, local)


def block_rows(blocks: torch.Tensor, block_size: int, m: int) -> torch.Tensor:
    """Level 2's keys as rows of a middle of ``m`` rows: the full blocks ``blocks [B, Hkv, C]`` (block i
    is rows ``i·bs ..``), then the partial block at the end -> ``[B, Hkv, C·bs + m % bs]`` int64."""
    offsets = torch.arange(block_size, device=blocks.device)
    full = (blocks[..., None].long() * block_size + offsets).flatten(2)  # [B, Hkv, C·bs]
    tail = torch.arange(m // block_size * block_size, m, device=blocks.device)
    return torch.cat([full, tail.expand(*blocks.shape[:2], -1)], dim=2)


def rows_of_hits(rows: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """Hits ``[B, H, Q, k]`` indexing each KV head's keys ``rows [B, Hkv, n]`` -> the rows they name
    (query head h reads KV head ``h // (H / Hkv)``)."""
    rows_h = rows.repeat_interleave(hits.shape[1] // rows.shape[1], dim=1)  # [B, H, n]
    return rows_h.gather(2, hits.flatten(2)).reshape(hits.shape)


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


def rotate_one_torch(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``q [B, H, S, D]`` rotated by one RoPE ``cos, sin [D]`` (fp32; rotate-half), every row alike,
    in fp32 math, returned in ``q``'s dtype (``scoring="expected"``'s averaged query)."""
    qf = q.float()
    return (qf * cos + rotate_half(qf) * sin).to(q.dtype)


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
    chunk_tail: bool = False,
) -> torch.Tensor:
    """Attention of un-rotated queries over a gathered, re-positioned scope of the cache.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries.
        k_cache, v_cache: ``[B, Hkv, T, D]`` un-rotated keys and values (views are fine).
        gather_idx: ``[B, N]`` int64 rows of the cache forming the scope, in scope order.
            Padding entries may hold any row index in range (their ``key_pos`` is -1); what that
            row holds, NaN included, never reaches the output.
        key_pos: ``[B, N]`` int64 RoPE position of each gathered key, -1 for padding.
        q_pos: ``[B, Q]`` int64 RoPE position of each query.
        cos, sin: ``[P, R]`` RoPE tables (rotate-half layout, the model's scaling included),
            ``P`` > every position used, ``R <= D`` rotary dims (partial rotary keeps the rest).
        scaling: softmax scale (usually ``D ** -0.5``).
        chunk_tail: the caller's promise that the last ``Q`` keys are the queries' own, in query
            order, and every earlier key is visible to every query unless it is padding. The
            kernel skips masking work with it; the result is the same, so the twin ignores it.

    Returns:
        ``[B, Q, H, D]`` in ``q``'s dtype. Query i sees key j iff ``0 <= key_pos[j] <= q_pos[i]``.
    """
    del chunk_tail  # the full position mask below is right with or without the promise
    pad = (key_pos < 0)[:, None, :, None]  # a padding row may hold anything (NaN): 0 x NaN is NaN
    k = gather_kv(k_cache, gather_idx).masked_fill(pad, 0)
    v = gather_kv(v_cache, gather_idx).masked_fill(pad, 0)
    kp = key_pos.clamp(min=0)
    k = apply_rope(k, cos[kp], sin[kp])
    qr = apply_rope(q, cos[q_pos], sin[q_pos])
    mask = (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] <= q_pos[:, :, None])  # [B, Q, N]
    out = F.scaled_dot_product_attention(
        qr, k, v, attn_mask=mask[:, None], scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.transpose(1, 2)


def rank_blocks_torch(q: torch.Tensor, summaries: torch.Tensor, grow: int = 0) -> torch.Tensor:
    """Two-level selection's level-1 rank of every key block (:mod:`reattn_llm.method.two_level`):
    ``q [B, H, Q, D]``, ``summaries [B, Hkv, n, 2D]`` (``[centre | radius]`` per block,
    :func:`~reattn_llm.kv.summaries.block_summaries`) -> ``[B, Hkv, n]`` fp32 (fp64 for fp64
    inputs): per KV head, the block's best over the head's rows (its GQA heads' queries) of
    ``s - max_blocks s``, with ``s = q·centre + |q|·radius`` (Quest's bound of q.k blended with the
    mean key's score; higher is better). Rows are scored in slices, so the ``[rows, n]`` matrix is
    never whole. ``grow``: batch entry b (a chunk of one forward) has only its first
    ``n - (B - 1 - b)·grow`` blocks (:func:`grown_first`); the rest rank ``-inf``."""
    if grow:  # batch entry b ranks its first n - (B - 1 - b)·grow blocks alone, the rest -inf
        n = summaries.shape[2]
        first = grown_first("rank_blocks_torch", n, q.shape[0], grow)
        rows = [
            rank_blocks_torch(q[i : i + 1], summaries[i : i + 1, :, : first + i * grow])
            for i in range(q.shape[0])
        ]
        return torch.cat([F.pad(r, (0, n - r.shape[2]), value=float("-inf")) for r in rows])
    b, h, nq, d = q.shape
    hkv, n = summaries.shape[1], summaries.shape[2]
    rows = (h // hkv) * nq
    acc = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(acc).reshape(b, hkv, rows, d)
    qq = torch.cat([qf, qf.abs()], dim=-1)
    st = summaries.to(acc).transpose(-1, -2)  # [B, Hkv, 2D, n]
    step = max(1, _SCORE_BLOCK_ELEMS.get(q.device.type, 1 << 24) // max(1, b * hkv * n))
    best = torch.full((b, hkv, n), float("-inf"), dtype=acc, device=q.device)
    for r0 in range(0, rows, step):
        s = torch.matmul(qq[:, :, r0 : r0 + step], st)  # [B, Hkv, rows', n]
        s = (s - s.amax(dim=-1, keepdim=True)).amax(dim=2)
        best = torch.maximum(best, s)
    return best


def top_blocks_torch(rank: torch.Tensor, c: int) -> torch.Tensor:
    """Two-level selection's candidates: ``rank [B, Hkv, n]`` -> ``[B, Hkv, c]`` int64, the ``c``
    best-ranked blocks of each KV head in increasing order (ties to the lower block)."""
    best = rank.sort(dim=-1, descending=True, stable=True).indices[..., :c]
    return best.sort(dim=-1).values


def candidate_blocks_torch(q: torch.Tensor, summaries: torch.Tensor, c: int, grow: int = 0) -> torch.Tensor:
    """Two-level selection's level 1 whole: :func:`rank_blocks_torch`, then :func:`top_blocks_torch`
    -> ``[B, Hkv, c]`` int64 blocks, increasing (``grow``: as :func:`rank_blocks_torch`'s)."""
    return top_blocks_torch(rank_blocks_torch(q, summaries, grow), c)


def rms_norm_torch(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0, cast_first: bool = True
) -> torch.Tensor:
    """RMSNorm over the last dim, transformers' arithmetic: ``r = rsqrt(mean(x²) + eps)`` in fp32,
    then Llama's order (``cast_first``: ``weight * (x·r).to(x.dtype)``, as Llama, Mistral, Qwen and
    Phi-3 do) or Gemma's (``((x·r) * (offset + weight)).to(x.dtype)`` in fp32, ``offset`` 1).

    Args:
        x: ``[..., N]``.
        weight: ``[N]``.

    Returns:
        ``[..., N]``: in ``promote(x.dtype, weight.dtype)`` with ``cast_first``, else ``x.dtype``.
    """
    if cast_first and offset:
        raise ValueError("rms_norm: offset applies with cast_first=False (Gemma's order) only")
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if cast_first:
        return weight * y.to(x.dtype)
    return (y * (offset + weight.float())).to(x.dtype)


def gated_act_torch(gate: torch.Tensor, up: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """The gated MLP's ``act(gate) * up`` (``[..., N]`` each, one dtype), the stock ops: ``act``
    ``"silu"`` (Llama, Mistral, Qwen, Phi-3) or ``"gelu_tanh"`` (Gemma 3's ``gelu_pytorch_tanh``)."""
    if act == "silu":
        return F.silu(gate) * up
    if act == "gelu_tanh":
        return F.gelu(gate, approximate="tanh") * up
    raise ValueError(f"gated_act: act must be 'silu' or 'gelu_tanh', got {act!r}")
