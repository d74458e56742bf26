"""The attention function registered with transformers: select, gather, re-position, attend.

It receives un-rotated queries ``[B, H, Q, D]`` and all un-rotated keys/values so far
``[B, Hkv, T, D]`` (the chunk is the last ``Q`` of them), and returns ``[B, Q, H, D]``.
A forward with more queries than one chunk is split into chunks of ``chunk_size`` (the last
``tail_size`` queries apart), each selecting against the keys before it, so any single
``model(ids)`` call stays in distribution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..kernels import resolve_backend, scope_attention, score_topk
from .config import chunk_bounds
from .selection import Scope, build_scope, full_scope, select_spans
from .two_level import two_level_topk

if TYPE_CHECKING:
    from .patch import PatchState

ATTN_NAME = "reattention"


def plan_scope(
    state: PatchState, q: torch.Tensor, k: torch.Tensor, total: int, layer_idx: int | None, backend: str
) -> Scope:
    """The scope of one query chunk: stock full attention within ``G + L``, else global + selected + local.

    Args:
        q: ``[B, H, Qc, D]`` the chunk's un-rotated queries.
        k: ``[B, Hkv, >=total, D]`` un-rotated keys; the chunk sees rows ``0..total-1``.
    """
    cfg = state.config
    b, _, qc, _ = q.shape
    g, loc = cfg.global_size, cfg.local_size
    if total <= g + loc:  # type: ignore[operator]
        return full_scope(b, total, qc, q.device)
    m = total - g - loc  # type: ignore[operator]
    sel = valid = None
    if cfg.max_spans:
        tiered = getattr(k, "_reattn_layer", None)  # fp8 / offloaded cache: read keys through the layer
        if cfg.selection == "two_level":
            hits = _two_level_hits(cfg, q, k, g, m, backend)
        elif tiered is not None:
            hits = tiered.score_topk(q, g, g + m, cfg.top_k, backend)
        else:
            hits = score_topk(q, k[:, :, g : g + m], cfg.top_k, backend=backend)  # [B, H, Qc, k]
        sel, valid = select_spans(hits, m, cfg.max_spans, cfg.span_size)  # type: ignore[arg-type]
    scope = build_scope(sel, valid, total, qc, g, loc, b, q.device)  # type: ignore[arg-type]
    if state.recorder is not None and scope.middle is not None:
        state.recorder.add(scope.middle, scope.middle_valid, total)
    return scope


def _two_level_hits(cfg: Any, q: torch.Tensor, k: torch.Tensor, g: int, m: int, backend: str) -> torch.Tensor:
    """Two-level top-k over the middle ``k[:, :, g:g+m]``, reading the cache layer's block summaries
    (attached to the key view by :class:`~reattn_llm.cache.ReAttentionLayer`) when there are any."""
    bs = cfg.summary_block
    n_full = m // bs
    store = getattr(k, "_reattn_summaries", None)
    summaries = store.get(k, g, bs, n_full) if store is not None and n_full > cfg.candidates else None
    tiered = getattr(k, "_reattn_layer", None)
    reader = None if tiered is None else tiered.middle(g)
    return two_level_topk(q, k[:, :, g : g + m], cfg.top_k, cfg.candidates, bs, backend, summaries, reader)


def reattention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``query [B,H,Q,D]``, ``key/value [B,Hkv,T,D]`` (un-rotated)
    -> ``([B, Q, H, D], None)``."""
    state: PatchState | None = getattr(module, "_reattn_state", None)
    if state is None:
        raise RuntimeError(
            "attn_implementation 'reattention' is set on a model that reattn_llm.patch() did not patch; "
            "call reattn_llm.patch(model) instead of setting it by hand."
        )
    if attention_mask is not None:
        raise ValueError(
            "ReAttention builds its own causal mask and cannot apply a custom 4D attention mask; "
            "pass no mask (or an all-ones 2D padding mask)."
        )
    cfg = state.config
    layer_idx = getattr(module, "layer_idx", None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    backend = resolve_backend(cfg.backend, query.device)
    cos, sin = state.rope.get(query.device, query.dtype)
    q_len, total = query.shape[2], key.shape[2]
    start = total - q_len
    within = total <= cfg.global_size + cfg.local_size  # type: ignore[operator]
    bounds = [(0, q_len)] if within else chunk_bounds(q_len, cfg.chunk_size, cfg.tail_size)  # type: ignore[arg-type]
    tiered = getattr(key, "_reattn_layer", None)
    outs = []
    for c0, c1 in bounds:
        qc = query[:, :, c0:c1]
        seen = start + c1
        scope = plan_scope(state, qc, key, seen, layer_idx, backend)
        state.note_positions(scope)
        k_src, v_src, idx = key, value, scope.gather_idx
        if tiered is not None:
            # fp8 / offloaded rows: gather the scope compactly, then attend over it in order
            k_src, v_src = tiered.gather_scope(idx)
            idx = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
        outs.append(
            scope_attention(
                qc, k_src, v_src, idx, scope.key_pos, scope.q_pos, cos, sin, scale, backend=backend
            )
        )
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return out, None


def reattention_mask(
    batch_size: int, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> None:
    """Mask interface: ReAttention builds causal masks per scope; only an all-ones padding mask is accepted."""
    if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
        raise ValueError(
            "ReAttention does not support padded batches (the 2D attention_mask has zeros): run sequences of "
            "different lengths one at a time, or give them equal lengths."
        )
    return None
