"""Per-block key summaries for two-level selection, kept by each cache layer.

The middle keys are cut into blocks of ``block_size`` consecutive cache rows from an origin (the
first middle row, G). Level 1 scores a query ``q`` against a block by the blend
``w·bound + (1 - w)·q·mean`` of Quest's upper bound of ``q·k`` over the block,
``bound = sum_d max(q_d·max_d, q_d·min_d)``, and the mean key's score (``w``:
:data:`BOUND_WEIGHT`). With ``mid = (max + min) / 2`` and ``half = (max - min) / 2`` per dimension
the bound is ``q·mid + |q|·half``, so the blend is two dots of width D,

    s = q·centre + |q|·radius,   centre = w·mid + (1 - w)·mean,   radius = w·half,

and a summary keeps ``[centre | radius]`` along the last dimension: ``[B, Hkv, n_blocks, 2D]``
(:func:`block_summaries`; computed in fp32, stored in the keys' dtype). Two dots where
``[relu(q) | min(q, 0) | q]·[max | min | mean]`` took three: level 1's FLOPs and a summary's bytes
are 2/3 of the three-part form's (one H100, BENCHMARKS.md run 18: the 8B shape's level 1 over a
forward's chunks 3.20 ms against 4.87; on real keys the same recall). A cache layer's
:class:`KeySummaries` summarises each block once, when a selection first needs it, and keeps it;
:mod:`reattn_llm.method.two_level` ranks blocks from them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .storage import GROWTH

#: Weight of the upper bound against the mean score in the level-1 blend. On real keys of the default
#: model (32K middle keys, 508 candidate blocks) the share of exact hits recalled was 0.80 with the
#: mean alone (0), 0.85 / 0.84 / 0.83 with 0.2 / 0.3 / 0.5, and 0.78 with the bound alone (1).
BOUND_WEIGHT = 0.3

#: Reads key rows ``[lo, hi)`` of a cache layer: ``[B, Hkv, hi - lo, D]``.
KeyRead = Callable[[int, int], torch.Tensor]


def block_summaries(keys: torch.Tensor, block_size: int, weight: float = BOUND_WEIGHT) -> torch.Tensor:
    """``keys [B, Hkv, n*bs (+r), D]`` -> ``[B, Hkv, n, 2D]``: per full block, per dimension
    ``[centre | radius]`` of the blend with bound weight ``weight`` (module docstring; fp32 math,
    stored in the keys' dtype). ``weight=1`` gives Quest's bound alone: ``[mid | half]``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"block_summaries: weight must be in [0, 1], got {weight}")
    b, h, rows, d = keys.shape
    n = rows // block_size
    blocks = keys[:, :, : n * block_size].reshape(b, h, n, block_size, d)
    acc = torch.promote_types(keys.dtype, torch.float32)
    hi, lo = blocks.amax(dim=3).to(acc), blocks.amin(dim=3).to(acc)
    centre = (weight * 0.5) * (hi + lo) + (1.0 - weight) * blocks.mean(dim=3, dtype=acc)
    return torch.cat([centre, (weight * 0.5) * (hi - lo)], dim=-1).to(keys.dtype)


class KeySummaries:
    """Per-block ``[centre | radius]`` summaries of one cache layer's keys, filled as blocks are needed.

    Blocks are ``[origin + j·bs, origin + (j+1)·bs)`` in absolute cache rows; a block is
    summarised once (when a caller first needs it, by then it is complete in the cache) and kept.
    The cache layer calls :meth:`truncate` when it drops rows and :meth:`clear` when rows move.
    """

    def __init__(self) -> None:
        self.origin = -1
        self.block_size = 0
        self.done = 0  # blocks summarised, from the origin
        self._buf: torch.Tensor | None = None

    def clear(self) -> None:
        self.done = 0
        self._buf = None

    def truncate(self, length: int) -> None:
        """The cache now holds ``length`` rows: forget blocks that reach past them."""
        if self.block_size:
            self.done = min(self.done, max(0, (length - self.origin) // self.block_size))

    def nbytes(self) -> int:
        return 0 if self._buf is None else self._buf.numel() * self._buf.element_size()

    def get(
        self, read: KeyRead, origin: int, block_size: int, n_blocks: int, step: int = 1 << 16
    ) -> torch.Tensor:
        """Summaries ``[B, Hkv, n_blocks, 2D]`` of the first ``n_blocks`` blocks from ``origin``.

        Args:
            read: the layer's key rows ``(lo, hi) -> [B, Hkv, hi - lo, D]``; rows up to
                ``origin + n_blocks·bs`` are final.
            step: rows read at once (rounded down to whole blocks, at least one).
        """
        if origin != self.origin or block_size != self.block_size:
            self.origin, self.block_size = origin, block_size
            self.clear()
        if n_blocks == 0:
            return block_summaries(read(origin, origin), block_size)
        per = max(1, step // block_size) * block_size
        while self.done < n_blocks:
            lo = origin + self.done * block_size
            rows = read(lo, min(origin + n_blocks * block_size, lo + per))
            summ = block_summaries(rows, block_size)
            if not self._fits(summ):  # batch, heads, head dim, dtype or device changed: start over
                if self.done:
                    self.clear()
                    continue
                self._buf = None
            self._grow(summ, n_blocks)
            self._buf[:, :, self.done : self.done + summ.shape[2]].copy_(summ)  # type: ignore[index]
            self.done += summ.shape[2]
        return self._buf[:, :, :n_blocks]  # type: ignore[index]

    def _fits(self, summ: torch.Tensor) -> bool:
        buf = self._buf
        return (
            buf is not None
            and buf.shape[:2] == summ.shape[:2]
            and buf.shape[3] == summ.shape[3]
            and buf.dtype == summ.dtype
            and buf.device == summ.device
        )

    def _grow(self, like: torch.Tensor, n_blocks: int) -> None:
        """Room for ``n_blocks`` summaries shaped like ``like [B, Hkv, *, 2D]``, keeping those done."""
        buf = self._buf
        if buf is not None and buf.shape[2] >= n_blocks:
            return
        b, h, _, w = like.shape
        cap = max(n_blocks, 64 if buf is None else int(buf.shape[2] * GROWTH))
        grown = like.new_empty(b, h, cap, w)
        if buf is not None and self.done:
            grown[:, :, : self.done].copy_(buf[:, :, : self.done])
        self._buf = grown
