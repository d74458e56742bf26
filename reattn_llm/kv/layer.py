"""The one interface between the attention and the stored K/V: :class:`KVReader`, and
:class:`KVLayer`, the cache layer that implements it.

What one attention call reads from a layer of ``length`` rows (un-rotated keys, values):

* **score the middle**: the exact top-k keys over rows ``[lo, hi)`` for every (query head,
  query), :meth:`KVReader.score_middle`, decided in one function for every storage,
  :func:`exact_topk`;
* **block summaries** for two-level selection, :meth:`KVReader.block_summaries`, and the exact
  top-k over the candidate blocks, :meth:`KVReader.score_blocks`;
* **the scope's rows**, :meth:`KVReader.read_scope`: ``[B, N]`` cache rows -> K, V and the index
  tensor that the scope-attention kernel gathers with.

Implementations: :class:`~reattn_llm.kv.dense.DenseLayer` (every row in the model's dtype on the
device), :class:`~reattn_llm.kv.tiered.TieredLayer` (fp8 and/or host-memory rows) and
:class:`~reattn_llm.kv.dense.TensorKV` (raw ``[B, Hkv, T, D]`` tensors, for a plain transformers
cache or none). The attention code never asks which one it has.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin

from ..kernels import score_topk
from ..kernels.torch_ops import block_rows, merge_topk, rows_of_hits
from .storage import MemoryBudget
from .summaries import KeySummaries


class KVReader(ABC):
    """Reads one layer's ``length`` rows of un-rotated keys ``[B, Hkv, T, D]`` and values."""

    length: int
    #: ``[B, P]`` int64 span centres (middle positions) that the last multi-token forward selected
    #: (with ``decode_spans="running"``: the most voted so far), and ``pinned_votes [B, P]`` the
    #: votes they got; kept by a cache layer for the decode steps that follow (opaque to storage).
    pinned: torch.Tensor | None = None
    pinned_votes: torch.Tensor | None = None

    @property
    def key_block_rows(self) -> int:
        """Rows of keys worth reading at once (all of them when :meth:`read_keys` is a view)."""
        return sys.maxsize

    @abstractmethod
    def read_keys(self, lo: int, hi: int) -> torch.Tensor:
        """Key rows ``[lo, hi)``: ``[B, Hkv, hi - lo, D]`` in the model's dtype on the compute device."""

    @abstractmethod
    def take_keys(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-head key rows ``rows [B, Hkv, R]`` -> ``[B, Hkv, R, D]``."""

    def take_key_blocks(self, lo: int, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
        """The keys of per-head blocks ``blocks [B, Hkv, C]`` (block j is rows ``lo + j·bs ..``), in
        order: ``[B, Hkv, C·bs, D]``."""
        offsets = torch.arange(block_size, device=blocks.device)
        rows = (lo + blocks[..., None] * block_size + offsets).flatten(2)
        return self.take_keys(rows)

    def score_blocks(
        self,
        q: torch.Tensor,
        lo: int,
        hi: int,
        blocks: torch.Tensor,
        block_size: int,
        top_k: int,
        backend: str,
        grow: int = 0,
    ) -> torch.Tensor:
        """Exact top-k of ``q [B, H, Q, D]`` over per-KV-head key blocks of the middle ``[lo, hi)``:
        the full blocks ``blocks [B, Hkv, C]`` (increasing; block j is rows ``lo + j·bs ..``) and the
        partial block at its end -> ``[B, H, Q, k]`` offsets in ``[0, hi - lo)``. Here the candidates'
        keys are gathered (only those rows are read from fp8 or host memory) and scored by
        :func:`~reattn_llm.kernels.score_topk`; a layer whose keys lie on the device in the model's
        dtype scores them in place instead (:func:`~reattn_llm.kernels.score_topk_blocks`). With
        ``grow``, ``q``'s batch is one sequence's chunks and entry b's middle ends ``(B - 1 - b)·grow``
        rows before ``hi`` (here entry by entry)."""
        if grow:
            b = q.shape[0]
            return torch.cat(
                [
                    self.score_blocks(
                        q[i : i + 1],
                        lo,
                        hi - (b - 1 - i) * grow,
                        blocks[i : i + 1],
                        block_size,
                        top_k,
                        backend,
                    )
                    for i in range(b)
                ]
            )
        tail = lo + (hi - lo) // block_size * block_size
        kc = self.take_key_blocks(lo, blocks, block_size)
        if hi > tail:  # the partial block at the end of the middle
            kc = torch.cat([kc, self.read_keys(tail, hi)], dim=2)  # [B, Hkv, L2, D]
        local = score_topk(q, kc, top_k, backend=backend)  # [B, H, Q, k'] into [0, L2)
        return rows_of_hits(block_rows(blocks, block_size, hi - lo), local)

    @abstractmethod
    def block_summaries(self, origin: int, block_size: int, n_blocks: int) -> torch.Tensor:
        """``[B, Hkv, n_blocks, 2D]`` ``[centre | radius]`` of the key blocks from row ``origin``
        (:func:`~reattn_llm.kv.summaries.block_summaries`)."""

    @abstractmethod
    def read_scope(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows ``idx [B, N]`` of a scope -> ``(K, V, gather_idx)``: ``K, V [B, Hkv, T', D]`` and
        ``gather_idx [B, N]`` such that row ``gather_idx[b, n]`` of K/V is cache row ``idx[b, n]``
        (the arguments of :func:`~reattn_llm.kernels.scope_attention`)."""

    def score_middle(
        self, q: torch.Tensor, lo: int, hi: int, top_k: int, backend: str, grow: int = 0
    ) -> torch.Tensor:
        """Exact top-k of ``q [B, H, Q, D]`` over key rows ``[lo, hi)``: ``[B, H, Q, k]`` in ``[0, hi - lo)``
        (:func:`exact_topk`)."""
        return exact_topk(q, self, lo, hi, top_k, backend, grow)


def exact_topk(
    q: torch.Tensor, reader: KVReader, lo: int, hi: int, top_k: int, backend: str, grow: int = 0
) -> torch.Tensor:
    """The exact top-k keys of rows ``[lo, hi)`` for every (query head, query): the one place it is decided.

    Keys are read in blocks of ``reader.key_block_rows`` rows (one view for model-dtype keys on the
    device; bounded blocks of dequantised fp8 or host rows); each block is scored by
    :func:`~reattn_llm.kernels.score_topk`, its hits re-scored (fp32, fp64 for fp64 inputs) and
    merged into a running top-k by :func:`~reattn_llm.kernels.torch_ops.merge_topk`.

    Args:
        q: ``[B, H, Q, D]`` un-rotated queries; query head h reads KV head ``h // (H / Hkv)``.
        reader: the layer's keys.
        lo, hi: the rows scored (the middle).
        top_k: hits per (query head, query); ``min(top_k, hi - lo)`` are returned.
        backend: the resolved kernel backend.
        grow: ``q``'s batch is one sequence's chunks (the reader's batch is 1): entry b scores rows
            ``[lo, hi - (B - 1 - b)·grow)``, as alone: keys in one view in one call
            (:func:`~reattn_llm.kernels.score_topk`'s ``grow``), keys read in blocks entry by entry.

    Returns:
        ``[B, H, Q, min(top_k, hi - lo)]`` int64 row offsets in ``[0, hi - lo)``, best first (with
        ``grow``, ``min(top_k, the first entry's rows)``).
    """
    step = max(1, reader.key_block_rows)
    if grow and hi - lo <= step:
        keys = reader.read_keys(lo, hi).expand(q.shape[0], -1, -1, -1)
        return score_topk(q, keys, top_k, backend=backend, grow=grow)
    if grow:
        b = q.shape[0]
        kk = min(top_k, hi - lo - (b - 1) * grow)
        parts = (
            exact_topk(q[i : i + 1], reader, lo, hi - (b - 1 - i) * grow, top_k, backend) for i in range(b)
        )
        return torch.cat([p[..., :kk] for p in parts])
    if hi - lo <= step:
        return score_topk(q, reader.read_keys(lo, hi), top_k, backend=backend)
    b, h, nq, d = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    best_v = best_i = None
    for s in range(lo, hi, step):
        kb = reader.read_keys(s, min(hi, s + step))
        idx = score_topk(q, kb, top_k, backend=backend)  # [B, H, Q, k']
        kk, hkv = idx.shape[-1], kb.shape[1]
        # query head h reads KV head h // g: the hits of a KV head's g query heads are contiguous
        rows = idx.reshape(b, hkv, (h // hkv) * nq * kk, 1).expand(-1, -1, -1, d)
        hit = kb.gather(2, rows).reshape(b, h, nq, kk, d)
        val = (hit.to(acc) * q.to(acc)[:, :, :, None]).sum(-1)
        best_v, best_i = merge_topk(best_v, best_i, val, idx + (s - lo), top_k)
    assert best_i is not None
    return best_i


class KVLayer(CacheLayerMixin, KVReader):
    """A ReAttention cache layer: a transformers cache layer that is also a :class:`KVReader`.

    It keeps un-rotated keys (the patch feeds them so) and values, ``length`` rows of each, and the
    block summaries of its keys (:class:`~reattn_llm.kv.summaries.KeySummaries`), dropped when rows
    are cropped or moved.

    Args:
        reserve: rows to make room for at the first update (e.g. the prompt length).
        budget: the cache's cap on device bytes, charged when buffers grow.
    """

    is_compileable = False
    is_sliding = False
    is_croppable = True

    def __init__(self, reserve: int = 0, budget: MemoryBudget | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.length = 0
        self.reserve_tokens = reserve
        self.budget = budget
        self.summaries = KeySummaries()
        #: ``(row, end)`` while decode steps run static (:meth:`hold_static`), else None
        self._static: tuple[torch.Tensor, int] | None = None

    def hold_static(self, row: torch.Tensor | None, end: int, length: int) -> None:
        """Static decode steps (:mod:`reattn_llm.runtime.graphs`): from now on a one-token update
        writes its K/V at the device row ``row`` (``[1]`` int64) and every step sees the rows up to
        ``end`` (the bucket's last step; rows not written yet are masked by the attention), so every
        step of the bucket has the same shapes and addresses; room for ``end`` rows is made now
        (:meth:`_room_for_static`). ``row=None`` ends it: ``length`` rows are held (the host's count
        of the rows written)."""
        if row is not None:
            self._room_for_static(end)
            self._static = (row, end)
            self.length = end
        else:
            self._static = None
            self.length = length
        self._sync_views()

    def _room_for_static(self, end: int) -> None:
        """Make room for rows up to ``end`` that lasts the whole bucket (no growth or move after)."""
        raise NotImplementedError(f"{type(self).__name__} does not run static decode steps")

    def _static_update(self, key_states: torch.Tensor, value_states: torch.Tensor) -> bool:
        """A one-token update while :meth:`hold_static` holds: write it at the held device row
        (:meth:`_write_at`) and keep the views at the bucket's end. False (nothing done) otherwise."""
        if self._static is None or key_states.shape[2] != 1:
            return False
        row, end = self._static
        self._write_at(row, key_states, value_states)
        self.length = end
        self._sync_views()
        return True

    def _write_at(self, row: torch.Tensor, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Store one token's ``[B, Hkv, 1, D]`` K/V at the device index ``row`` (``[1]`` int64)."""
        raise NotImplementedError(f"{type(self).__name__} does not run static decode steps")

    def _sync_views(self) -> None:
        """Refresh the ``keys``/``values`` views after ``length`` changed."""

    @abstractmethod
    def reserve(self, total_tokens: int) -> None:
        """Make room for ``total_tokens`` rows (avoids growth copies in a long prefill)."""

    @abstractmethod
    def dense(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` rows as ``[B, Hkv, n, D]`` K and V, in the model's dtype."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held on the compute device (buffers at capacity, block summaries included)."""

    def host_nbytes(self) -> int:
        """Bytes held in host memory (offloaded rows)."""
        return 0

    def block_summaries(self, origin: int, block_size: int, n_blocks: int) -> torch.Tensor:
        return self.summaries.get(self.read_keys, origin, block_size, n_blocks, self.key_block_rows)

    # -- transformers' layer API ---------------------------------------------------------------
    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def _emptied(self) -> None:
        """No rows left (``reset``): nothing summarised, nothing pinned."""
        self.length = 0
        self.is_initialized = False
        self.summaries.clear()
        self.pinned = self.pinned_votes = None

    def _crop_length(self, tokens_to_remove: int) -> None:
        """Set ``length`` as transformers' ``crop`` asks: drop the last ``-tokens_to_remove`` rows
        (negative), or keep the first ``tokens_to_remove`` (positive); forget summaries past it."""
        new_len = (
            self.length + tokens_to_remove if tokens_to_remove < 0 else min(self.length, tokens_to_remove)
        )
        self.length = max(0, new_len)
        self.summaries.truncate(self.length)
        self.pinned = self.pinned_votes = None

    def rewind(self, length: int) -> None:
        """Keep the first ``length`` rows and the question's pinned span centres: decode the same
        prompt again (``crop`` forgets the pins, since the rows it keeps need not end with the
        question the pins came from)."""
        pins = self.pinned, self.pinned_votes
        self.crop(length)
        self.pinned, self.pinned_votes = pins
