"""Tiered K/V: fp8 and host-memory offload for the rows ReAttention reads only when selected.

ReAttention keeps every token's K/V but a forward reads only the global rows, the recent (local)
rows, the selected spans and, for scoring, the middle keys. :class:`TieredLayer` stores each
layer's rows in two tiers:

* **cold** (:class:`~reattn_llm.kv.rows.RowStore`): every row, in the model's dtype or in fp8, on
  the compute device or in host memory, as :class:`~reattn_llm.kv.storage.KVStorage` says.
  ``ReAttentionConfig(kv_dtype="fp8")`` halves the bytes of bf16; ``offload="values"`` moves all V
  to the host (K stays on the device for scoring); ``offload="keys_values"`` moves K too, with
  two-level selection: level 1 reads per-block summaries kept on the device, level 2 fetches only
  the candidate blocks' keys.
* **hot** (device, model dtype, exact): the first ``G`` rows and the recent rows
  ``[base, T)`` with ``T - base >= L + q`` for a forward of ``q`` new tokens, so every local
  window and every global sink is read exactly; the buffer is compacted (its last ``L`` rows moved
  to the front) only when it is full, which costs ``L`` rows per ``L`` appended rows.

A forward reads the scope ``[B, N]`` through :meth:`TieredLayer.read_scope`: hot rows from the
device, the rest (the selected middle) from the cold tier, dequantised, giving compact
``[B, Hkv, N, D]`` K and V. A cold tier in host memory costs one device-to-host copy of the scope's
row indices per layer per forward (a sync); new rows go to the host with asynchronous copies
from pinned buffers, ordered on the current stream.

``TieredLayer.update`` returns zero-stride tensors ``[B, Hkv, T, D]`` that only carry the shape
transformers expects; the attention reads the rows through the layer, which the cache hands it.
"""

from __future__ import annotations

from typing import Any

import torch

from .layer import KVLayer
from .rows import RowStore
from .storage import BLOCK_ROWS, MIN_CAPACITY, KVStorage, MemoryBudget


class TieredLayer(KVLayer):
    """A cache layer with a cold :class:`~reattn_llm.kv.rows.RowStore` per K and V and exact hot rows
    on the device.

    Args:
        storage: the rows' layout and place, and G and L (the exact hot rows).
        reserve, budget: as :class:`~reattn_llm.kv.layer.KVLayer`.
    """

    def __init__(
        self, storage: KVStorage, reserve: int = 0, budget: MemoryBudget | None = None, **kw: Any
    ) -> None:
        super().__init__(reserve, budget)
        self.storage = storage
        self.cold_k: RowStore | None = None
        self.cold_v: RowStore | None = None
        self._hot: list[torch.Tensor] = []  # [global K, global V, recent K, recent V]
        self._zero: torch.Tensor | None = None  # the scalar the shape stubs expand
        self.base = 0  # cache row held at row 0 of the recent buffers

    # -- writing --------------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True
        st = self.storage
        self.cold_k = RowStore(st.fp8, st.keys_on_host, self.device, self.budget)
        self.cold_v = RowStore(st.fp8, st.values_on_host, self.device, self.budget)
        b, h, _, d = key_states.shape
        dv = value_states.shape[-1]
        g = st.global_size
        self._hot = [key_states.new_empty(b, h, g, d), value_states.new_empty(b, h, g, dv)]
        self._hot += [key_states.new_empty(b, h, 0, d), value_states.new_empty(b, h, 0, dv)]
        self.base = 0

    @property
    def capacity(self) -> int:
        return 0 if self.cold_k is None else self.cold_k.capacity

    def reserve(self, total_tokens: int) -> None:
        self.reserve_tokens = max(self.reserve_tokens, total_tokens)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, Hkv, q, D]`` un-rotated keys/values; return shape stubs ``[B, Hkv, T, D]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._static_update(key_states, value_states):  # a static step: write at the device row
            return self.keys, self.values  # type: ignore[return-value]
        q, start = key_states.shape[2], self.length
        need = start + q
        limit = self._row_limit(key_states, value_states)
        for store, rows in ((self.cold_k, key_states), (self.cold_v, value_states)):
            store.ensure(need, rows, start, self.reserve_tokens, limit)  # type: ignore[union-attr]
            store.write(start, rows)  # type: ignore[union-attr]
        g = self.storage.global_size
        if start < g:
            n = min(g, need) - start
            self._hot[0][:, :, start : start + n].copy_(key_states[:, :, :n])
            self._hot[1][:, :, start : start + n].copy_(value_states[:, :, :n])
        self._append_recent(key_states, value_states, start)
        self.length = need
        self._sync_views()
        return self.keys, self.values  # type: ignore[return-value]

    def _row_limit(self, k: torch.Tensor, v: torch.Tensor) -> int | None:
        """The most cold rows this layer's share of the budget holds (None: no budget); rows kept in
        host memory are not charged."""
        if self.budget is None:
            return None
        stores = ((self.cold_k, k), (self.cold_v, v))
        row = sum(s.row_bytes(x) for s, x in stores if s is not None and not s.offloaded)
        return self.budget.row_limit(row) if row else None

    def _append_recent(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Append to the exact recent rows; when full, keep the last ``L`` rows in a buffer of ``2L + q``."""
        q = k.shape[2]
        held = self._make_room(start, q)
        self._hot[2][:, :, held : held + q].copy_(k)
        self._hot[3][:, :, held : held + q].copy_(v)

    def _make_room(self, start: int, q: int) -> int:
        """Room in the recent buffers for rows ``[start, start + q)`` (``start`` rows written); when
        full (or oversized after one long forward), keep only the last ``L`` rows in a buffer of
        ``2L + q``. Returns where row ``start`` goes."""
        rk, rv = self._hot[2], self._hot[3]
        held = start - self.base  # rows [base, start) are in the buffer
        cap = max(MIN_CAPACITY, 2 * self.storage.local_size + q)
        if held + q > rk.shape[2] or rk.shape[2] > 2 * cap:
            keep_from = max(self.base, start - self.storage.local_size)
            keep = start - keep_from
            nk, nv = (
                rk.new_empty(*rk.shape[:2], cap, rk.shape[3]),
                rv.new_empty(*rv.shape[:2], cap, rv.shape[3]),
            )
            if keep:
                nk[:, :, :keep].copy_(rk[:, :, keep_from - self.base : held])
                nv[:, :, :keep].copy_(rv[:, :, keep_from - self.base : held])
            self._hot[2], self._hot[3] = nk, nv
            self.base, held = keep_from, keep
        return held

    def _write_at(self, row: torch.Tensor, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The cold stores (fp8 bits and scales) and the exact recent buffer, at the device row."""
        self.cold_k.write_at(row, key_states)  # type: ignore[union-attr]
        self.cold_v.write_at(row, value_states)  # type: ignore[union-attr]
        self._hot[2].index_copy_(2, row - self.base, key_states)
        self._hot[3].index_copy_(2, row - self.base, value_states)

    def _room_for_static(self, end: int) -> None:
        """Room in the cold stores and the recent buffers for rows up to ``end``: neither grows nor
        compacts until the bucket ends. Cold stores in host memory cannot run static
        (:func:`~reattn_llm.runtime.graphs.unsupported` says so)."""
        assert self.cold_k is not None and self.cold_v is not None, "prefill before static steps"
        limit = self._row_limit(self._hot[2], self._hot[3])
        self.cold_k.ensure(end, self._hot[2], self.length, self.reserve_tokens, limit)
        self.cold_v.ensure(end, self._hot[3], self.length, self.reserve_tokens, limit)
        self._make_room(self.length, end - self.length)

    def _sync_views(self) -> None:
        """``keys``/``values``: zero-stride ``[B, Hkv, T, D]`` stubs, the shape transformers expects."""
        if self.cold_k is None:
            self.keys = self.values = None
            return
        b, h, _, d = self._hot[0].shape
        dv = self._hot[1].shape[3]
        if self._zero is None:
            self._zero = self._hot[0].new_zeros(())
        self.keys = self._zero.expand(b, h, self.length, d)
        self.values = self._zero.expand(b, h, self.length, dv)

    # -- reading (KVReader) ----------------------------------------------------------------------
    @property
    def key_block_rows(self) -> int:
        return BLOCK_ROWS if self.cold_k is None else self.cold_k.block_rows

    def read_keys(self, lo: int, hi: int) -> torch.Tensor:
        """Cold keys ``[B, Hkv, hi - lo, D]`` (dequantised, on the compute device)."""
        return self.cold_k.read(lo, hi)  # type: ignore[union-attr]

    def take_keys(self, rows: torch.Tensor) -> torch.Tensor:
        """Cold keys at per-head ``rows [B, Hkv, R]`` -> ``[B, Hkv, R, D]``."""
        return self.cold_k.take(rows)  # type: ignore[union-attr]

    def read_scope(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The scope's rows gathered compactly (:meth:`gather_scope`); they are attended in order."""
        k, v = self.gather_scope(idx)
        return k, v, torch.arange(idx.shape[1], device=idx.device).expand_as(idx)

    def gather_scope(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scope's rows ``idx [B, N]`` -> compact ``K, V [B, Hkv, N, D]`` (model dtype, compute device):
        global and recent rows from the exact hot buffers, the others from the cold stores."""
        g = min(self.storage.global_size, self.length)
        rk, rv = self._hot[2], self._hot[3]
        n_recent = self.length - self.base
        in_g = idx < g
        in_r = (idx >= self.base) & (idx < self.length)
        host_rows = None  # the cold rows per batch entry, read to the host once for K and V
        out = []
        for hot_g, hot_r, store in ((self._hot[0], rk, self.cold_k), (self._hot[1], rv, self.cold_v)):
            assert store is not None
            b, h, _, d = hot_r.shape
            if store.offloaded:
                if host_rows is None:
                    host_rows = _cold_rows(idx, ~(in_g | in_r))
                x = self._gather_host(store, host_rows, idx.shape[1])
            else:
                x = store.gather(idx)
            if g:
                gi = idx.clamp(max=g - 1)[:, None, :, None].expand(b, h, -1, d)
                x = torch.where(in_g[:, None, :, None], hot_g.gather(2, gi), x)
            if n_recent > 0:
                ri = (idx - self.base).clamp(0, n_recent - 1)[:, None, :, None].expand(b, h, -1, d)
                x = torch.where(in_r[:, None, :, None], hot_r.gather(2, ri), x)
            out.append(x)
        return out[0], out[1]

    def _gather_host(
        self, store: RowStore, host_rows: list[tuple[torch.Tensor, torch.Tensor]], n: int
    ) -> torch.Tensor:
        """``[B, Hkv, n, D]`` with only the cold rows fetched from host memory, at their scope slots;
        the other slots are left zero (the hot rows fill them)."""
        h, d = store.data.shape[1], store.data.shape[3]  # type: ignore[union-attr]
        x = torch.zeros(len(host_rows), h, n, d, dtype=self.dtype, device=self.device)
        for bi, (slots, rows) in enumerate(host_rows):
            if rows.numel():
                x[bi].index_copy_(1, slots.to(self.device), store.gather(rows[None], batch=bi)[0])
        return x

    # -- bookkeeping ----------------------------------------------------------------------------
    def dense(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` rows as ``[B, Hkv, n, D]`` K and V in host memory (hot rows exact, the others
        dequantised), assembled in blocks so that the device never holds more than one block."""
        b = self._hot[0].shape[0]
        ks, vs = [], []
        for lo in range(0, n, BLOCK_ROWS):
            idx = torch.arange(lo, min(n, lo + BLOCK_ROWS), device=self.device)[None].expand(b, -1)
            k, v = self.gather_scope(idx)
            ks.append(k.cpu())
            vs.append(v.cpu())
        if not ks:
            return self._hot[0][:, :, :0].cpu(), self._hot[1][:, :, :0].cpu()
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def _cold(self, offloaded: bool) -> int:
        return sum(
            s.nbytes() for s in (self.cold_k, self.cold_v) if s is not None and s.offloaded == offloaded
        )

    def nbytes(self) -> int:
        """Bytes on the compute device: cold stores kept there, hot buffers and block summaries."""
        if self.cold_k is None:
            return 0
        return (
            self._cold(False) + sum(t.numel() * t.element_size() for t in self._hot) + self.summaries.nbytes()
        )

    def host_nbytes(self) -> int:
        """Bytes of the cold stores kept in host memory."""
        return self._cold(True)

    def reset(self) -> None:
        self.base = 0
        self.cold_k = self.cold_v = None
        self._hot = []
        self._emptied()
        self._sync_views()

    def crop(self, tokens_to_remove: int) -> None:
        self._crop_length(tokens_to_remove)
        if self.length < self.base:  # the recent rows are gone: start them again from here
            self.base = self.length
        self._sync_views()

    def _unsupported(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "Beam search and batch re-ordering are not supported with kv_dtype='fp8' or offload: use greedy or "
            "sampled decoding, or the default storage (kv_dtype='model', offload='none')."
        )

    reorder_cache = batch_repeat_interleave = batch_select_indices = _unsupported  # type: ignore[assignment]


def _cold_rows(idx: torch.Tensor, cold: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch entry, the scope slots of ``idx [B, N]`` that are cold and their cache rows (on the
    host: this is the one sync per layer and forward of a host store)."""
    cold_cpu, idx_cpu = cold.cpu(), idx.cpu()
    out = []
    for bi in range(idx.shape[0]):
        slots = cold_cpu[bi].nonzero().flatten()
        out.append((slots, idx_cpu[bi, slots]))
    return out
