"""RoPE tables taken from the model's own rotary module, for positions below the window.

ReAttention re-applies RoPE itself, at contiguous positions ``0..n-1`` of the scope, so it only
ever needs ``cos/sin`` for positions below the trained window. The tables come from calling the
model's rotary module once (so every static scaling, linear, llama3 or yarn, including yarn's
attention factor, is exactly the model's), cached per device and dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError

#: RoPE types whose frequencies do not depend on the sequence length.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_type(model_config: Any) -> str:
    """The model's RoPE type (``"default"`` when unset)."""
    params = (
        getattr(model_config, "rope_parameters", None) or getattr(model_config, "rope_scaling", None) or {}
    )
    if isinstance(params, dict) and "rope_type" not in params and params:
        # per-layer-type dicts (Gemma-style): every entry must be static
        types = {p.get("rope_type", "default") for p in params.values() if isinstance(p, dict)}
        return "default" if not types else ",".join(sorted(types))
    return (params or {}).get("rope_type", (params or {}).get("type", "default")) or "default"


def check_rope(model_config: Any) -> None:
    """Raise :class:`UnsupportedModelError` for RoPE types whose frequencies depend on length."""
    kinds = rope_type(model_config).split(",")
    bad = [k for k in kinds if k not in STATIC_ROPE_TYPES]
    if bad:
        raise UnsupportedModelError(
            f"RoPE type {bad[0]!r} changes its frequencies with the sequence length, which ReAttention's "
            f"fixed re-positioning cannot reproduce. Supported RoPE types: {', '.join(STATIC_ROPE_TYPES)}. "
            "Use a checkpoint with static RoPE, or edit config.rope_parameters to a static type."
        )


class RopeTable:
    """``cos, sin [window, R]`` from the model's rotary module, built lazily per (device, dtype).

    ``R`` is the rotary width (head_dim, or less for partial rotary). ``calls`` counts how often
    the rotary module was run here; positions passed to it are always ``0..window-1``.
    ``layer_type``: for a rotary module with one table per layer type (Gemma 3), the table of the
    patched (full-attention) layers, passed to the module as its third argument.
    """

    def __init__(self, rotary: nn.Module, window: int, layer_type: str | None = None) -> None:
        self.rotary = rotary
        self.window = window
        self.layer_type = layer_type
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.building = False

    def get(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[window, R]`` on ``device`` in ``dtype``."""
        key = (device, dtype)
        table = self._tables.get(key)
        if table is None:
            pos = torch.arange(self.window, device=device)[None]
            probe = torch.zeros(1, 1, device=device, dtype=dtype)
            self.building = True
            try:
                with torch.no_grad():
                    extra = () if self.layer_type is None else (self.layer_type,)
                    cos, sin = self.rotary(probe, pos, *extra)
            finally:
                self.building = False
            table = (cos[0].to(dtype), sin[0].to(dtype))
            self._tables[key] = table
        return table

    def expected(self, lo: int, hi: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[cos], E[sin])``, each ``[R]`` fp32: the RoPE table averaged over distances ``[lo, hi)``
        (cut at the window), for :func:`rotate_expected`."""
        key = ("expected", lo, hi, device)
        table = self._tables.get(key)  # type: ignore[call-overload]
        if table is None:
            cos, sin = self.get(device, torch.float32)
            lo = max(0, min(lo, self.window - 1))
            hi = max(lo + 1, min(hi, self.window))
            table = (cos[lo:hi].mean(0), sin[lo:hi].mean(0))
            self._tables[key] = table  # type: ignore[index]
        return table


def rotate_expected(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``q [B, H, Q, D]`` rotated by an averaged RoPE ``cos, sin [R]`` (rotate-half layout, ``R <= D``;
    partial rotary keeps ``q[..., R:]``), in ``q``'s dtype.

    ``R(d) q . k`` is the logit of a query ``d`` positions after the key; averaging ``R(d)`` over the
    distances a selected span takes in the scope gives one query whose dot product with an un-rotated
    key is that logit's mean over those distances: RoPE's fast-turning dimension pairs average out,
    the slow ones, which carry content over long distances, stay."""
    r = cos.shape[-1]
    qf = q.float()
    qr, rest = qf[..., :r], qf[..., r:]
    half = r // 2
    turned = torch.cat((-qr[..., half:], qr[..., :half]), dim=-1)
    out = qr * cos + turned * sin
    if rest.shape[-1]:
        out = torch.cat((out, rest), dim=-1)
    return out.to(q.dtype)
