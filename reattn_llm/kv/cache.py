"""``ReAttentionCache``: a transformers ``Cache`` of un-rotated K/V, one :class:`~reattn_llm.kv.layer.KVLayer`
per decoder layer, and :func:`layer_reader`, how the attention finds what to read.

The layers keep every key *before* RoPE (the patch feeds them un-rotated) and every value. With the
default :class:`~reattn_llm.kv.storage.KVStorage` each layer is a
:class:`~reattn_llm.kv.dense.DenseLayer` (model dtype, on the device); with fp8 or offload a
:class:`~reattn_llm.kv.tiered.TieredLayer`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from .dense import DenseLayer, TensorKV
from .layer import KVLayer, KVReader
from .storage import KVStorage, MemoryBudget
from .tiered import TieredLayer


def make_layer(storage: KVStorage | None, reserve: int = 0, budget: MemoryBudget | None = None) -> KVLayer:
    """An empty cache layer for ``storage`` (None: the default, every row in the model's dtype on the device)."""
    if storage is not None and storage.tiered:
        return TieredLayer(storage, reserve, budget)
    return DenseLayer(reserve, budget)


class SlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window layer (Gemma 3's local layers, which stay stock): transformers' own
    ``DynamicSlidingWindowLayer`` (kept so the stock mask and attention see exactly what they
    expect: the last ``sliding_window - 1`` rows plus the new ones), with the byte counts the
    ReAttention cache reports. ``is_sliding`` is True.

    Cropping back (a kept document prefix reused by the next question) is exact only where the
    rows are still held: while the layer holds all its rows (fewer than the window), or at the end
    of one of the last :attr:`snapshots` multi-token updates (prefill forwards), whose window rows
    are kept (at most ``sliding_window - 1`` rows each). :meth:`can_crop` says which, and
    :meth:`rows_at` / :meth:`restore` carry such a point to and from a saved document cache.

    After a multi-token update the held rows are compacted (transformers keeps a view of the whole
    concatenation, ``sliding_window - 1`` plus the chunk's rows) and that compact copy is the
    newest snapshot too, so a layer holds at most :meth:`max_rows` rows.
    """

    snapshots = 4

    def __init__(self, sliding_window: int, **kwargs: Any) -> None:
        super().__init__(sliding_window=sliding_window, **kwargs)
        self._snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def max_rows(cls, sliding_window: int) -> int:
        """The most K (and V) rows per KV head one layer of this window holds: :attr:`snapshots` of at
        most ``sliding_window - 1`` rows, and the live rows (one more after a decode step)."""
        return (cls.snapshots + 1) * sliding_window

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().update(key_states, value_states, *args, **kwargs)
        if key_states.shape[-2] > 1:  # never modified in place: the snapshot shares the compact rows
            self.keys, self.values = self.keys.clone(), self.values.clone()
            self._snapshots[self.cumulative_length] = (self.keys, self.values)
            while len(self._snapshots) > self.snapshots:
                self._snapshots.pop(next(iter(self._snapshots)))
        return out

    def reset(self) -> None:
        super().reset()
        self._snapshots = {}

    def rows_at(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows this layer held after its first ``n`` tokens (the last ``min(n, sliding_window - 1)``):
        ``[B, Hkv, rows, D]`` K and V, as :meth:`crop` would leave them.

        Raises:
            RuntimeError: those rows are no longer held (:meth:`can_crop` is false)."""
        if not self.is_initialized or n == 0:
            raise RuntimeError("This sliding-window layer holds no rows yet.")
        if n == self.cumulative_length:
            return self.keys, self.values
        if not self.can_crop(n):
            raise RuntimeError(
                f"This sliding-window layer holds the last {self.sliding_window - 1} of {self.cumulative_length} "
                f"rows, not those after {n} tokens: prefill the document again (a fresh cache)."
            )
        if n in self._snapshots:
            return self._snapshots[n]
        return self.keys[:, :, :n], self.values[:, :, :n]

    def restore(self, keys: torch.Tensor, values: torch.Tensor, n: int) -> None:
        """Hold ``keys, values [B, Hkv, min(n, sliding_window - 1), D]``: the rows after ``n`` tokens
        (:meth:`rows_at` of the layer that saved them).

        Raises:
            ValueError: the row count does not fit ``n`` and the window."""
        want = min(n, self.sliding_window - 1)
        if keys.shape != values.shape or keys.shape[-2] != want:
            raise ValueError(
                f"a sliding-window layer after {n} tokens holds {want} rows (window {self.sliding_window}), "
                f"not K {tuple(keys.shape)} / V {tuple(values.shape)}."
            )
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.cumulative_length = n
        self._snapshots = {n: (keys, values)}

    def _target(self, tokens_to_remove: int) -> int:
        n = self.cumulative_length
        return n + tokens_to_remove if tokens_to_remove < 0 else min(n, tokens_to_remove)

    def can_crop(self, tokens_to_remove: int) -> bool:
        """Whether :meth:`crop` can cut back exactly (transformers' convention: a negative count of
        rows to drop, or a positive length to keep)."""
        n = self._target(tokens_to_remove)
        return (
            n == self.cumulative_length
            or self.cumulative_length < self.sliding_window
            or n in self._snapshots
        )

    def crop(self, tokens_to_remove: int) -> None:
        """Cut back to the length :meth:`_target` gives, exactly; :meth:`can_crop` must hold.

        Raises:
            RuntimeError: the rows of that length's window are no longer held."""
        n = self._target(tokens_to_remove)
        if n == self.cumulative_length or not self.is_initialized:
            return
        if self.cumulative_length < self.sliding_window:
            self.keys, self.values = self.keys[:, :, :n], self.values[:, :, :n]
        elif n in self._snapshots:
            self.keys, self.values = self._snapshots[n]
        else:
            raise RuntimeError(
                f"This sliding-window layer holds the last {self.sliding_window - 1} of {self.cumulative_length} "
                f"rows and cannot be cut back to {n}: prefill the prompt again (a fresh cache)."
            )
        self.cumulative_length = n
        self._snapshots = {k: v for k, v in self._snapshots.items() if k <= n}

    def reserve(self, total_tokens: int) -> None:
        """No-op: a sliding layer never holds more than its window."""

    def nbytes(self) -> int:
        """Bytes of its K/V on the device: the storage of the live rows and of the snapshots (each
        counted once; a view counts its whole storage)."""
        if not self.is_initialized or self.keys is None:
            return 0
        held = {}
        for pair in ((self.keys, self.values), *self._snapshots.values()):
            for t in pair:
                st = t.untyped_storage()
                held[st.data_ptr()] = st.nbytes()
        return sum(held.values())

    def host_nbytes(self) -> int:
        """Always 0 (nothing offloaded)."""
        return 0


class ReAttentionCache(Cache):
    """A transformers ``Cache`` of :class:`~reattn_llm.kv.layer.KVLayer` s, one per decoder layer.

    Args:
        num_layers: decoder layers; if omitted, layers are added as ``update`` reaches them.
        reserve: tokens to preallocate per layer at first use (e.g. the prompt length).
        max_bytes: optional cap on the device K/V bytes of all layers, an equal share each when
            ``num_layers`` is given (see :class:`MemoryBudget`).
        storage: the rows' layout and place (``KVStorage.from_config(config)``); None keeps every row
            in the model's dtype on the device.
        sliding_windows: per layer, the window of a sliding-window layer (a :class:`SlidingLayer`
            that keeps only its window) or None for a ReAttention layer; needs ``num_layers``.
    """

    def __init__(
        self,
        num_layers: int | None = None,
        reserve: int = 0,
        max_bytes: int | None = None,
        storage: KVStorage | None = None,
        sliding_windows: list[int | None] | None = None,
    ) -> None:
        if sliding_windows is not None and (num_layers is None or len(sliding_windows) != num_layers):
            raise ValueError(
                f"sliding_windows has {None if sliding_windows is None else len(sliding_windows)} entries for "
                f"num_layers={num_layers}: give one entry (a window or None) per decoder layer."
            )
        windows = sliding_windows or [None] * (num_layers or 0)
        n_full = sum(w is None for w in windows)
        budget = MemoryBudget(max_bytes, n_full or num_layers or 1) if max_bytes else None

        def make() -> KVLayer:
            return make_layer(storage, reserve, budget)

        if num_layers is None:
            super().__init__(layer_class_to_replicate=make)  # type: ignore[arg-type]
        else:
            super().__init__(
                layers=[make() if w is None else SlidingLayer(sliding_window=w) for w in windows]  # type: ignore[misc]
            )
        self._reserve = reserve

    @property
    def cut_at_forward_ends(self) -> bool:
        """Whether some layer (a :class:`SlidingLayer`) can be cut back only to the end of one of its
        last prefill forwards, so a prefill's forwards must end where a later prompt may reuse it."""
        return any(isinstance(layer, SlidingLayer) for layer in self.layers)

    def host_nbytes(self) -> int:
        """Bytes kept in host memory (offloaded rows)."""
        return sum(layer.host_nbytes() for layer in self.layers)  # type: ignore[union-attr]

    def reserve(self, total_tokens: int) -> None:
        """Make room for ``total_tokens`` per layer up front (one allocation per buffer)."""
        self._reserve = max(self._reserve, total_tokens)
        for layer in self.layers:
            layer.reserve(total_tokens)  # type: ignore[union-attr]

    def nbytes(self) -> int:
        """Bytes held by all K/V buffers on the compute device(s)."""
        return sum(layer.nbytes() for layer in self.layers)  # type: ignore[union-attr]


def layer_reader(cache: Any, layer_idx: int | None, keys: torch.Tensor, values: torch.Tensor) -> KVReader:
    """What one attention call reads: the cache's layer ``layer_idx`` when it is a ReAttention layer
    holding the ``T`` rows just updated, else the raw ``keys, values [B, Hkv, T, D]`` (a plain
    transformers cache, or no cache) as a :class:`~reattn_llm.kv.dense.TensorKV`."""
    layers = getattr(cache, "layers", None)
    if layers is not None and layer_idx is not None and layer_idx < len(layers):
        layer = layers[layer_idx]
        if isinstance(layer, KVLayer) and layer.length == keys.shape[2]:
            return layer
    return TensorKV(keys, values)
