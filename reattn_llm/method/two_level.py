"""Two-level selection: score per-block key summaries first, then exact top-k inside the candidates.

Exact selection scores every middle key against every query of a chunk: ``2·H·Q·M·D`` FLOPs, so a
prefill costs O(T²). Two-level selection (``ReAttentionConfig(selection="two_level")``) cuts it by
about the block size:

* **Summaries.** The middle keys are cut into blocks of ``block_size`` consecutive cache rows,
  aligned at the start of the middle (row ``G``), so a block never holds a global key and every
  full block stays the same block as the context grows. Each cache layer keeps a summary per KV
  head and block (:class:`~reattn_llm.kv.summaries.KeySummaries`, read through
  :meth:`~reattn_llm.kv.layer.KVReader.block_summaries`): a block is summarised once, when it is
  first needed, so a forward reads ``M / block_size`` summaries, not ``M`` keys.
* **Level 1.** ``sum_d max(q_d·min_d, q_d·max_d)`` is an upper bound of ``q·k`` over the block
  (Quest's bound; :func:`block_scores`); ``q · mean`` is the block's average score. On real keys
  the bound alone ranks blocks poorly (it favours blocks whose keys spread widely), the mean alone
  misses single strong keys; the blend ``BOUND_WEIGHT · bound + (1 - BOUND_WEIGHT) · q·mean`` is
  two dots of width D, ``q·centre + |q|·radius``, against the summary ``[centre | radius]``
  (:mod:`reattn_llm.kv.summaries` derives it). Each (query head, query) row is
  normalised by its best block (``s - max_blocks s``), and a block's rank is its best normalised
  score over all the rows of its KV head (all GQA heads, all the chunk's queries): per KV head the
  ``candidate_blocks`` best blocks are the candidates: :func:`~reattn_llm.kernels.rank_blocks` (its
  Triton kernel, two passes that never write the ``[rows, blocks]`` scores, runs where
  :data:`LEVEL1_KERNEL` says), then :func:`~reattn_llm.kernels.top_blocks` (ties to the lower
  block); both as :func:`~reattn_llm.kernels.candidate_blocks`, which fuses them for a decode step's
  few rows. Cost ``4·H·Q·(M/bs)·D`` per pass: ``2/bs`` of exact.
* **Level 2.** The candidates' keys (plus the partial block at the end of the middle, which has
  no summary and is always a candidate) are scored exactly by the layer
  (:meth:`~reattn_llm.kv.layer.KVReader.score_blocks`): keys on the device in the model's dtype in
  place, through a block table (:func:`~reattn_llm.kernels.score_topk_blocks`, Triton or torch);
  fp8 or host rows gathered first, only those rows. The hits (middle positions) then go to the
  span selection unchanged.

Everything is fixed-shape (no ``nonzero``, ``unique`` or ``.item()``). When every full block fits
in the candidate budget (``candidate_blocks * block_size >= M``), exact scoring runs instead
(:func:`~reattn_llm.kv.layer.exact_topk`), so the result is exactly the exact selection's.
Otherwise it is an approximation: a query's true top-k key is missed when its block is not among
the candidates of its KV head (``benchmarks/selection.py`` measures how often, on real keys). So
by default only a document's chunks select this way; the chunks an answer is read from (the
prompt's last: the question or its tail; each decode step) score exactly
(``ReAttentionConfig.exact_answer``, :meth:`~reattn_llm.method.config.ReAttentionConfig.two_level_for`):
with them two-level too, RULER's natural-prose needle was lost in 16 of 30 samples that exact
selection found.
"""

from __future__ import annotations

import torch

from ..kernels import candidate_blocks as level1_candidates
from ..kv.dense import TensorKV
from ..kv.layer import KVReader, exact_topk
from ..kv.summaries import BOUND_WEIGHT

__all__ = ["BOUND_WEIGHT", "block_scores", "two_level_topk"]
#: Backends whose level 1 runs as a kernel (:func:`~reattn_llm.kernels.rank_blocks`); the others run
#: its torch twin. Triton's two-pass kernel passed ``benchmarks/gpu_kernels_check.py`` in bf16 on one
#: H200 at 1M keys (32K blocks), 4.3 ms against the twin's 22.4 ms for the Llama-8B shape's 1024-query
#: chunk and 0.51 against 2.11 ms for SmolLM2's 512-query chunk (BENCHMARKS.md, Run 8).
LEVEL1_KERNEL: tuple[str, ...] = ("triton",)


def block_scores(q: torch.Tensor, summaries: torch.Tensor) -> torch.Tensor:
    """Level 1's score of every block, unnormalised: ``q [B, H, Q, D]``, ``summaries [B, Hkv, n, 2D]``
    (``[centre | radius]``) -> ``q·centre + |q|·radius``, ``[B, H, Q, n]`` fp32 (fp64 for fp64
    inputs). Query head h reads KV head ``h // (H / Hkv)``. With summaries of bound weight 1
    (``block_summaries(keys, bs, 1.0)``) it is Quest's upper bound of ``q·k`` over each block."""
    b, h, nq, d = q.shape
    hkv = summaries.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(acc)
    qq = torch.cat([qf, qf.abs()], dim=-1).reshape(b, hkv, (h // hkv) * nq, 2 * d)
    s = torch.matmul(qq, summaries.to(acc).transpose(-1, -2))
    return s.reshape(b, h, nq, -1)


def two_level_topk(
    q: torch.Tensor,
    keys: KVReader | torch.Tensor,
    top_k: int,
    candidate_blocks: int,
    block_size: int,
    backend: str = "torch",
    *,
    lo: int = 0,
    hi: int | None = None,
    grow: int = 0,
    level1_stride: int = 1,
) -> torch.Tensor:
    """Top-k middle keys per (query head, query), scored exactly inside summary-picked candidates.

    Args:
        q: ``[B, H, Q, D]`` the chunk's un-rotated queries.
        keys: the cache layer (its block summaries are kept across forwards), or un-rotated keys
            ``[B, Hkv, T, D]`` (summarised here).
        top_k: hits per (query head, query).
        candidate_blocks: C, blocks per KV head that level 2 scores exactly.
        block_size: bs, keys per block; blocks start at row ``lo``.
        backend: resolved kernel backend for both levels.
        lo, hi: the middle, rows ``[lo, hi)`` (default: every row).
        grow: ``q``'s batch is one sequence's chunks (``keys`` that sequence's): entry b's middle is
            ``[lo, hi - (B - 1 - b)·grow)``, selected as if alone. Both levels run once for the batch
            when every entry selects two-level and ``grow`` is whole blocks; else entry by entry.
        level1_stride: level 1 ranks the blocks from every ``level1_stride``-th query of the chunk
            (``q[:, :, ::s]``), level 2 scores every query: level 1 costs ``s`` times less.

    Returns:
        ``[B, H, Q, k']`` int64 middle positions in ``[0, hi - lo)``, like :func:`score_topk`. When
        ``C·bs >= M`` it *is* :func:`~reattn_llm.kv.layer.exact_topk` (exact selection).
    """
    kv = keys if isinstance(keys, KVReader) else TensorKV(keys)
    hi = kv.length if hi is None else hi
    m = hi - lo
    n_full = m // block_size
    c = max(candidate_blocks, -(-top_k // block_size))
    if grow:
        return _grown(q, kv, top_k, candidate_blocks, block_size, backend, lo, hi, grow, level1_stride)
    if c >= n_full:
        return exact_topk(q, kv, lo, hi, top_k, backend)
    # Level 1: rank the full blocks by their best row-normalised blended score; keep the best C.
    level1 = backend if backend in LEVEL1_KERNEL else "torch"
    summaries = kv.block_summaries(lo, block_size, n_full)
    blocks = level1_candidates(q[:, :, ::level1_stride], summaries, c, level1)  # [B, Hkv, C], increasing
    # Level 2: exact scores over the candidates' keys and the partial block at the end.
    return kv.score_blocks(q, lo, hi, blocks, block_size, top_k, backend)


def _grown(
    q: torch.Tensor,
    kv: KVReader,
    top_k: int,
    candidate_blocks: int,
    block_size: int,
    backend: str,
    lo: int,
    hi: int,
    grow: int,
    level1_stride: int,
) -> torch.Tensor:
    """:func:`two_level_topk` of a batch of one sequence's chunks (``grow``): the blocks of the last
    chunk's middle are summarised at once (a kept block is summarised once, whoever needs it
    first), then level 1 ranks each chunk's own blocks and level 2 scores each chunk's candidates
    and partial block, for the whole batch in the same launches. The first chunks whose middles the
    candidates cover score exactly as one batch of their own, the rest as above: each chunk's
    result is the one it gets alone, in two batches (entry by entry only where ``grow`` is not
    whole blocks)."""
    b = q.shape[0]
    c = max(candidate_blocks, -(-top_k // block_size))
    ends = [hi - (b - 1 - i) * grow for i in range(b)]
    n_exact = sum(c >= (e - lo) // block_size for e in ends)  # a prefix: the middles grow
    if n_exact and not grow % block_size:
        exact = exact_topk(q[:n_exact], kv, lo, ends[n_exact - 1], top_k, backend, grow)
        if n_exact == b:
            return exact
        rest = _grown(
            q[n_exact:], kv, top_k, candidate_blocks, block_size, backend, lo, hi, grow, level1_stride
        )
        return torch.cat([exact, rest])
    if grow % block_size:  # blocks misalign: entry by entry
        parts = [
            two_level_topk(
                q[i : i + 1],
                kv,
                top_k,
                candidate_blocks,
                block_size,
                backend,
                lo=lo,
                hi=e,
                level1_stride=level1_stride,
            )
            for i, e in enumerate(ends)
        ]
        return torch.cat(parts)
    summaries = kv.block_summaries(lo, block_size, (hi - lo) // block_size)
    level1 = backend if backend in LEVEL1_KERNEL else "torch"
    q1 = q[:, :, ::level1_stride]  # level 1's rows; level 2 scores every query
    blocks = level1_candidates(q1, summaries.expand(b, -1, -1, -1), c, level1, grow // block_size)
    return kv.score_blocks(q, lo, hi, blocks, block_size, top_k, backend, grow)
