"""Tiered K/V storage: fp8 and host-memory offload for the rows ReAttention reads only when selected.

ReAttention keeps every token's K/V but a forward reads only the global rows, the recent (local)
rows, the selected spans and, for scoring, the middle keys. :class:`TieredLayer` stores each
layer's rows in two tiers:

* **cold** (:class:`RowStore`): every row, in the model's dtype or in fp8 (float8 e4m3 with one
  fp32 scale per token and KV head, ``amax / 448``), on the compute device or in host memory
  (pinned when the compute device is CUDA). ``ReAttentionConfig(kv_dtype="fp8")`` halves the
  bytes of bf16; ``offload="values"`` moves all V to the host (K stays on the device for scoring);
  ``offload="keys_values"`` moves K too, with two-level selection: level 1 reads per-block
  summaries kept on the device, level 2 fetches only the candidate blocks' keys.
* **hot** (device, model dtype, exact): the first ``G`` rows and the recent rows
  ``[base, T)`` with ``T - base >= L + q`` for a forward of ``q`` new tokens, so every local
  window and every global sink is read exactly; the buffer is compacted (its last ``L`` rows moved
  to the front) only when it is full, which costs ``L`` rows per ``L`` appended rows.

A forward reads the scope ``[B, N]`` through :meth:`TieredLayer.gather_scope`: hot rows from the
device, the rest (the selected middle) from the cold tier, dequantised, giving compact
``[B, Hkv, N, D]`` K and V. A cold tier in host memory costs one device-to-host copy of the scope's
row indices per layer per forward (a sync); new rows go to the host with asynchronous copies
from pinned buffers, ordered on the current stream.

``TieredLayer.update`` returns zero-stride stubs ``[B, Hkv, T, D]`` that carry the layer as
``_reattn_layer``: the attention function reads through the layer, never through the stub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .cache import _GROWTH, _MIN_CAPACITY, MemoryBudget, ReAttentionLayer

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
# Rows dequantised at once when scoring fp8 keys exactly.
_SCORE_ROWS = 1 << 16


@dataclass(frozen=True)
class KVStorage:
    """How a :class:`TieredLayer` stores rows (see the module docstring)."""

    kv_dtype: str = "model"
    offload: str = "none"
    global_size: int = 0
    local_size: int = 0

    @classmethod
    def from_config(cls, config: Any) -> KVStorage | None:
        """The storage of a resolved :class:`~reattn_llm.config.ReAttentionConfig`, or None (plain cache)."""
        if not getattr(config, "tiered", False):
            return None
        return cls(config.kv_dtype, config.offload, config.global_size, config.local_size)

    @property
    def fp8(self) -> bool:
        return self.kv_dtype == "fp8"


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., D]`` -> (``uint8 [..., D]`` fp8-e4m3 bits, ``fp32 [...]`` scales): ``x ≈ fp8 * scale``."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-30)
    return (xf / scale[..., None]).to(FP8).view(torch.uint8), scale


def dequantize_fp8(bits: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8`: ``uint8 [..., D]``, ``[...]`` -> ``dtype [..., D]``."""
    return (bits.view(FP8).float() * scale[..., None]).to(dtype)


class RowStore:
    """Every row of one tensor (K or V) of one layer: ``[B, Hkv, capacity, D]`` on ``device``.

    Rows are written in order by :meth:`write` and read back in the model's ``dtype`` on the compute
    device by :meth:`read` (a contiguous range), :meth:`gather` (the same rows for every head) and
    :meth:`take` (per-head rows).
    """

    def __init__(
        self, fp8: bool, offloaded: bool, compute: torch.device, budget: MemoryBudget | None
    ) -> None:
        self.fp8 = fp8
        self.offloaded = offloaded  # in host memory (the same memory when the compute device is the CPU)
        self.device = torch.device("cpu") if offloaded else compute
        self.compute = compute
        self.pin = offloaded and compute.type == "cuda"
        self.budget = None if offloaded else budget
        self.data: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.dtype = torch.float32

    @property
    def capacity(self) -> int:
        return 0 if self.data is None else self.data.shape[2]

    def nbytes(self) -> int:
        if self.data is None:
            return 0
        n = self.data.numel() * self.data.element_size()
        return n + (0 if self.scale is None else self.scale.numel() * 4)

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device, pin_memory=self.pin)

    def ensure(self, rows: int, like: torch.Tensor, filled: int) -> None:
        """Room for ``rows`` rows, keeping the first ``filled``."""
        if rows <= self.capacity:
            return
        b, h, _, d = like.shape
        cap = max(rows, int(self.capacity * _GROWTH), _MIN_CAPACITY)
        self.dtype = like.dtype
        data = self._empty((b, h, cap, d), torch.uint8 if self.fp8 else like.dtype)
        scale = self._empty((b, h, cap), torch.float32) if self.fp8 else None
        if self.budget is not None:
            extra = 0 if scale is None else scale.numel() * 4
            self.budget.charge(self, data.numel() * data.element_size() + extra)
        if self.data is not None and filled:
            data[:, :, :filled].copy_(self.data[:, :, :filled])
            if scale is not None:
                scale[:, :, :filled].copy_(self.scale[:, :, :filled])  # type: ignore[index]
        self.data, self.scale = data, scale

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Store ``rows [B, Hkv, q, D]`` at ``[start, start + q)`` (asynchronous to pinned host memory)."""
        end = start + rows.shape[2]
        nb = self.pin
        if self.fp8:
            bits, scale = quantize_fp8(rows)
            self.data[:, :, start:end].copy_(bits, non_blocking=nb)  # type: ignore[index]
            self.scale[:, :, start:end].copy_(scale, non_blocking=nb)  # type: ignore[index]
        else:
            self.data[:, :, start:end].copy_(rows, non_blocking=nb)  # type: ignore[index]

    def _to_compute(self, data: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        if self.device != self.compute:
            if self.pin:
                data, scale = data.pin_memory(), None if scale is None else scale.pin_memory()
            data = data.to(self.compute, non_blocking=self.pin)
            scale = None if scale is None else scale.to(self.compute, non_blocking=self.pin)
        return data if scale is None else dequantize_fp8(data, scale, self.dtype)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Rows ``[lo, hi)``: ``[B, Hkv, hi - lo, D]`` in the model's dtype on the compute device."""
        scale = None if self.scale is None else self.scale[:, :, lo:hi]
        return self._to_compute(self.data[:, :, lo:hi], scale)  # type: ignore[index]

    def gather(self, idx: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """``idx [B, N]`` rows (the same for every head) -> ``[B, Hkv, N, D]``; with ``batch``, ``idx
        [1, N]`` are rows of that batch entry only."""
        assert self.data is not None
        return self.take(idx[:, None, :].expand(-1, self.data.shape[1], -1), batch)

    def take(self, rows: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """``rows [B, Hkv, R]`` per-head rows -> ``[B, Hkv, R, D]``; with ``batch``, ``rows [1, Hkv, R]``
        are rows of that batch entry only."""
        assert self.data is not None
        data, scale = self.data, self.scale
        if batch is not None:
            data = data[batch : batch + 1]
            scale = None if scale is None else scale[batch : batch + 1]
        if self.device != rows.device:
            rows = rows.to(self.device)  # one small copy, a sync for a host store
        picked = data.gather(2, rows[..., None].expand(-1, -1, -1, data.shape[3]))
        return self._to_compute(picked, None if scale is None else scale.gather(2, rows))


class TieredLayer(ReAttentionLayer):
    """A cache layer with a cold :class:`RowStore` per K and V and exact hot rows on the device."""

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
        off, fp8 = self.storage.offload, self.storage.fp8
        self.cold_k = RowStore(fp8, off == "keys_values", self.device, self.budget)
        self.cold_v = RowStore(fp8, off != "none", self.device, self.budget)
        b, h, _, d = key_states.shape
        g = self.storage.global_size
        self._hot = [
            key_states.new_empty(b, h, g, d),
            value_states.new_empty(b, h, g, value_states.shape[-1]),
        ]
        self._hot += [
            key_states.new_empty(b, h, 0, d),
            value_states.new_empty(b, h, 0, value_states.shape[-1]),
        ]
        self.base = 0

    @property
    def capacity(self) -> int:
        return 0 if self.cold_k is None else self.cold_k.capacity

    def reserve(self, total_tokens: int) -> None:
        self.reserve_tokens = max(self.reserve_tokens, total_tokens)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, Hkv, q, D]`` un-rotated keys/values; return stubs ``[B, Hkv, T, D]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q, start = key_states.shape[2], self.length
        need = start + q
        for store, rows in ((self.cold_k, key_states), (self.cold_v, value_states)):
            store.ensure(max(need, self.reserve_tokens), rows, start)  # type: ignore[union-attr]
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

    def _append_recent(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Append to the exact recent rows; when full, keep the last ``L`` rows in a buffer of ``2L + q``."""
        rk, rv = self._hot[2], self._hot[3]
        q = k.shape[2]
        held = start - self.base  # rows [base, start) are in the buffer
        cap = max(_MIN_CAPACITY, 2 * self.storage.local_size + q)
        if held + q > rk.shape[2] or rk.shape[2] > 2 * cap:  # full, or oversized after one long forward
            keep_from = max(self.base, start - self.storage.local_size)
            keep = start - keep_from
            nk, nv = k.new_empty(*k.shape[:2], cap, k.shape[3]), v.new_empty(*v.shape[:2], cap, v.shape[3])
            if keep:
                nk[:, :, :keep].copy_(rk[:, :, keep_from - self.base : held])
                nv[:, :, :keep].copy_(rv[:, :, keep_from - self.base : held])
            self._hot[2], self._hot[3] = rk, rv = nk, nv
            self.base, held = keep_from, keep
        rk[:, :, held : held + q].copy_(k)
        rv[:, :, held : held + q].copy_(v)

    def _sync_views(self) -> None:
        if self.cold_k is None:
            self.keys = self.values = None
            return
        b, h, _, d = self._hot[0].shape
        dv = self._hot[1].shape[3]
        if self._zero is None:
            self._zero = self._hot[0].new_zeros(())
        self.keys = self._zero.expand(b, h, self.length, d)
        self.values = self._zero.expand(b, h, self.length, dv)
        self.keys._reattn_layer = self  # type: ignore[attr-defined]
        self.values._reattn_layer = self  # type: ignore[attr-defined]
        self.keys._reattn_summaries = self.summaries  # type: ignore[attr-defined]

    # -- reading --------------------------------------------------------------------------------
    def read_keys(self, lo: int, hi: int) -> torch.Tensor:
        """Cold keys ``[B, Hkv, hi - lo, D]`` (dequantised, on the compute device)."""
        return self.cold_k.read(lo, hi)  # type: ignore[union-attr]

    def take_keys(self, rows: torch.Tensor) -> torch.Tensor:
        """Cold keys at per-head ``rows [B, Hkv, R]`` -> ``[B, Hkv, R, D]``."""
        return self.cold_k.take(rows)  # type: ignore[union-attr]

    def score_topk(self, q: torch.Tensor, lo: int, hi: int, top_k: int, backend: str) -> torch.Tensor:
        """Exact top-k of ``q [B, H, Q, D]`` over the cold keys ``[lo, hi)``: ``[B, H, Q, k]`` in ``[0, hi-lo)``.

        Model-dtype keys on the device are scored in place; fp8 keys in blocks of ``_SCORE_ROWS``
        dequantised rows, each block's hits re-scored and merged into a running top-k."""
        from ..kernels import score_topk
        from ..kernels.torch_ops import merge_topk

        store = self.cold_k
        assert store is not None
        if not store.fp8 and not store.offloaded:
            return score_topk(q, store.data[:, :, lo:hi], top_k, backend=backend)  # type: ignore[index]
        b, h, nq, d = q.shape
        hkv = store.data.shape[1]  # type: ignore[union-attr]
        acc = torch.promote_types(q.dtype, torch.float32)
        best_v = best_i = None
        for s in range(lo, hi, _SCORE_ROWS):
            kb = store.read(s, min(hi, s + _SCORE_ROWS))
            idx = score_topk(q, kb, top_k, backend=backend)  # [B, H, Q, k]
            kk = idx.shape[-1]
            # query head h reads KV head h // g: the hits of a KV head's g query heads are contiguous
            rows = idx.reshape(b, hkv, (h // hkv) * nq * kk, 1).expand(-1, -1, -1, d)
            hit = kb.gather(2, rows).reshape(b, h, nq, kk, d)
            val = (hit.to(acc) * q.to(acc)[:, :, :, None]).sum(-1)
            best_v, best_i = merge_topk(best_v, best_i, val, idx + (s - lo), top_k)
        assert best_i is not None
        return best_i

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
            b, h, _, d = hot_r.shape
            if store.offloaded:  # type: ignore[union-attr]
                if host_rows is None:
                    host_rows = _cold_rows(idx, ~(in_g | in_r))
                x = self._gather_host(store, host_rows, idx.shape[1])  # type: ignore[arg-type]
            else:
                x = store.gather(idx)  # type: ignore[union-attr]
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

    def middle(self, g: int) -> MiddleKeys:
        """The cold keys from row ``g`` on, read in middle coordinates (for two-level selection)."""
        return MiddleKeys(self, g)

    # -- bookkeeping ----------------------------------------------------------------------------
    def dense(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` rows as ``[B, Hkv, n, D]`` K and V in host memory (hot rows exact, the others
        dequantised), assembled in blocks so that the device never holds more than one block."""
        b = self._hot[0].shape[0]
        ks, vs = [], []
        for lo in range(0, n, _SCORE_ROWS):
            idx = torch.arange(lo, min(n, lo + _SCORE_ROWS), device=self.device)[None].expand(b, -1)
            k, v = self.gather_scope(idx)
            ks.append(k.cpu())
            vs.append(v.cpu())
        if not ks:
            return self._hot[0][:, :, :0].cpu(), self._hot[1][:, :, :0].cpu()
        return torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def nbytes(self) -> int:
        """Bytes on the compute device: cold stores kept there, hot buffers and block summaries."""
        if self.cold_k is None:
            return 0
        cold = sum(s.nbytes() for s in (self.cold_k, self.cold_v) if s is not None and not s.offloaded)
        return cold + sum(t.numel() * t.element_size() for t in self._hot) + self.summaries.nbytes()

    def host_nbytes(self) -> int:
        """Bytes of the cold stores kept in host memory."""
        return sum(s.nbytes() for s in (self.cold_k, self.cold_v) if s is not None and s.offloaded)

    def reset(self) -> None:
        self.length = self.base = 0
        self.cold_k = self.cold_v = None
        self._hot = []
        self.is_initialized = False
        self.summaries.clear()
        self._sync_views()

    def crop(self, tokens_to_remove: int) -> None:
        new_len = (
            self.length + tokens_to_remove if tokens_to_remove < 0 else min(self.length, tokens_to_remove)
        )
        self.length = max(0, new_len)
        if self.length < self.base:  # the recent rows are gone: start them again from here
            self.base = self.length
        self.summaries.truncate(self.length)
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


class MiddleKeys:
    """Cold keys of a :class:`TieredLayer` from row ``g`` on, in middle coordinates (row 0 = cache row ``g``)."""

    def __init__(self, layer: TieredLayer, g: int) -> None:
        self.layer, self.g = layer, g

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Middle rows ``[lo, hi)`` -> ``[B, Hkv, hi - lo, D]``."""
        return self.layer.read_keys(self.g + lo, self.g + hi)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-head middle ``rows [B, Hkv, R]`` -> ``[B, Hkv, R, D]``."""
        return self.layer.take_keys(rows + self.g)
