"""Every row of one tensor (K or V) of one cache layer, in the model's dtype or fp8, on the device
or in host memory: :class:`RowStore`, and the fp8 quantisation it uses.

fp8 rows are float8 e4m3 bits with one fp32 scale per row (token and KV head), ``amax / 448``
(:mod:`reattn_llm.kv.storage` holds the layout). Reads return the model's dtype on the compute
device; a store in host memory is pinned when the compute device is CUDA, written with
asynchronous copies and read with one copy of the wanted rows.
"""

from __future__ import annotations

import sys

import torch

from .storage import BLOCK_ROWS, FP8, FP8_MAX, FP8_SCALE_BYTES, MemoryBudget, rows_to_allocate


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

    Args:
        fp8: store float8 e4m3 bits and a scale per row instead of the model's dtype.
        offloaded: keep the rows in host memory (the same memory when the compute device is the CPU).
        compute: the device reads return to.
        budget: charged for stores on the compute device (host stores are not).
    """

    def __init__(
        self, fp8: bool, offloaded: bool, compute: torch.device, budget: MemoryBudget | None
    ) -> None:
        self.fp8 = fp8
        self.offloaded = offloaded
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

    @property
    def block_rows(self) -> int:
        """Rows worth reading at once: all of them when :meth:`read` returns a view (model dtype on the
        compute device), else :data:`~reattn_llm.kv.storage.BLOCK_ROWS` (each read is a copy)."""
        return sys.maxsize if not self.fp8 and self.device == self.compute else BLOCK_ROWS

    def nbytes(self) -> int:
        if self.data is None:
            return 0
        n = self.data.numel() * self.data.element_size()
        return n + (0 if self.scale is None else self.scale.numel() * 4)

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device, pin_memory=self.pin)

    def row_bytes(self, like: torch.Tensor) -> int:
        """Bytes of one token's rows (all batch entries and heads) shaped like ``like [B, Hkv, *, D]``."""
        b, h, _, d = like.shape
        return b * h * (d + FP8_SCALE_BYTES if self.fp8 else d * like.element_size())

    def ensure(
        self, rows: int, like: torch.Tensor, filled: int, reserve: int = 0, limit: int | None = None
    ) -> None:
        """Room for ``rows`` rows shaped like ``like [B, Hkv, *, D]``, keeping the first ``filled``; the
        size is :func:`~reattn_llm.kv.storage.rows_to_allocate`'s (``reserve``: the total expected,
        ``limit``: the most rows the budget affords)."""
        if rows <= self.capacity:
            return
        b, h, _, d = like.shape
        cap = rows_to_allocate(rows, self.capacity, reserve, limit)
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

    def write_at(self, row: torch.Tensor, rows: torch.Tensor) -> None:
        """Store one token's ``rows [B, Hkv, 1, D]`` at the device index ``row`` (``[1]`` int64): a
        static decode step's write, with no host value (a store on the compute device only)."""
        assert self.data is not None and not self.offloaded, (
            "static writes need a store on the compute device"
        )
        if self.fp8:
            bits, scale = quantize_fp8(rows)
            self.data.index_copy_(2, row, bits)
            self.scale.index_copy_(2, row, scale)  # type: ignore[union-attr]
        else:
            self.data.index_copy_(2, row, rows)

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
