"""Two-level selection: score per-block key summaries first, then exact top-k inside the candidates.

Exact selection scores every middle key against every query of a chunk: ``2·H·Q·M·D`` FLOPs, so a
prefill costs O(T²). Two-level selection (``ReAttentionConfig(selection="two_level")``) cuts it by
about the block size:

* **Summaries.** The middle keys are cut into blocks of ``block_size`` consecutive cache rows,
  aligned at the start of the middle (row ``G``), so a block never holds a global key and every
  full block stays the same block as the context grows. Per KV head and block the summary keeps
  the per-dimension maximum, minimum and mean of the keys, ``[max | min | mean]`` along the last
  dimension: ``[B, Hkv, n_blocks, 3D]``. :class:`KeySummaries` (owned by each
  :class:`~reattn_llm.cache.ReAttentionLayer`) summarises each block once, when it is first
  needed, and keeps it; a forward reads ``M / block_size`` summaries, not ``M`` keys.
* **Level 1.** ``sum_d max(q_d·min_d, q_d·max_d) = [relu(q) | min(q, 0)] · [max | min]`` is an
  upper bound of ``q·k`` over the block (Quest's bound, :func:`block_bounds`); ``q · mean`` is the
  block's average score. On real keys the bound alone ranks blocks poorly (it favours blocks whose
  keys spread widely), the mean alone misses single strong keys; the blend
  ``BOUND_WEIGHT · bound + (1 - BOUND_WEIGHT) · q·mean`` is one dot of width 3D,
  ``[w·relu(q) | w·min(q, 0) | (1-w)·q] · [max | min | mean]``. Each (query head, query) row is
  normalised by its best block (``s - max_blocks s``), and a block's rank is its best normalised
  score over all the rows of its KV head (all GQA heads, all the chunk's queries): per KV head the
  ``candidate_blocks`` best blocks are the candidates. Cost ``6·H·Q·(M/bs)·D``: ``3/bs`` of exact.
* **Level 2.** The candidates' keys (plus the partial block at the end of the middle, which has
  no summary and is always a candidate) are gathered per KV head, ``[B, Hkv, C·bs + r, D]``, and
  scored exactly by :func:`~reattn_llm.kernels.score_topk` (Triton or torch); indices map back to
  middle positions. The hits then go to :func:`~reattn_llm.selection.select_spans` unchanged.

Everything is fixed-shape (no ``nonzero``, ``unique`` or ``.item()``). When every full block fits
in the candidate budget (``candidate_blocks * block_size >= M``), exact scoring runs instead, so
the result is exactly the exact selection's. Otherwise it is an approximation: a query's true
top-k key is missed when its block is not among the candidates of its KV head
(``benchmarks/selection.py`` measures how often, on real keys).
"""

from __future__ import annotations

from typing import Any

import torch

from ..kernels import score_topk

__all__ = ["BOUND_WEIGHT", "KeySummaries", "block_bounds", "block_summaries", "rank_blocks", "two_level_topk"]

#: Weight of the upper bound against the mean score in the level-1 rank. On real keys of the default
#: model (32K middle keys, 508 candidate blocks) the share of exact hits recalled was 0.80 with the
#: mean alone (0), 0.85 / 0.84 / 0.83 with 0.2 / 0.3 / 0.5, and 0.78 with the bound alone (1).
BOUND_WEIGHT = 0.3
_GROWTH = 1.5
# Largest fp32 level-1 score block materialised at once (elements), as in score_topk_torch.
_RANK_BLOCK_ELEMS = {"cpu": 1 << 24, "cuda": 1 << 27}


def block_summaries(keys: torch.Tensor, block_size: int) -> torch.Tensor:
    """``keys [B, Hkv, n*bs (+r), D]`` -> ``[B, Hkv, n, 3D]``: per full block, per dimension
    ``[max | min | mean]`` (the mean accumulated in fp32, stored in the keys' dtype)."""
    b, h, rows, d = keys.shape
    n = rows // block_size
    blocks = keys[:, :, : n * block_size].reshape(b, h, n, block_size, d)
    mean = blocks.mean(dim=3, dtype=torch.promote_types(keys.dtype, torch.float32)).to(keys.dtype)
    return torch.cat([blocks.amax(dim=3), blocks.amin(dim=3), mean], dim=-1)


def block_bounds(q: torch.Tensor, summaries: torch.Tensor) -> torch.Tensor:
    """Upper bounds of ``q·k`` per block: ``q [B, H, Q, D]``, ``summaries [B, Hkv, n, >= 2D]``
    (``[max | min | ...]``) -> ``[B, H, Q, n]`` fp32 (fp64 for fp64 inputs). Query head h reads
    KV head ``h // (H / Hkv)``."""
    b, h, nq, d = q.shape
    hkv = summaries.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(acc)
    qq = torch.cat([qf.clamp(min=0), qf.clamp(max=0)], dim=-1).reshape(b, hkv, (h // hkv) * nq, 2 * d)
    s = torch.matmul(qq, summaries[..., : 2 * d].to(acc).transpose(-1, -2))
    return s.reshape(b, h, nq, -1)


def rank_blocks(q: torch.Tensor, summaries: torch.Tensor, weight: float = BOUND_WEIGHT) -> torch.Tensor:
    """Level-1 rank of every block for one KV head's rows: ``q [B, H, Q, D]``, ``summaries
    [B, Hkv, n, 3D]`` -> ``[B, Hkv, n]`` fp32, the block's best row-normalised blended score
    (higher is better). Rows are scored in slices, so the ``[rows, n]`` matrix is never whole."""
    b, h, nq, d = q.shape
    hkv, n = summaries.shape[1], summaries.shape[2]
    rows = (h // hkv) * nq
    acc = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(acc).reshape(b, hkv, rows, d)
    qq = torch.cat([weight * qf.clamp(min=0), weight * qf.clamp(max=0), (1.0 - weight) * qf], dim=-1)
    st = summaries.to(acc).transpose(-1, -2)  # [B, Hkv, 3D, n]
    step = max(1, _RANK_BLOCK_ELEMS.get(q.device.type, 1 << 24) // max(1, b * hkv * n))
    best = torch.full((b, hkv, n), float("-inf"), dtype=acc, device=q.device)
    for r0 in range(0, rows, step):
        s = torch.matmul(qq[:, :, r0 : r0 + step], st)  # [B, Hkv, rows', n]
        s = (s - s.amax(dim=-1, keepdim=True)).amax(dim=2)
        best = torch.maximum(best, s)
    return best


class KeySummaries:
    """Per-block ``[max | min | mean]`` summaries of one cache layer's keys, filled as blocks are needed.

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
        """Summaries ``[B, Hkv, n_blocks, 3D]`` of the first ``n_blocks`` blocks from ``origin``.

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
            or buf.shape[3] != 3 * d
            or buf.dtype != keys.dtype
            or buf.device != keys.device
        ):
            self.origin, self.block_size, self.done, buf = origin, block_size, 0, None
        if buf is None or buf.shape[2] < n_blocks:
            cap = max(n_blocks, 64 if buf is None else int(buf.shape[2] * _GROWTH))
            grown = keys.new_empty(b, h, cap, 3 * d)
            if buf is not None and self.done:
                grown[:, :, : self.done].copy_(buf[:, :, : self.done])
            buf = grown
        self._buf = buf
        if self.done < n_blocks:
            lo = origin + self.done * block_size
            hi = origin + n_blocks * block_size
            tiered = getattr(keys, "_reattn_layer", None)  # fp8 / offloaded rows are read through their layer
            rows = keys[:, :, lo:hi] if tiered is None else tiered.read_keys(lo, hi)
            buf[:, :, self.done : n_blocks].copy_(block_summaries(rows, block_size))
            self.done = n_blocks
        return buf[:, :, :n_blocks]


def two_level_topk(
    q: torch.Tensor,
    k_mid: torch.Tensor,
    top_k: int,
    candidate_blocks: int,
    block_size: int,
    backend: str = "torch",
    summaries: torch.Tensor | None = None,
    reader: Any = None,
) -> torch.Tensor:
    """Top-k middle keys per (query head, query), scored exactly inside summary-picked candidates.

    Args:
        q: ``[B, H, Q, D]`` the chunk's un-rotated queries.
        k_mid: ``[B, Hkv, M, D]`` un-rotated middle keys (a strided view of the cache is fine).
        top_k: hits per (query head, query).
        candidate_blocks: C, blocks per KV head that level 2 scores exactly.
        block_size: bs, keys per block.
        backend: resolved kernel backend for both levels.
        summaries: ``[B, Hkv, >= M // bs, 3D]`` ``[max | min | mean]`` of ``k_mid``'s full blocks (from
            :class:`KeySummaries`); computed here when None.
        reader: where the keys really are when ``k_mid`` is only a stub of their shape (fp8 or host
            rows, :class:`~reattn_llm.tiered.MiddleKeys`): ``read(lo, hi)`` and ``take(rows)``.

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
        return score_topk(q, k_mid if reader is None else reader.read(0, m), top_k, backend=backend)
    if summaries is None:
        summaries = block_summaries(k_mid, block_size)
    summ = summaries[:, :, :n_full]
    dev = q.device
    # Level 1: rank the full blocks by their best row-normalised blended score; keep the best C.
    rank = rank_blocks(q, summ)  # [B, Hkv, n_full]
    blocks = rank.topk(c, dim=2).indices.sort(dim=2).values  # [B, Hkv, C], increasing
    # Level 2: exact scores over the candidates' keys and the partial block at the end.
    offsets = torch.arange(block_size, device=dev)
    rows = (blocks[..., None] * block_size + offsets).reshape(b, hkv, c * block_size)
    full = k_mid[:, :, : n_full * block_size]
    if reader is not None:
        kc = reader.take(rows)
    elif full.stride(3) == 1 and full.stride(2) == d:  # rows of a head are contiguous: copy whole blocks
        kb = full.unflatten(2, (n_full, block_size)).flatten(3)  # [B, Hkv, n_full, bs*D], a view
        kc = kb.gather(2, blocks[..., None].expand(-1, -1, -1, block_size * d)).reshape(b, hkv, -1, d)
    else:
        kc = full.gather(2, rows[..., None].expand(-1, -1, -1, d))
    tail = m - n_full * block_size
    if tail:
        rows = torch.cat([rows, torch.arange(n_full * block_size, m, device=dev).expand(b, hkv, tail)], dim=2)
        rest = k_mid[:, :, n_full * block_size :] if reader is None else reader.read(n_full * block_size, m)
        kc = torch.cat([kc, rest], dim=2)  # [B, Hkv, L2, D]
    local = score_topk(q, kc, top_k, backend=backend)  # [B, H, Q, k'] into [0, L2)
    kk = local.shape[-1]
    rows_h = rows.repeat_interleave(grp, dim=1)  # [B, H, L2]
    return rows_h.gather(2, local.reshape(b, h, nq * kk)).reshape(b, h, nq, kk)
