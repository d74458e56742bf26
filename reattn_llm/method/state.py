"""The attention's runtime state, shared by every layer of one patched model.

:class:`PatchState` is what :func:`~reattn_llm.method.attention.reattention_forward` reads besides
its arguments (the resolved config, the RoPE tables) and what it leaves behind (the largest RoPE
position applied; per cache row, how often selections drew on it: :class:`SelectionRecorder`).
:func:`~reattn_llm.method.patch.patch` creates it and pins it on every ``self_attn`` module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import ReAttentionConfig
from .rope import RopeTable
from .selection import Scope


class SelectionRecorder:
    """Counts, per absolute cache row, how often a selection drew on it (for citations).

    ``counts[t]`` is the number of (layer, forward) selections whose spans contained row t,
    for batch row 0. Opt-in: the engine switches it on while it decodes an answer.
    """

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    def add(self, rows: torch.Tensor, valid: torch.Tensor | None, total: int) -> None:
        """``rows [B, S]`` absolute cache rows (< ``total``), ``valid [B, S]`` bool."""
        r = rows[0]
        w = valid[0].float() if valid is not None else torch.ones(r.shape, device=r.device)
        if self.counts is None or self.counts.device != r.device:
            self.counts = torch.zeros(total, device=r.device)
        elif self.counts.numel() < total:
            grown = torch.zeros(max(total, int(self.counts.numel() * 1.25)), device=r.device)
            grown[: self.counts.numel()] = self.counts
            self.counts = grown
        self.counts.index_add_(0, r, w)

    def reset(self) -> None:
        self.counts = None


@dataclass
class PatchState:
    """What the attention function of a patched model needs, shared by all its layers.

    Attributes:
        config: the resolved :class:`~reattn_llm.method.config.ReAttentionConfig`.
        rope: ``cos, sin`` tables for positions below the window.
        recorder: per-row selection counts, when switched on.
        max_position: the largest RoPE position applied, a device scalar (no host sync).
        track_positions: whether :meth:`note_positions` keeps ``max_position``.
        layers: the patched ``self_attn`` modules.
    """

    config: ReAttentionConfig
    rope: RopeTable
    recorder: SelectionRecorder | None = None
    max_position: torch.Tensor | None = None
    track_positions: bool = True
    layers: list[nn.Module] = field(default_factory=list)

    def note_positions(self, scope: Scope) -> None:
        """Keep the largest RoPE position applied (a device scalar: no host sync)."""
        if self.track_positions:
            m = scope.q_pos.max()
            self.max_position = m if self.max_position is None else torch.maximum(self.max_position, m)

    def largest_position(self) -> int:
        """The largest RoPE position applied since patching (or the last reset), -1 if none."""
        return -1 if self.max_position is None else int(self.max_position)
