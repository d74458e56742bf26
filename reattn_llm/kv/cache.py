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
from transformers.cache_utils import Cache

from .dense import DenseLayer, TensorKV
from .layer import KVLayer, KVReader
from .storage import KVStorage, MemoryBudget
from .tiered import TieredLayer


def make_layer(storage: KVStorage | None, reserve: int = 0, budget: MemoryBudget | None = None) -> KVLayer:
    """An empty cache layer for ``storage`` (None: the default, every row in the model's dtype on the device)."""
    if storage is not None and storage.tiered:
        return TieredLayer(storage, reserve, budget)
    return DenseLayer(reserve, budget)


class ReAttentionCache(Cache):
    """A transformers ``Cache`` of :class:`~reattn_llm.kv.layer.KVLayer` s, one per decoder layer.

    Args:
        num_layers: decoder layers; if omitted, layers are added as ``update`` reaches them.
        reserve: tokens to preallocate per layer at first use (e.g. the prompt length).
        max_bytes: optional cap on the device K/V bytes of all layers, an equal share each when
            ``num_layers`` is given (see :class:`MemoryBudget`).
        storage: the rows' layout and place (``KVStorage.from_config(config)``); None keeps every row
            in the model's dtype on the device.
    """

    def __init__(
        self,
        num_layers: int | None = None,
        reserve: int = 0,
        max_bytes: int | None = None,
        storage: KVStorage | None = None,
    ) -> None:
        budget = MemoryBudget(max_bytes, num_layers or 1) if max_bytes else None

        def make() -> KVLayer:
            return make_layer(storage, reserve, budget)

        if num_layers is None:
            super().__init__(layer_class_to_replicate=make)  # type: ignore[arg-type]
        else:
            super().__init__(layers=[make() for _ in range(num_layers)])
        self._reserve = reserve

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
