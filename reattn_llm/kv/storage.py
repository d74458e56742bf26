"""Storage facts, decided once: where each tensor's rows live and what one row costs.

A *row* is one token's key (or value) for one KV head: ``D`` numbers. The cache keeps every row
(ReAttention reads any of them when selected), in one of two layouts:

* the model's dtype: ``D * itemsize`` bytes;
* fp8 (``kv_dtype="fp8"``): float8 e4m3 bits, one byte per value, and one fp32 scale per row
  (``amax / 448``): ``D + 4`` bytes.

``offload`` moves rows to host memory: ``"values"`` every V row, ``"keys_values"`` every K row too
(then the two-level block summaries of the keys, ``[centre | radius]`` per block of
``summary_block`` keys, stay on the device). :class:`KVStorage` answers these questions for the
tiered cache layer (:mod:`reattn_llm.kv.tiered`) and for the capacity arithmetic
(:mod:`reattn_llm.runtime.capacity`) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: The fp8 format of stored rows and its largest finite value.
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
#: Bytes of the per-row scale of an fp8 row (fp32).
FP8_SCALE_BYTES = 4
#: Rows of fp8 or host-memory keys read (dequantised, moved to the device) at once.
BLOCK_ROWS = 1 << 16
#: Buffers grow by this factor (amortised appends) and start at this many rows (:func:`rows_to_allocate`).
GROWTH = 1.5
MIN_CAPACITY = 256


def rows_to_allocate(need: int, held: int = 0, reserve: int = 0, limit: int | None = None) -> int:
    """The growth policy of every K/V buffer: how many rows a buffer of ``held`` rows allocates to
    store ``need`` rows.

    * ``need <= held``: nothing to allocate (``held``);
    * a reserved total (``reserve >= need``, e.g. prompt + answer tokens): exactly ``reserve`` rows;
    * else amortised growth: ``max(need, GROWTH * held, MIN_CAPACITY)``;
    * and never more than ``limit`` (the rows a :class:`MemoryBudget` affords the buffer,
      :meth:`MemoryBudget.row_limit`) unless ``need`` itself is more: then the budget refuses.

    So a request of ``n`` tokens allocates at most ``max(n, limit)`` rows per buffer, and every ``n``
    up to the capacity (:func:`budget_rows` over all layers, the same number) fits the budget.
    """
    if need <= held:
        return held
    rows = reserve if reserve >= need else max(need, int(held * GROWTH), MIN_CAPACITY)
    return rows if limit is None else max(need, min(rows, limit))


def budget_rows(max_bytes: int, row_bytes: int, parts: int = 1) -> int:
    """Rows of ``row_bytes`` each that one of ``parts`` equal shares of ``max_bytes`` holds:
    ``(max_bytes // parts) // row_bytes``, which equals ``max_bytes // (parts * row_bytes)``: the
    per-layer row limit of a cache's layers and the token capacity under that cap agree."""
    return (max_bytes // max(1, parts)) // max(1, row_bytes)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class KVStorage:
    """How a cache stores its rows (see the module docstring).

    Attributes:
        kv_dtype: ``"model"`` or ``"fp8"``, the layout of the rows outside the exact global and
            recent ones.
        offload: ``"none"``, ``"values"`` or ``"keys_values"``: which rows live in host memory.
        global_size, local_size: G and L, the rows the tiered layer keeps exact on the device.
        summary_block: keys per block of the two-level summaries kept on the device for keys in host
            memory (0 when the keys stay on the device: their summaries are counted with them).
    """

    kv_dtype: str = "model"
    offload: str = "none"
    global_size: int = 0
    local_size: int = 0
    summary_block: int = 0

    @classmethod
    def from_config(cls, config: Any) -> KVStorage:
        """The storage of a :class:`~reattn_llm.method.config.ReAttentionConfig` (duck-typed; None: the
        default storage). Needs a resolved config for fp8 / offload (G, L, the summary block)."""
        if config is None:
            return cls()
        kv_dtype = getattr(config, "kv_dtype", "model")
        offload = getattr(config, "offload", "none")
        if kv_dtype == "model" and offload == "none":
            return cls()
        block = config.summary_block if offload == "keys_values" else 0
        return cls(kv_dtype, offload, config.global_size or 0, config.local_size or 0, block)

    @property
    def tiered(self) -> bool:
        """True when some rows are fp8 or in host memory (a :class:`~reattn_llm.kv.tiered.TieredLayer`)."""
        return self.fp8 or self.offload != "none"

    @property
    def fp8(self) -> bool:
        return self.kv_dtype == "fp8"

    @property
    def keys_on_host(self) -> bool:
        return self.offload == "keys_values"

    @property
    def values_on_host(self) -> bool:
        return self.offload != "none"

    def row_bytes(self, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes of one stored row of ``head_dim`` values whose model dtype is ``dtype``."""
        return head_dim + FP8_SCALE_BYTES if self.fp8 else head_dim * _itemsize(dtype)

    def device_bytes_per_row(self, head_dim: int, dtype: torch.dtype) -> int:
        """Device bytes of one token's K and V rows for one KV head (the rows kept on the device, and
        the block summaries of keys kept on the host)."""
        rows = (not self.keys_on_host) + (not self.values_on_host)
        summaries = 0
        if self.keys_on_host and self.summary_block:
            summaries = -(-2 * head_dim * _itemsize(dtype) // self.summary_block)  # [centre | radius]
        return rows * self.row_bytes(head_dim, dtype) + summaries

    def host_bytes_per_row(self, head_dim: int, dtype: torch.dtype) -> int:
        """Host bytes of one token's K and V rows for one KV head (the offloaded ones)."""
        return (self.keys_on_host + self.values_on_host) * self.row_bytes(head_dim, dtype)


class MemoryBudget:
    """A cap on the device bytes all K/V buffers of one cache may hold; growing past it raises
    ``torch.OutOfMemoryError``, exactly like running out of device memory.

    Args:
        max_bytes: the cap.
        parts: the layers that share it (each grows within its share, :meth:`row_limit`).
    """

    def __init__(self, max_bytes: int, parts: int = 1) -> None:
        self.max_bytes = max_bytes
        self.parts = max(1, parts)
        self._held: dict[int, int] = {}

    def row_limit(self, row_bytes: int) -> int:
        """The most rows of ``row_bytes`` device bytes (one token of one layer) that a layer may hold:
        its equal share of the cap (:func:`budget_rows`)."""
        return budget_rows(self.max_bytes, row_bytes, self.parts)

    def charge(self, owner: object, nbytes: int) -> None:
        """``owner`` now holds ``nbytes`` (replacing what it held before)."""
        held = sum(v for k, v in self._held.items() if k != id(owner))
        if held + nbytes > self.max_bytes:
            raise torch.OutOfMemoryError(
                f"KV cache budget exceeded: {held + nbytes} bytes > max {self.max_bytes} bytes"
            )
        self._held[id(owner)] = nbytes
