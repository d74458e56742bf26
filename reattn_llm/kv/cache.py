"""A KV cache of un-rotated keys in preallocated, growing buffers.

``ReAttentionCache`` is a transformers ``Cache`` whose layers keep every key *before* RoPE (the
patch feeds them un-rotated) and every value, in buffers ``[B, Hkv, capacity, D]`` that grow
geometrically (or to a reserved size) instead of being re-concatenated each step.
``update`` returns views of the filled part, ``[B, Hkv, T, D]``. The key view carries the
layer's :class:`~reattn_llm.two_level.KeySummaries` as ``_reattn_summaries`` (block summaries
for two-level selection, kept across forwards and dropped when rows are cropped or moved).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..method.two_level import KeySummaries

_MIN_CAPACITY = 256
_GROWTH = 1.5


class MemoryBudget:
    """A cap on the bytes all K/V buffers of one cache may hold; growing past it raises
    ``torch.OutOfMemoryError``, exactly like running out of device memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held: dict[int, int] = {}

    def charge(self, owner: object, nbytes: int) -> None:
        held = sum(v for k, v in self._held.items() if k != id(owner))
        if held + nbytes > self.max_bytes:
            raise torch.OutOfMemoryError(
                f"KV cache budget exceeded: {held + nbytes} bytes > max {self.max_bytes} bytes"
            )
        self._held[id(owner)] = nbytes


class ReAttentionLayer(CacheLayerMixin):
    """One layer's un-rotated K/V, ``[B, Hkv, capacity, D]`` buffers filled up to ``length``."""

    is_compileable = False
    is_sliding = False
    is_croppable = True

    def __init__(self, reserve: int = 0, budget: MemoryBudget | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.length = 0
        self.reserve_tokens = reserve
        self.budget = budget
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.summaries = KeySummaries()

    # -- buffers ------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True
        self._allocate(max(self.reserve_tokens, _MIN_CAPACITY, key_states.shape[2]), key_states, value_states)

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
            self.keys._reattn_summaries = self.summaries  # type: ignore[attr-defined]

    def reserve(self, total_tokens: int) -> None:
        """Make room for ``total_tokens`` in one allocation (avoids growth copies in a long prefill)."""
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
        need = self.length + q
        if need > self.capacity:
            self._allocate(max(need, int(self.capacity * _GROWTH), self.reserve_tokens), self._k, self._v)  # type: ignore[arg-type]
        self._k[:, :, self.length : need].copy_(key_states)  # type: ignore[index]
        self._v[:, :, self.length : need].copy_(value_states)  # type: ignore[index]
        self.length = need
        self._sync_views()
        return self.keys, self.values  # type: ignore[return-value]

    # -- transformers' layer API ---------------------------------------------------------------
    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def dense(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` rows as ``[B, Hkv, n, D]`` K and V."""
        return self.keys[:, :, :n], self.values[:, :, :n]  # type: ignore[index]

    def nbytes(self) -> int:
        """Bytes held by this layer's buffers (capacity, not just the filled part), block summaries included."""
        if self._k is None:
            return 0
        kv = self._k.numel() * self._k.element_size() + self._v.numel() * self._v.element_size()  # type: ignore[union-attr]
        return kv + self.summaries.nbytes()

    def reset(self) -> None:
        self.length = 0
        self._k = self._v = None
        self.is_initialized = False
        self.summaries.clear()
        self._sync_views()

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (negative, as transformers calls it), or keep
        the first ``tokens_to_remove`` when it is positive."""
        new_len = (
            self.length + tokens_to_remove if tokens_to_remove < 0 else min(self.length, tokens_to_remove)
        )
        self.length = max(0, new_len)
        self.summaries.truncate(self.length)
        self._sync_views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self._k is not None:
            self._k = self._k.index_select(0, beam_idx.to(self._k.device))
            self._v = self._v.index_select(0, beam_idx.to(self._v.device))  # type: ignore[union-attr]
            self.summaries.clear()
            self._sync_views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._k is not None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)  # type: ignore[union-attr]
            self.summaries.clear()
            self._sync_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None:
            self._k = self._k[indices]
            self._v = self._v[indices]  # type: ignore[index]
            self.summaries.clear()
            self._sync_views()


class ReAttentionCache(Cache):
    """A transformers ``Cache`` of :class:`ReAttentionLayer` s, one per decoder layer.

    Args:
        num_layers: decoder layers; if omitted, layers are added as ``update`` reaches them.
        reserve: tokens to preallocate per layer at first use (e.g. the prompt length).
        max_bytes: optional cap on the device K/V bytes of all layers (see :class:`MemoryBudget`).
        storage: fp8 / host-offloaded rows (:class:`~reattn_llm.tiered.KVStorage`, from
            ``KVStorage.from_config(config)``); None keeps every row in the model's dtype on the device.
    """

    def __init__(
        self,
        num_layers: int | None = None,
        reserve: int = 0,
        max_bytes: int | None = None,
        storage: Any = None,
    ) -> None:
        budget = MemoryBudget(max_bytes) if max_bytes else None

        def make() -> ReAttentionLayer:
            if storage is None:
                return ReAttentionLayer(reserve, budget)
            from .tiered import TieredLayer

            return TieredLayer(storage, reserve, budget)

        if num_layers is None:
            super().__init__(layer_class_to_replicate=make)  # type: ignore[arg-type]
        else:
            super().__init__(layers=[make() for _ in range(num_layers)])
        self._reserve = reserve

    def host_nbytes(self) -> int:
        """Bytes kept in host memory (offloaded rows)."""
        return sum(getattr(layer, "host_nbytes", lambda: 0)() for layer in self.layers)

    def reserve(self, total_tokens: int) -> None:
        """Make room for ``total_tokens`` per layer up front (one allocation per buffer)."""
        self._reserve = max(self._reserve, total_tokens)
        for layer in self.layers:
            layer.reserve(total_tokens)  # type: ignore[union-attr]

    def nbytes(self) -> int:
        """Bytes held by all K/V buffers."""
        return sum(layer.nbytes() for layer in self.layers)  # type: ignore[union-attr]
