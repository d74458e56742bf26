"""Two-level selection: score per-block key summaries first, then exact top-k inside the candidates.

Exact selection scores every middle key against every query of a chunk: ``2·H·Q·M·D`` FLOPs, so a
prefill costs O(T²). Two-level selection (``ReAttentionConfig(selection="two_level")``) cuts it by
about the block size:

* **Summaries** (Quest-style). The middle keys are cut into blocks of ``block_size`` consecutive
  cache rows, aligned at the start of the middle (row ``G``), so a block never holds a global key
  and every full block of the middle stays the same block as the context grows. Per KV head and
  block the summary keeps the per-dimension maximum and minimum of the keys, laid out
  ``[max | min]`` along the last dimension: ``[B, Hkv, n_blocks, 2D]``. :class:`KeySummaries`
  (owned by each :class:`~reattn_llm.cache.ReAttentionLayer`) summarises each block once, when
  it is first needed, and keeps it; a forward reads ``M / block_size`` summaries, not ``M`` keys.
* **Level 1.** ``sum_d max(q_d·min_d, q_d·max_d) = [relu(q) | min(q, 0)] · [max | min]`` is an
  upper bound of ``q·k`` for every key of the block, and it is a plain dot product of width 2D, so
  the existing scoring kernel (:func:`~reattn_llm.kernels.score_topk`, Triton or torch) ranks the
  blocks: per (query head, query) the ``level1_k`` blocks with the largest bounds. Each pick is a
  vote for its block in its KV head; per KV head the ``candidate_blocks`` most voted blocks are the
  candidates (ties to the earlier block). Cost ``4·H·Q·(M/bs)·D``: ``2/bs`` of exact scoring.
* **Level 2.** The candidates' keys (plus the partial block at the end of the middle, which has
  no summary and is always a candidate) are gathered per KV head, ``[B, Hkv, C·bs + r, D]``, and
  scored exactly by the same kernel; indices map back to middle positions. The hits then go to
  :func:`~reattn_llm.selection.select_spans` unchanged.

Everything is fixed-shape (no ``nonzero``, ``unique`` or ``.item()``). When every full block fits
in the candidate budget (``candidate_blocks * block_size >= M``), exact scoring runs instead, so
the result is exactly the exact selection's. Otherwise it is an approximation: a query's true
top-k key is missed when its block is not among the candidates of its KV head.
"""

from __future__ import annotations

import torch

from .kernels import score_topk

__all__ = ["KeySummaries", "block_bounds", "block_summaries", "level1_k", "two_level_topk"]

_GROWTH = 1.5
# The Triton scoring kernel keeps at most 32 per row; level 1 never asks for more.
_MAX_LEVEL1_K = 32


def block_summaries(keys: torch.Tensor, block_size: int) -> torch.Tensor:
    """``keys [B, Hkv, n*bs, D]`` -> ``[B, Hkv, n, 2D]``: per block, per dimension ``[max | min]``."""
    b, h, rows, d = keys.shape
    n = rows // block_size
    blocks = keys[:, :, : n * block_size].reshape(b, h, n, block_size, d)
    return torch.cat([blocks.amax(dim=3), blocks.amin(dim=3)], dim=-1)


def bound_queries(q: torch.Tensor) -> torch.Tensor:
    """``q [..., D]`` -> ``[relu(q) | min(q, 0)]`` of width 2D: its dot with ``[max | min]`` is the bound."""
    return torch.cat([q.clamp(min=0), q.clamp(max=0)], dim=-1)


def block_bounds(q: torch.Tensor, summaries: torch.Tensor) -> torch.Tensor:
    """Upper bounds of ``q·k`` per block: ``q [B, H, Q, D]``, ``summaries [B, Hkv, n, 2D]`` ->
    ``[B, H, Q, n]`` fp32 (fp64 for fp64 inputs). Query head h reads KV head ``h // (H / Hkv)``."""
    b, h, nq, d = q.shape
    hkv = summaries.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    qq = bound_queries(q.to(acc)).reshape(b, hkv, (h // hkv) * nq, 2 * d)
    s = torch.matmul(qq, summaries.to(acc).transpose(-1, -2))
    return s.reshape(b, h, nq, -1)


class KeySummaries:
    """Per-block ``[max | min]`` summaries of one cache layer's keys, filled as blocks are needed.

    Blocks are ``[origin + j·bs, origin + (j+1)·bs)`` in absolute cache rows; a block is
    summarised once (when a caller first needs it, by then it is complete in the cache) and kept.
    The cache layer calls :meth:`truncate` when it drops rows and :meth:`clear` when rows move.
    """

    def __init__(self) -> None:
        self.origin = -1
        self.block_size = 0
        self.done = 0  # blocks summarised, from the origin
        self._buf: torch.Tensor | None = None

    def clear(self) -> None:
        self.done = 0
        self._buf = None

    def truncate(self, length: int) -> None:
        """The cache now holds ``length`` rows: forget blocks that reach past them."""
        if self.block_size:
            self.done = min(self.done, max(0, (length - self.origin) // self.block_size))

    def nbytes(self) -> int:
        return 0 if self._buf is None else self._buf.numel() * self._buf.element_size()

    def get(self, keys: torch.Tensor, origin: int, block_size: int, n_blocks: int) -> torch.Tensor:
        """Summaries ``[B, Hkv, n_blocks, 2D]`` of the first ``n_blocks`` blocks from ``origin``.

        Args:
            keys: ``[B, Hkv, T, D]`` the layer's keys; rows up to ``origin + n_blocks·bs`` are final.
        """
        b, h, _, d = keys.shape
        buf = self._buf
        if (
            origin != self.origin
            or block_size != self.block_size
            or buf is None
            or buf.shape[:2] != (b, h)
            or buf.shape[3] != 2 * d
            or buf.dtype != keys.dtype
            or buf.device != keys.device
        ):
            self.origin, self.block_size, self.done, buf = origin, block_size, 0, None
        if buf is None or buf.shape[2] < n_blocks:
            cap = max(n_blocks, 64 if buf is None else int(buf.shape[2] * _GROWTH))
            grown = keys.new_empty(b, h, cap, 2 * d)
            if buf is not None and self.done:
                grown[:, :, : self.done].copy_(buf[:, :, : self.done])
            buf = grown
        self._buf = buf
        if self.done < n_blocks:
            lo = origin + self.done * block_size
            hi = origin + n_blocks * block_size
            buf[:, :, self.done : n_blocks].copy_(block_summaries(keys[:, :, lo:hi], block_size))
            self.done = n_blocks
        return buf[:, :, :n_blocks]


def level1_k(top_k: int, candidate_blocks: int, rows: int, n_blocks: int) -> int:
    """Blocks each (query head, query) votes for: ``2·top_k``, or enough for the ``rows`` voters of
    a KV head to name ``candidate_blocks`` blocks (decode), at most 32 and at most ``n_blocks``.
    With fewer voters than that (decode: ``rows`` = the GQA group), the candidates shrink to the
    ``rows * level1_k`` blocks that can be voted for."""
    need = -(-candidate_blocks // max(1, rows))
    return max(1, min(n_blocks, _MAX_LEVEL1_K, max(2 * top_k, need)))


def two_level_topk(
    q: torch.Tensor,
    k_mid: torch.Tensor,
    top_k: int,
    candidate_blocks: int,
    block_size: int,
    backend: str = "torch",
    summaries: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-k middle keys per (query head, query), scored exactly inside summary-picked candidates.

    Args:
        q: ``[B, H, Q, D]`` the chunk's un-rotated queries.
        k_mid: ``[B, Hkv, M, D]`` un-rotated middle keys (a strided view of the cache is fine).
        top_k: hits per (query head, query).
        candidate_blocks: C, blocks per KV head that level 2 scores exactly.
        block_size: bs, keys per block.
        backend: resolved kernel backend for both levels.
        summaries: ``[B, Hkv, >= M // bs, 2D]`` ``[max | min]`` of ``k_mid``'s full blocks (from
            :class:`KeySummaries`); computed here when None.

    Returns:
        ``[B, H, Q, k']`` int64 middle positions in ``[0, M)``, like :func:`score_topk`. When
        ``C·bs >= M`` it *is* :func:`score_topk` (exact selection).
    """
    b, h, nq, d = q.shape
    hkv, m = k_mid.shape[1], k_mid.shape[2]
    grp = h // hkv
    n_full = m // block_size
    c = max(candidate_blocks, -(-top_k // block_size))
    if c >= n_full:
        return score_topk(q, k_mid, top_k, backend=backend)
    if summaries is None:
        summaries = block_summaries(k_mid, block_size)
    summ = summaries[:, :, :n_full]
    dev = q.device
    # Level 1: every (query head, query) votes for its k1 blocks of largest bound.
    k1 = level1_k(top_k, c, grp * nq, n_full)
    c = min(c, grp * nq * k1)  # no more candidates than votes (decode): unvoted blocks add nothing
    qq = bound_queries(q)
    level1_backend = "torch" if backend == "triton" and 2 * d > 256 else backend  # Triton: head dim <= 256
    picks = score_topk(qq, summ.to(qq.dtype), k1, backend=level1_backend)  # [B, H, Q, k1]
    votes = torch.zeros(b, hkv, n_full, dtype=torch.int64, device=dev)
    flat = picks.reshape(b, hkv, -1)
    votes.scatter_add_(2, flat, torch.ones_like(flat))
    order = votes * n_full + (n_full - 1 - torch.arange(n_full, device=dev))  # ties: earlier block
    blocks = order.topk(c, dim=2).indices.sort(dim=2).values  # [B, Hkv, C], increasing
    # Level 2: exact scores over the candidates' keys and the partial block at the end.
    rows = (blocks[..., None] * block_size + torch.arange(block_size, device=dev)).reshape(b, hkv, c * block_size)
    full = k_mid[:, :, : n_full * block_size]
    if full.stride(3) == 1 and full.stride(2) == d:  # rows of a head are contiguous: copy whole blocks
        kb = full.unflatten(2, (n_full, block_size)).flatten(3)  # [B, Hkv, n_full, bs*D], a view
        kc = kb.gather(2, blocks[..., None].expand(-1, -1, -1, block_size * d)).reshape(b, hkv, -1, d)
    else:
        kc = full.gather(2, rows[..., None].expand(-1, -1, -1, d))
    tail = m - n_full * block_size
    if tail:
        rows = torch.cat([rows, torch.arange(n_full * block_size, m, device=dev).expand(b, hkv, tail)], dim=2)
        kc = torch.cat([kc, k_mid[:, :, n_full * block_size :]], dim=2)  # [B, Hkv, L2, D]
    local = score_topk(q, kc, top_k, backend=backend)  # [B, H, Q, k'] into [0, L2)
    kk = local.shape[-1]
    rows_h = rows.repeat_interleave(grp, dim=1)  # [B, H, L2]
    return rows_h.gather(2, local.reshape(b, h, nq * kk)).reshape(b, h, nq, kk)
