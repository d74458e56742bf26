"""Kernels behind ReAttention's two hot spots, with a dispatch between Triton and torch.

``score_topk`` scores every middle key against every query of a chunk and keeps the top-k;
``select_scope`` pools the hits into ranked span centres and builds the chunk's scope from them;
``scope_attention`` attends over the gathered, re-positioned scope; ``rank_spans`` ranks a prompt
chunk's span centres by the hits their spans cover and ``scope_from_centres`` builds its scope
from them. Two-level selection: ``rank_blocks`` ranks key blocks from their summaries (level 1),
``top_blocks`` picks the candidates, ``candidate_blocks`` is both (fused for a decode step), and
``score_topk_blocks`` is ``score_topk`` over the candidate blocks read in place (level 2). Around
the attention, the model's own small ops: ``rms_norm`` and the gated MLP's ``gated_act``, one
launch each (:mod:`reattn_llm.method.model_ops`); a static decode step's scope cut to the rows
written: ``mask_unwritten``. Each has a Triton implementation (CUDA) and a
torch twin of identical signature (CPU, and the reference).
The prompt-chunk kernels (``score_topk``, ``score_topk_blocks``, ``rank_blocks``, ``rank_spans``,
``scope_from_centres``) also take ``grow``: the batch is one forward's chunks, entry b's middle
``(B - 1 - b)·grow`` keys shorter than the last's, each selected as if alone in the same launches
(:func:`~reattn_llm.method.planning.plan_chunks`).
The choice is ``ReAttentionConfig.backend``: ``"auto"`` (Triton on CUDA when importable,
torch otherwise), ``"triton"`` or ``"torch"``.
"""

from __future__ import annotations

import torch

from .torch_ops import (
    candidate_blocks_torch,
    gated_act_torch,
    rank_blocks_torch,
    rms_norm_torch,
    rotate_one_torch,
    scope_attention_torch,
    score_topk_blocks_torch,
    score_topk_torch,
    top_blocks_torch,
)
from .torch_select import (
    SelectedScope,
    mask_unwritten_torch,
    rank_spans_torch,
    scope_from_centres_torch,
    select_scope_torch,
)

__all__ = [
    "MAX_TOP_K",
    "SelectedScope",
    "candidate_blocks",
    "candidate_blocks_torch",
    "gated_act",
    "gated_act_torch",
    "mask_unwritten",
    "mask_unwritten_torch",
    "rank_blocks",
    "rank_blocks_torch",
    "rank_spans",
    "rank_spans_torch",
    "resolve_backend",
    "rms_norm",
    "rms_norm_torch",
    "rotate_one",
    "rotate_one_torch",
    "scope_attention",
    "scope_attention_torch",
    "scope_from_centres",
    "scope_from_centres_torch",
    "score_topk",
    "score_topk_blocks",
    "score_topk_blocks_torch",
    "score_topk_torch",
    "select_scope",
    "select_scope_torch",
    "top_blocks",
    "top_blocks_torch",
]

#: The most hits per query that every backend keeps (the Triton top-k kernel's limit,
#: ``kernels.triton_topk.MAX_TOP_K``; the torch twin has none).
MAX_TOP_K = 32


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto" | "triton" | "torch"`` -> the backend that will actually run on ``device``."""
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not _triton_available():
            raise ImportError("backend='triton' needs triton: pip install triton")
        return "triton"
    return "triton" if device.type == "cuda" and _triton_available() else "torch"


def score_topk(
    q: torch.Tensor, k: torch.Tensor, top_k: int, backend: str = "torch", grow: int = 0
) -> torch.Tensor:
    """Dispatch for :func:`score_topk_torch` (same signature, ``backend`` already resolved)."""
    if backend == "triton":
        from .triton_topk import score_topk_triton

        return score_topk_triton(q, k, top_k, grow=grow)
    return score_topk_torch(q, k, top_k, grow)


def score_topk_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    blocks: torch.Tensor,
    block_size: int,
    top_k: int,
    backend: str = "torch",
    grow: int = 0,
) -> torch.Tensor:
    """Dispatch for :func:`score_topk_blocks_torch` (same signature, ``backend`` already resolved)."""
    if backend == "triton":
        from .triton_topk import score_topk_blocks_triton

        return score_topk_blocks_triton(q, k, blocks, block_size, top_k, grow=grow)
    return score_topk_blocks_torch(q, k, blocks, block_size, top_k, grow)


def scope_attention(
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
    backend: str = "torch",
) -> torch.Tensor:
    """Dispatch for :func:`scope_attention_torch` (same signature, ``backend`` already resolved)."""
    args = (q, k_cache, v_cache, gather_idx, key_pos, q_pos, cos, sin, scaling, chunk_tail)
    if backend == "triton":
        from .triton_attention import scope_attention_triton

        return scope_attention_triton(*args)
    return scope_attention_torch(*args)


def rotate_one(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Dispatch for :func:`rotate_one_torch` (same signature, ``backend`` already resolved): one
    launch on Triton (:func:`~.triton_gather.rotate_rows`), where the readable ops take four."""
    if backend == "triton":
        from .triton_gather import rotate_rows

        return rotate_rows(q, None, cos[None], sin[None])
    return rotate_one_torch(q, cos, sin)


def select_scope(
    hits: torch.Tensor,
    pinned: torch.Tensor | None,
    middle_len: int,
    n_spans: int,
    span_size: int,
    global_size: int,
    local_size: int,
    total: int,
    q_len: int,
    by_rank: bool = False,
    backend: str = "torch",
) -> SelectedScope:
    """Dispatch for :func:`select_scope_torch` (same signature, ``backend`` already resolved)."""
    args = (hits, pinned, middle_len, n_spans, span_size, global_size, local_size, total, q_len, by_rank)
    if backend == "triton":
        from .triton_select import select_scope_triton

        return select_scope_triton(*args)
    return select_scope_torch(*args)


def rank_blocks(
    q: torch.Tensor, summaries: torch.Tensor, backend: str = "torch", grow: int = 0
) -> torch.Tensor:
    """Dispatch for :func:`rank_blocks_torch` (same signature, ``backend`` already resolved)."""
    if backend == "triton":
        from .triton_blocks import rank_blocks_triton

        return rank_blocks_triton(q, summaries, grow)
    return rank_blocks_torch(q, summaries, grow)


def top_blocks(rank: torch.Tensor, c: int, backend: str = "torch") -> torch.Tensor:
    """Dispatch for :func:`top_blocks_torch` (same signature, ``backend`` already resolved). More
    blocks than one program holds (``triton_blocks.MAX_TOP_BLOCKS``) take torch's ``topk`` and a
    sort on the GPU (faster there than the twin's stable sort) over keys that order ties to the
    lower block, so the blocks are the twin's whatever the shape (every row's best block ranks 0:
    ties at the C-th rank are common)."""
    if backend == "triton":
        from .triton_blocks import MAX_TOP_BLOCKS, top_blocks_triton

        if rank.shape[-1] <= MAX_TOP_BLOCKS:
            return top_blocks_triton(rank, c)
        return tie_ordered_keys(rank).topk(c, dim=-1, sorted=False).indices.sort(dim=-1).values
    return top_blocks_torch(rank, c)


def tie_ordered_keys(rank: torch.Tensor) -> torch.Tensor:
    """``rank [..., n]`` fp32 -> int64 keys in the same order, distinct, equal ranks ordered to the
    lower index: the fp32 bits made order-preserving (``-0.0`` as ``+0.0``) in the high half, ``n - 1 -
    index`` in the low half."""
    bits = rank.contiguous().view(torch.int32)
    bits = torch.where(bits == -(1 << 31), 0, bits)
    key = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()
    n = rank.shape[-1]
    return key * (1 << 32) + (n - 1 - torch.arange(n, device=rank.device))


def candidate_blocks(
    q: torch.Tensor, summaries: torch.Tensor, c: int, backend: str = "torch", grow: int = 0
) -> torch.Tensor:
    """Dispatch for :func:`candidate_blocks_torch` (same signature, ``backend`` already resolved): on
    Triton a decode step's few rows take the fused path (``triton_blocks.candidate_blocks_triton``),
    larger chunks :func:`rank_blocks` then :func:`top_blocks`."""
    if backend == "triton" and not grow:
        from .triton_blocks import FUSED_ROWS, MAX_TOP_BLOCKS, candidate_blocks_triton

        rows = q.shape[1] // max(1, summaries.shape[1]) * q.shape[2]
        if 1 <= rows <= FUSED_ROWS and c <= summaries.shape[2] <= MAX_TOP_BLOCKS:
            return candidate_blocks_triton(q, summaries, c)
    return top_blocks(rank_blocks(q, summaries, backend, grow), c, backend)


def rank_spans(
    hits: torch.Tensor,
    middle_len: int,
    max_spans: int,
    span_size: int,
    backend: str = "torch",
    grow: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch for :func:`rank_spans_torch` (same signature, ``backend`` already resolved)."""
    if backend == "triton":
        from .triton_spans import rank_spans_triton

        return rank_spans_triton(hits, middle_len, max_spans, span_size, grow)
    return rank_spans_torch(hits, middle_len, max_spans, span_size, grow)


def scope_from_centres(
    centres: torch.Tensor,
    middle_len: int,
    span_size: int,
    global_size: int,
    local_size: int,
    total: int,
    q_len: int,
    backend: str = "torch",
    grow: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Dispatch for :func:`scope_from_centres_torch` (same signature, ``backend`` already resolved)."""
    args = (centres, middle_len, span_size, global_size, local_size, total, q_len, grow)
    if backend == "triton":
        from .triton_select import scope_from_centres_triton

        return scope_from_centres_triton(*args)
    return scope_from_centres_torch(*args)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    offset: float = 0.0,
    cast_first: bool = True,
    backend: str = "torch",
) -> torch.Tensor:
    """Dispatch for :func:`rms_norm_torch` (same signature, ``backend`` already resolved)."""
    if backend == "triton":
        from .triton_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps, offset, cast_first)
    return rms_norm_torch(x, weight, eps, offset, cast_first)


def gated_act(
    gate: torch.Tensor, up: torch.Tensor, act: str = "silu", backend: str = "torch"
) -> torch.Tensor:
    """Dispatch for :func:`gated_act_torch` (same signature, ``backend`` already resolved)."""
    if backend == "triton":
        from .triton_gated import gated_act_triton

        return gated_act_triton(gate, up, act)
    return gated_act_torch(gate, up, act)


def mask_unwritten(
    gather_idx: torch.Tensor,
    key_pos: torch.Tensor,
    total: torch.Tensor,
    q_len: int,
    max_position: torch.Tensor | None = None,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatch for :func:`mask_unwritten_torch` (same signature, ``backend`` already resolved)."""
    args = (gather_idx, key_pos, total, q_len, max_position)
    if backend == "triton":
        from .triton_static import mask_unwritten_triton

        return mask_unwritten_triton(*args)
    return mask_unwritten_torch(*args)
