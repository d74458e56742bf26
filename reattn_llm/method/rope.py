"""RoPE tables taken from the model's own rotary module, for positions below the window.

ReAttention re-applies RoPE itself, at contiguous positions ``0..n-1`` of the scope, so it only
ever needs ``cos/sin`` for positions below the trained window. The tables come from calling the
model's rotary module once (so every static scaling, linear, llama3 or yarn, including yarn's
attention factor, is exactly the model's), cached per device and dtype.

**Partial rotary** (Phi-3's ``partial_rotary_factor``): the model rotates only the first ``R`` of
the ``D`` head dims, rotate-half over them (pairs ``(i, i + R/2)``), and passes ``R..D-1``
through. The kernels rotate rotate-half over the whole head (pairs ``(j, j + D/2)``) from
``[P, D]`` tables. A fixed permutation of the head dims (:func:`rotary_permutation`, applied by the
patch to the fused ``qkv_proj`` output of queries and keys) puts rotary pair ``(i, i + R/2)`` on
``(i, i + D/2)`` and the pass-through dims on the other pairs, and the table is widened in the
same order with ``cos = 1, sin = 0`` on the pass-through dims (:meth:`RopeTable.get`). It is exact:
a dot product is the same in any common order of the dims of ``q`` and ``k`` (the values, and so
the output, are not permuted), and ``x * 1 + y * 0 == x`` rotates a pass-through dim not at all.
Scoring (``q . k``), the averaged ``scoring="expected"`` query (:func:`rotate_expected` over the
widened table), the two-level block summaries and the citations' re-scoring all see one
consistent layout; the cache stores keys in it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NamedTuple

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
    """Raise :class:`UnsupportedModelError` for RoPE types whose frequencies depend on length
    (``longrope`` with its own reason: Phi-3-128k, Phi-3.5, Phi-4-mini)."""
    kinds = rope_type(model_config).split(",")
    bad = [k for k in kinds if k not in STATIC_ROPE_TYPES]
    if "longrope" in bad:
        params = getattr(model_config, "rope_parameters", None) or {}
        orig = params.get("original_max_position_embeddings") or getattr(
            model_config, "original_max_position_embeddings", None
        )
        raise UnsupportedModelError(
            "RoPE type 'longrope' (Phi-3-128k, Phi-3.5, Phi-4-mini) rotates with short factors up to "
            f"original_max_position_embeddings={orig} tokens and with long factors once a sequence is longer, "
            "scaled by an attention factor from max_position_embeddings: the stock model's RoPE depends on "
            "the sequence length, which ReAttention's fixed re-positioning (one table below the window) "
            f"cannot reproduce. Supported RoPE types: {', '.join(STATIC_ROPE_TYPES)}. Use a checkpoint with "
            "static RoPE instead (Phi-3-mini-4k-instruct, Phi-3-medium-4k-instruct, Phi-4): ReAttention "
            "extends its context itself, without longrope."
        )
    if bad:
        raise UnsupportedModelError(
            f"RoPE type {bad[0]!r} changes its frequencies with the sequence length, which ReAttention's "
            f"fixed re-positioning cannot reproduce. Supported RoPE types: {', '.join(STATIC_ROPE_TYPES)}. "
            "Use a checkpoint with static RoPE, or edit config.rope_parameters to a static type."
        )


def rotary_width(model_config: Any, head_dim: int) -> int:
    """``R``: the head dims RoPE rotates, ``int(head_dim * partial_rotary_factor)`` (the factor from
    ``rope_parameters`` or the config; 1.0 when unset)."""
    params = getattr(model_config, "rope_parameters", None) or {}
    factor = params.get("partial_rotary_factor") if isinstance(params, dict) else None
    if factor is None:
        factor = getattr(model_config, "partial_rotary_factor", None) or 1.0
    return int(head_dim * float(factor))


def rotary_permutation(head_dim: int, rotary: int) -> torch.Tensor | None:
    """The order of the head dims that lays a partial rotary of ``rotary`` dims over the whole head
    in rotate-half layout (module docstring): ``x[..., perm]`` holds rotary dim ``i`` at ``i`` and
    ``i + R/2`` at ``i + D/2`` for ``i < R/2``, the pass-through dims ``R..D-1`` in order on the rest
    (first ``D/2 - R/2`` of them at ``R/2..D/2-1``, the others at ``D/2 + R/2..D-1``).
    ``[D]`` int64, or None when ``rotary == head_dim`` (nothing to permute).

    Raises:
        UnsupportedModelError: an odd head dim or rotary width, or a width past the head.
    """
    if rotary == head_dim:
        return None
    if not 0 < rotary < head_dim or rotary % 2 or head_dim % 2:
        raise UnsupportedModelError(
            f"a rotary width of {rotary} of head_dim {head_dim} (partial_rotary_factor): ReAttention needs "
            "both even and the width within the head."
        )
    half, r2 = head_dim // 2, rotary // 2
    rest = list(range(rotary, head_dim))
    order = list(range(r2)) + rest[: half - r2] + list(range(r2, rotary)) + rest[half - r2 :]
    return torch.tensor(order, dtype=torch.long)


class RopeTable:
    """``cos, sin [window, R]`` from the model's rotary module, built lazily per (device, dtype).

    ``R`` is the rotary width (head_dim, or less for partial rotary). ``calls`` counts how often
    the rotary module was run here; positions passed to it are always ``0..window-1``.
    ``layer_type``: for a rotary module with one table per layer type (Gemma 3), the table of the
    patched (full-attention) layers, passed to the module as its third argument.
    ``partial``: ``(head_dim, rotary width)`` of a partial rotary: the table is widened to the whole
    head in :attr:`perm`'s order (:func:`rotary_permutation`), ``cos = 1, sin = 0`` on the
    pass-through dims, so ``R == D``.
    """

    def __init__(
        self,
        rotary: nn.Module,
        window: int,
        layer_type: str | None = None,
        partial: tuple[int, int] | None = None,
    ) -> None:
        self.rotary = rotary
        self.window = window
        self.layer_type = layer_type
        self.rotary_dims = None if partial is None else partial[1]
        self.perm = None if partial is None else rotary_permutation(*partial)
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
            cos, sin = cos[0].to(dtype), sin[0].to(dtype)
            if self.perm is not None:
                cos, sin = self._widen(cos, sin)
            table = (cos, sin)
            self._tables[key] = table
        return table

    def _widen(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[W, R]`` -> ``[W, D]`` in :attr:`perm`'s order, identity (1, 0) on the pass-through dims."""
        perm = self.perm.to(cos.device)  # type: ignore[union-attr]
        if cos.shape[-1] != self.rotary_dims:
            raise UnsupportedModelError(
                f"the rotary module gives {cos.shape[-1]} rotary dims, but the config's partial_rotary_factor "
                f"gives {self.rotary_dims} of head_dim {perm.numel()}: check the model's config."
            )
        pad = perm.numel() - cos.shape[-1]
        cos = torch.cat((cos, cos.new_ones(cos.shape[0], pad)), dim=-1)[:, perm]
        sin = torch.cat((sin, sin.new_zeros(sin.shape[0], pad)), dim=-1)[:, perm]
        return cos, sin

    def expected(self, lo: int, hi: int, device: torch.device) -> ExpectedRope:
        """``(E[cos], E[sin], turned E[sin])``, each ``[R]`` fp32: the RoPE table averaged over distances
        ``[lo, hi)`` (cut at the window), for :func:`rotate_expected`; cached per ``(lo, hi, device)``."""
        key = ("expected", lo, hi, device)
        table = self._tables.get(key)  # type: ignore[call-overload]
        if table is None:
            cos, sin = self.get(device, torch.float32)
            lo = max(0, min(lo, self.window - 1))
            hi = max(lo + 1, min(hi, self.window))
            e_cos, e_sin = cos[lo:hi].mean(0), sin[lo:hi].mean(0)
            table = ExpectedRope(e_cos, e_sin, turned_sin(e_sin))
            self._tables[key] = table  # type: ignore[index]
        return table  # type: ignore[return-value]


class ExpectedRope(NamedTuple):
    """An averaged RoPE (:meth:`RopeTable.expected`), each ``[R]`` fp32: ``cos``, ``sin`` and
    ``sin_turned`` (:func:`turned_sin`), so :func:`rotate_expected` rotates with one roll."""

    cos: torch.Tensor
    sin: torch.Tensor
    sin_turned: torch.Tensor


def turned_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin [.., R]`` with its first half negated: ``rotate_half(x) * sin == x.roll(R/2) * turned_sin(sin)``,
    exactly (``(-a) * b == a * (-b)`` in floating point)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate_expected(
    q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sin_turned: torch.Tensor | None = None
) -> torch.Tensor:
    """``q [B, H, Q, D]`` rotated by an averaged RoPE ``cos, sin [R]`` (rotate-half layout, ``R <= D``;
    partial rotary keeps ``q[..., R:]``), computed in fp32, returned in ``q``'s dtype. ``sin_turned``:
    :func:`turned_sin` of ``sin`` when the caller has it (:class:`ExpectedRope`; else made here).

    ``R(d) q . k`` is the logit of a query ``d`` positions after the key; averaging ``R(d)`` over the
    distances a selected span takes in the scope gives one query whose dot product with an un-rotated
    key is that logit's mean over those distances: RoPE's fast-turning dimension pairs average out,
    the slow ones, which carry content over long distances, stay."""
    r = cos.shape[-1]
    # fp16/bf16 queries are promoted to fp32 by the products themselves (the same values as q.float())
    qf = q if q.dtype in (torch.float16, torch.bfloat16) else q.float()
    qr, rest = qf[..., :r], qf[..., r:]
    if sin_turned is None:
        sin_turned = turned_sin(sin)
    out = qr * cos + qr.roll(r // 2, dims=-1) * sin_turned  # rotate_half(qr) * sin, one op fewer
    if rest.shape[-1]:
        out = torch.cat((out, rest.float()), dim=-1)
    return out.to(q.dtype)


#: ``(device, dtype, rotary width)`` -> ``(ones, zeros)``, each ``[1, 1, R]``: the identity RoPE that
#: the patch's ``self_attn`` pre-hook hands the stock layers. Made once per key (a few in use; cleared
#: past :data:`_IDENTITY_MAX`, after which a dropped pair is merely applied, exactly, as ``x*1 + y*0``).
_IDENTITY: dict[tuple[torch.device, torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}
_IDENTITY_MAX = 16


def identity_rope(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ones, zeros)`` ``[1, 1, R]`` on ``cos``'s device and dtype (``R = cos.shape[-1]``): RoPE that
    rotates nothing, broadcast by the stock ``apply_rotary_pos_emb`` over ``[B, S, R]`` tables, and
    skipped outright by it once :func:`skip_identity_rope` wraps it (no op at all per layer)."""
    key = (cos.device, cos.dtype, cos.shape[-1])
    pair = _IDENTITY.get(key)
    if pair is None:
        if len(_IDENTITY) >= _IDENTITY_MAX:
            _IDENTITY.clear()
        pair = _IDENTITY[key] = (cos.new_ones(1, 1, key[2]), sin.new_zeros(1, 1, key[2]))
    return pair


def is_identity_rope(cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether ``cos, sin`` are the pair :func:`identity_rope` made (the very tensors, not equal ones)."""
    pair = _IDENTITY.get((cos.device, cos.dtype, cos.shape[-1]))
    return pair is not None and cos is pair[0] and sin is pair[1]


#: modeling module name -> ``[stock apply_rotary_pos_emb, our wrapper, patched models using it]``.
_SKIPS: dict[str, list[Any]] = {}


class _SkipHandle:
    """``remove()``: one patched model less uses the wrapper; the last restores the stock function."""

    def __init__(self, module_name: str) -> None:
        self.module_name = module_name
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        entry = _SKIPS.get(self.module_name)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] <= 0:
            del _SKIPS[self.module_name]
            module = sys.modules.get(self.module_name)
            if module is not None and getattr(module, "apply_rotary_pos_emb", None) is entry[1]:
                module.apply_rotary_pos_emb = entry[0]  # type: ignore[attr-defined]


def skip_identity_rope(module_name: str) -> _SkipHandle | None:
    """Wrap the ``apply_rotary_pos_emb(q, k, cos, sin, ...)`` of the modeling module ``module_name`` so
    that it returns ``q, k`` untouched when given :func:`identity_rope`'s pair (any other tables: the
    stock function). The stock code would compute ``q * 1 + rotate_half(q) * 0`` (10 ops per layer, the
    same values); ReAttention rotates queries and keys itself. Reference-counted per module: the
    handle's ``remove()`` restores the stock function once no patched model uses it. None when the
    module has no such function (its layers then apply the identity pair, exactly)."""
    module = sys.modules.get(module_name)
    stock = getattr(module, "apply_rotary_pos_emb", None)
    if module is None or not callable(stock):
        return None
    entry = _SKIPS.get(module_name)
    if entry is None or stock is not entry[1]:  # first use, or replaced by someone since
        original = stock

        @functools.wraps(original)
        def apply_rotary_pos_emb(q: Any, k: Any, cos: Any, sin: Any, *args: Any, **kwargs: Any) -> Any:
            if is_identity_rope(cos, sin):
                return q, k
            return original(q, k, cos, sin, *args, **kwargs)

        entry = _SKIPS[module_name] = [original, apply_rotary_pos_emb, entry[2] if entry else 0]
        module.apply_rotary_pos_emb = apply_rotary_pos_emb  # type: ignore[union-attr]
    entry[2] += 1
    return _SkipHandle(module_name)
