"""The attention's runtime state, shared by every layer of one patched model.

:class:`PatchState` is what :func:`~reattn_llm.method.attention.reattention_forward` reads besides
its arguments (the resolved config, the RoPE tables) and what it leaves behind (the largest RoPE
position applied; per cache row, how often selections drew on it: :class:`SelectionRecorder`).
:func:`~reattn_llm.method.patch.patch` creates it and pins it on every ``self_attn`` module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..kernels.torch_ops import apply_rope, gather_kv
from .chunks import Forward, chunk_bounds
from .config import ReAttentionConfig
from .rope import RopeTable
from .selection import Scope


def last_query_probs(
    q: torch.Tensor,
    k_src: torch.Tensor,
    idx: torch.Tensor,
    scope: Scope,
    cos: torch.Tensor,
    sin: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``[H, N]`` fp32 attention probabilities of the last query of ``q [B, H, Q, D]`` (un-rotated),
    batch row 0, over the scope: keys ``k_src`` rows ``idx [B, N]``
    (:meth:`~reattn_llm.kv.layer.KVReader.read_scope`) at positions ``scope.key_pos`` (-1: padding,
    probability 0) against the query at ``scope.q_pos[:, -1]``; what the attention itself computes for
    that query, in fp32."""
    kp = scope.key_pos[:1]
    k = gather_kv(k_src[:1], idx[:1]).float()  # [1, Hkv, N, D]
    k = apply_rope(k, cos[kp.clamp(min=0)], sin[kp.clamp(min=0)])
    qp = scope.q_pos[:1, -1:]
    qr = apply_rope(q[:1, :, -1:].float(), cos[qp], sin[qp])  # [1, H, 1, D]
    h, hkv = qr.shape[1], k.shape[1]
    logits = torch.einsum("kgd,knd->kgn", qr[0, :, 0].view(hkv, h // hkv, -1), k[0]) * scale
    logits = logits.masked_fill((kp[0] < 0) | (kp[0] > qp[0, 0]), float("-inf"))
    return logits.softmax(-1).reshape(h, -1)


class ScopeObserver(Protocol):
    """A diagnostic called by every patched layer for every query chunk, with the scope the chunk
    attends (e.g. :class:`reattn_llm.lab.trace.RowTrace`: are given cache rows in scope, and how much
    attention do they get). Same arguments as :meth:`SelectionRecorder.attend`, after the layer's
    index among the patched layers."""

    def __call__(
        self,
        layer: int,
        q: torch.Tensor,
        k_src: torch.Tensor,
        idx: torch.Tensor,
        scope: Scope,
        cos: torch.Tensor,
        sin: torch.Tensor,
        scale: float,
    ) -> None: ...


class SelectionRecorder:
    """Attention mass per absolute cache row while an answer is decoded (for citations).

    ``counts[t]`` sums, over the decode steps and a few sampled layers (:attr:`layers_sampled`,
    spread over the model's upper two thirds, where retrieval heads sit), the attention probability
    the step's query gave row t, averaged over heads, for batch row 0. Every row of the scope
    counts: global, selected spans and the local window, so a document within ``G + L`` tokens
    (no selection at all) is attributed as well as a longer one. Opt-in: the engine switches it on
    while it decodes an answer. Cost per step and sampled layer: one ``[H, N]`` score matrix over
    the scope's N keys, next to the layer's own attention over the same keys.
    """

    layers_sampled = 4

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None
        self._layers: set[int] | None = None

    def wants(self, layer: int | None, n_layers: int) -> bool:
        """Whether ``layer`` (of ``n_layers``) is one of the sampled layers."""
        if self._layers is None:
            lo = n_layers // 3
            step = max(1, (n_layers - lo) // self.layers_sampled)
            self._layers = set(range(lo + step // 2, n_layers, step)[: self.layers_sampled]) or {n_layers - 1}
        return layer in self._layers

    def _grow(self, total: int, device: torch.device) -> torch.Tensor:
        if self.counts is None or self.counts.device != device:
            self.counts = torch.zeros(total, device=device)
        elif self.counts.numel() < total:
            grown = torch.zeros(max(total, int(self.counts.numel() * 1.25)), device=device)
            grown[: self.counts.numel()] = self.counts
            self.counts = grown
        return self.counts

    def attend(
        self,
        q: torch.Tensor,
        k_src: torch.Tensor,
        idx: torch.Tensor,
        scope: Scope,
        cos: torch.Tensor,
        sin: torch.Tensor,
        scale: float,
    ) -> None:
        """Add the attention of the last query of ``q [B, H, Q, D]`` (un-rotated) over the scope: keys
        ``k_src`` rows ``idx [B, N]`` (:meth:`~reattn_llm.kv.layer.KVReader.read_scope`), cache rows
        ``scope.gather_idx``, positions ``scope.key_pos`` (-1: padding) and ``scope.q_pos``."""
        probs = last_query_probs(q, k_src, idx, scope, cos, sin, scale).mean(dim=0)  # [N]
        rows = scope.gather_idx[0]
        self._grow(int(rows.max()) + 1, rows.device).index_add_(0, rows, probs.to(self.counts.device))  # type: ignore[union-attr]

    def reset(self) -> None:
        self.counts = None


@dataclass
class StaticStep:
    """What a static decode step (one captured in a CUDA graph, or its eager twin) reads besides
    the cache: every step of a bucket has the same shapes and the same host-side numbers.

    Attributes:
        total: ``[1]`` int64 on the device, the rows written including this step's token: the
            host sets it before each step (graph replays read it).
        middle: M, the middle rows ``[G, G + M)`` every step of the bucket scores; the local rows
            ``[G + M, end)`` follow, those at or past ``total`` masked (not yet written).
        max_position: ``[1]`` int64 on the device, the largest query position so far (kept in place,
            so replays keep it too); the decoder hands a copy to :attr:`PatchState.max_position` after
            each step.
    """

    total: torch.Tensor
    middle: int
    max_position: torch.Tensor


#: Chunks whose query positions :meth:`PatchState.note_positions` keeps before taking their largest.
_PENDING_MAX = 256


@dataclass
class PatchState:
    """What the attention function of a patched model needs, shared by all its layers.

    Attributes:
        config: the resolved :class:`~reattn_llm.method.config.ReAttentionConfig`.
        rope: ``cos, sin`` tables for positions below the window.
        recorder: per-row selection counts, when switched on.
        max_position: (a property) the largest RoPE position applied, a device scalar (no host sync),
            or None; settable (None forgets it).
        track_positions: whether :meth:`note_positions` keeps ``max_position``.
        layers: the patched ``self_attn`` modules.
        observers: diagnostics called by every layer for every query chunk (:class:`ScopeObserver`).
    """

    config: ReAttentionConfig
    rope: RopeTable
    recorder: SelectionRecorder | None = None
    track_positions: bool = True
    layers: list[nn.Module] = field(default_factory=list)
    observers: list[ScopeObserver] = field(default_factory=list)
    #: set while decode steps run static (:class:`StaticStep`, :mod:`reattn_llm.runtime.graphs`), else None
    static: StaticStep | None = None
    #: the forward running as the engine planned it (:meth:`running`), else None: the layers cut a
    #: forward by :func:`~reattn_llm.method.chunks.chunk_bounds`, its last ``tail_size`` queries apart
    forward: Forward | None = None
    _max: torch.Tensor | None = field(default=None, init=False, repr=False)
    #: ``q_pos [B, Q]`` of the chunks noted since :attr:`_max` was last brought up to date.
    _pending: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)

    @contextlib.contextmanager
    def running(self, forward: Forward) -> Iterator[None]:
        """While the block runs, the model's forwards are ``forward``
        (:func:`~reattn_llm.method.chunks.plan_forwards`): the layers split each into its chunks, so
        every chunk is the one it would be fed alone, and score its last chunk exactly (two-level
        selection's ``exact_answer``) only if it is the answer's."""
        before, self.forward = self.forward, forward
        try:
            yield
        finally:
            self.forward = before

    def chunks_of(self, queries: int) -> tuple[list[tuple[int, int]], bool | None]:
        """The chunks ``[s, e)`` of a forward of ``queries`` queries, and whether its last chunk is the
        answer's (None: not said; a last chunk shorter than ``chunk_size`` is taken to be, a forward
        fed without :meth:`running` cutting its last ``tail_size`` queries apart)."""
        f = self.forward
        if f is None:
            return chunk_bounds(queries, self.config.chunk_size, self.config.tail_size), None  # type: ignore[arg-type]
        if f.end - f.start != queries:
            raise RuntimeError(
                f"A forward of {queries} queries ran while PatchState.running() announced "
                f"[{f.start}, {f.end}): feed exactly the announced tokens in that block."
            )
        return list(f.chunks), f.answer

    @property
    def max_position(self) -> torch.Tensor | None:
        self._fold()
        return self._max

    @max_position.setter
    def max_position(self, value: torch.Tensor | None) -> None:
        self._max, self._pending = value, []

    def note_positions(self, scope: Scope) -> None:
        """Keep the chunk's query positions for :attr:`max_position`: no op per layer, their largest
        is taken when it is read (or once :data:`_PENDING_MAX` chunks wait), still without a host sync."""
        if self.static is not None:  # a static step's is kept where its scope is cut (planning._unwritten)
            return
        if self.track_positions:
            self._pending.append(scope.q_pos)
            if len(self._pending) >= _PENDING_MAX:
                self._fold()

    def _fold(self) -> None:
        """Take the largest of the pending positions into ``_max`` (per device, moved to ``_max``'s)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for q_pos in pending:
            by_device.setdefault(q_pos.device, []).append(q_pos.reshape(-1))
        m = self._max
        for rows in by_device.values():
            x = (rows[0] if len(rows) == 1 else torch.cat(rows)).max()
            if m is not None and x.device != m.device:
                x = x.to(m.device)
            m = x if m is None else torch.maximum(m, x)
        self._max = m

    def largest_position(self) -> int:
        """The largest RoPE position applied since patching (or the last reset), -1 if none."""
        m = self.max_position
        return -1 if m is None else int(m)
