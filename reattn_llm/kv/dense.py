"""Every row in the model's dtype on the device: :class:`DenseLayer` (the cache layer, preallocated
growing buffers) and :class:`TensorKV` (raw tensors of a plain transformers cache, or of none).

Both read through views ``keys, values [B, Hkv, T, D]``: scoring reads the middle in place, the
scope-attention kernel gathers the scope's rows straight from them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..kernels import score_topk_blocks
from .layer import KVLayer, KVReader
from .storage import MemoryBudget, rows_to_allocate
from .summaries import block_summaries


class _DenseReads(KVReader):
    """:class:`KVReader` over views ``self.keys`` and ``self.values`` ``[B, Hkv, T, D]``."""

    keys: torch.Tensor | None
    values: torch.Tensor | None

    def read_keys(self, lo: int, hi: int) -> torch.Tensor:
        return self.keys[:, :, lo:hi]  # type: ignore[index]

    def take_keys(self, rows: torch.Tensor) -> torch.Tensor:
        k = self.keys
        return k.gather(2, rows[..., None].expand(-1, -1, -1, k.shape[3]))  # type: ignore[union-attr]

    def take_key_blocks(self, lo: int, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
        k = self.keys
        assert k is not None
        b, h, _, d = k.shape
        n = (k.shape[2] - lo) // block_size
        full = k[:, :, lo : lo + n * block_size]
        if n == 0 or full.stride(3) != 1 or full.stride(2) != d:
            return super().take_key_blocks(lo, blocks, block_size)
        # the rows of a head are contiguous: copy whole blocks
        kb = full.unflatten(2, (n, block_size)).flatten(3)  # [B, Hkv, n, bs*D], a view
        return kb.gather(2, blocks[..., None].expand(-1, -1, -1, block_size * d)).reshape(b, h, -1, d)

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
        """The candidate blocks scored where they lie, no gather
        (:func:`~reattn_llm.kernels.score_topk_blocks`: a block table into the middle's view; with
        ``grow`` the middle expanded over ``q``'s batch of chunks, each entry's ending earlier)."""
        keys = self.read_keys(lo, hi)
        if grow:
            keys = keys.expand(q.shape[0], -1, -1, -1)
        return score_topk_blocks(q, keys, blocks, block_size, top_k, backend, grow)

    def read_scope(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.keys, self.values, idx  # type: ignore[return-value]


class TensorKV(_DenseReads):
    """Raw un-rotated ``keys [B, Hkv, T, D]`` and ``values`` (None when only keys are scored) as a
    :class:`KVReader`: what the attention reads with a plain transformers cache or none. Block
    summaries are computed on each call (nothing keeps them)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor | None = None) -> None:
        self.keys, self.values = keys, values
        self.length = keys.shape[2]

    def block_summaries(self, origin: int, block_size: int, n_blocks: int) -> torch.Tensor:
        return block_summaries(self.read_keys(origin, origin + n_blocks * block_size), block_size)


class DenseLayer(_DenseReads, KVLayer):
    """One layer's un-rotated K/V in ``[B, Hkv, capacity, D]`` buffers filled up to ``length``.

    Buffers grow geometrically (or to a reserved size) instead of being re-concatenated each step;
    ``update`` returns views of the filled part, ``[B, Hkv, T, D]``.
    """

    def __init__(self, reserve: int = 0, budget: MemoryBudget | None = None, **kwargs: Any) -> None:
        super().__init__(reserve, budget)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True
        self._allocate(self._rows(key_states.shape[2], key_states, value_states), key_states, value_states)

    def _rows(self, need: int, key_like: torch.Tensor, value_like: torch.Tensor) -> int:
        """Rows to allocate for ``need`` (:func:`~reattn_llm.kv.storage.rows_to_allocate`, within the
        layer's share of the budget)."""
        b, h = key_like.shape[:2]
        row = (
            b
            * h
            * (
                key_like.shape[-1] * key_like.element_size()
                + value_like.shape[-1] * value_like.element_size()
            )
        )
        limit = None if self.budget is None else self.budget.row_limit(row)
        return rows_to_allocate(need, self.capacity, self.reserve_tokens, limit)

    def _allocate(self, capacity: int, key_like: torch.Tensor, value_like: torch.Tensor) -> None:
        b, h, _, dk = key_like.shape
        dv = value_like.shape[-1]
        if self.budget is not None:
            self.budget.charge(
                self, b * h * capacity * (dk * key_like.element_size() + dv * value_like.element_size())
            )
        k = key_like.new_empty(b, h, capacity, dk)
        v = value_like.new_empty(b, h, capacity, dv)
        if self._k is not None and self.length:
            k[:, :, : self.length].copy_(self._k[:, :, : self.length])
            v[:, :, : self.length].copy_(self._v[:, :, : self.length])  # type: ignore[index]
        self._k, self._v = k, v
        self._sync_views()

    def _sync_views(self) -> None:
        if self._k is None:
            self.keys = self.values = None
        else:
            self.keys = self._k[:, :, : self.length]
            self.values = self._v[:, :, : self.length]  # type: ignore[index]

    def reserve(self, total_tokens: int) -> None:
        self.reserve_tokens = max(self.reserve_tokens, total_tokens)
        if self._k is not None and total_tokens > self.capacity:
            self._allocate(total_tokens, self._k, self._v)  # type: ignore[arg-type]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, Hkv, q, D]`` new (un-rotated) keys/values; return all ``[B, Hkv, T, D]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[2]
        if self._static_update(key_states, value_states):  # a static step: at the device row, view to the end
            return self.keys, self.values  # type: ignore[return-value]
        need = self.length + q
        if need > self.capacity:
            self._allocate(self._rows(need, self._k, self._v), self._k, self._v)  # type: ignore[arg-type]
        self._k[:, :, self.length : need].copy_(key_states)  # type: ignore[index]
        self._v[:, :, self.length : need].copy_(value_states)  # type: ignore[index]
        self.length = need
        self._sync_views()
        return self.keys, self.values  # type: ignore[return-value]

    def _room_for_static(self, end: int) -> None:
        self.reserve(end)

    def _write_at(self, row: torch.Tensor, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._k.index_copy_(2, row, key_states)  # type: ignore[union-attr]
        self._v.index_copy_(2, row, value_states)  # type: ignore[union-attr]

    def dense(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, :, :n], self.values[:, :, :n]  # type: ignore[index]

    def nbytes(self) -> int:
        if self._k is None:
            return 0
        kv = self._k.numel() * self._k.element_size() + self._v.numel() * self._v.element_size()  # type: ignore[union-attr]
        return kv + self.summaries.nbytes()

    def reset(self) -> None:
        self._k = self._v = None
        self._emptied()
        self._sync_views()

    def crop(self, tokens_to_remove: int) -> None:
        self._crop_length(tokens_to_remove)
        self._sync_views()

    def _moved(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """The batch entries were re-ordered or repeated: new buffers, no summaries."""
        self._k, self._v = k, v
        self.summaries.clear()
        self.pinned = self.pinned_votes = None
        self._sync_views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self._k is not None:
            self._moved(
                self._k.index_select(0, beam_idx.to(self._k.device)),
                self._v.index_select(0, beam_idx.to(self._v.device)),  # type: ignore[union-attr]
            )

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._k is not None:
            self._moved(self._k.repeat_interleave(repeats, dim=0), self._v.repeat_interleave(repeats, dim=0))  # type: ignore[union-attr]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None:
            self._moved(self._k[indices], self._v[indices])  # type: ignore[index]
