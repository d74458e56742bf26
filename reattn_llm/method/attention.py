"""The attention function registered with transformers: select, gather, re-position, attend.

It receives un-rotated queries ``[B, H, Q, D]`` and all un-rotated keys/values so far
``[B, Hkv, T, D]`` (the chunk is the last ``Q`` of them), and returns ``[B, Q, H, D]``. It reads
the keys and values through the layer's :class:`~reattn_llm.kv.layer.KVReader`: the cache that
the patch's ``self_attn`` pre-hook passes in as ``reattn_cache`` knows the layer, whatever its
storage; a plain transformers cache or none gives the raw tensors.

A forward with more queries than one chunk is split into chunks: those the engine planned
(``PatchState.running``), else of ``chunk_size`` with the last ``tail_size`` queries apart, each
selecting against the keys before it, so any single ``model(ids)`` call stays in distribution.
Each chunk's scope comes from :mod:`.planning` (a run of whole chunks selects as one batch there);
the chunks whose scopes have one shape attend in one launch (:func:`_attend`).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..kernels import resolve_backend, scope_attention
from ..kv.cache import layer_reader
from .planning import plan_chunks, prompt_scoring_queries
from .selection import Scope
from .state import PatchState

ATTN_NAME = "reattention"
#: The ``self_attn`` keyword argument that carries the cache to :func:`reattention_forward`.
CACHE_KWARG = "reattn_cache"


#: ``id(config)`` -> the stock attention implementation of a patched model's sliding-window layers
#: (Gemma 3), which the registered attention and mask functions hand those layers to.
_STOCK_SLIDING: dict[int, str] = {}


def set_stock_sliding(config: Any, implementation: str | None) -> None:
    """Delegate the sliding-window layers of the model with ``config`` to ``implementation``
    (``"sdpa"``, ``"eager"``, ...); None removes the delegation (on unpatch)."""
    if implementation is None:
        _STOCK_SLIDING.pop(id(config), None)
    else:
        _STOCK_SLIDING[id(config)] = implementation


def _stock_attention(module: torch.nn.Module, name: str) -> Any:
    """The stock attention function ``name``; ``"eager"`` is the model's own (its modeling module's
    ``eager_attention_forward``, e.g. Gemma 3's, which knows soft-capping), else SDPA."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return eager if name == "eager" and eager is not None else ALL_ATTENTION_FUNCTIONS["sdpa"]


#: A chunk whose scope attention is pending: ``(q, K, V, gather_idx, scope)`` (:func:`_attend`).
_Chunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Scope]


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
    """transformers attention interface: ``query [B, H, Q, D]``, ``key/value [B, Hkv, T, D]`` (un-rotated)
    -> ``([B, Q, H, D], None)``. ``kwargs[CACHE_KWARG]``: the model's cache (or None)."""
    state: PatchState | None = getattr(module, "_reattn_state", None)
    stock = _STOCK_SLIDING.get(id(getattr(module, "config", None)))
    if state is None and stock is not None and getattr(module, "is_sliding", False):
        # a sliding-window layer stays stock: it only sees its local window, with its sliding mask
        fn = _stock_attention(module, stock)
        return fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
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
    kv = layer_reader(kwargs.get(CACHE_KWARG), getattr(module, "layer_idx", None), key, value)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    backend = resolve_backend(cfg.backend, query.device)
    cos, sin = state.rope.get(query.device, query.dtype)
    q_len, total = query.shape[2], kv.length
    within = total <= cfg.global_size + cfg.local_size  # type: ignore[operator]
    bounds, answer = state.chunks_of(q_len)  # as the engine planned the forward, else the tail apart
    if within:
        bounds = [(0, q_len)]
    outs: list[torch.Tensor] = []
    group: list[_Chunk] = []  # chunks that attend in one launch (_joins)
    scored = prompt_scoring_queries(state, query, backend) if len(bounds) > 1 else None
    for (c0, c1), scope in zip(
        bounds, plan_chunks(state, query, kv, bounds, backend, scored, answer), strict=True
    ):
        qc = query[:, :, c0:c1]
        state.note_positions(scope)
        k_src, v_src, idx = kv.read_scope(scope.gather_idx)
        if state.recorder is not None or state.observers:
            layer = state.layers.index(module)
            if state.recorder is not None and state.recorder.wants(layer, len(state.layers)):
                state.recorder.attend(qc, k_src, idx, scope, cos, sin, scale)  # citations: the whole scope
            for observe in state.observers:
                observe(layer, qc, k_src, idx, scope, cos, sin, scale)
        chunk = (qc, k_src, v_src, idx, scope)
        if group and not _joins(group[0], chunk):
            outs.append(_attend(group, cos, sin, scale, backend))
            group = []
        group.append(chunk)
    outs.append(_attend(group, cos, sin, scale, backend))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return out, None


def _joins(first: _Chunk, chunk: _Chunk) -> bool:
    """Whether ``chunk`` (``(q, K, V, gather_idx, scope)``) can attend in one launch with the group
    that ``first`` opened: one sequence (B = 1), the same K/V (the layer's rows, not a compact copy
    per chunk), queries and scopes of one shape, the same ``chunk_tail`` promise."""
    q0, k0, v0, i0, s0 = first
    q, k, v, i, s = chunk
    same = all(
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
        for a, b in ((k0, k), (v0, v))
    )
    return (
        same
        and q0.shape[0] == 1
        and q.shape == q0.shape
        and i.shape == i0.shape
        and s.chunk_tail == s0.chunk_tail
    )


def _attend(
    group: list[_Chunk], cos: torch.Tensor, sin: torch.Tensor, scale: float, backend: str
) -> torch.Tensor:
    """Scope attention of chunks that :func:`_joins` grouped -> ``[1, C * Qc, H, D]`` (or one chunk's
    ``[B, Qc, H, D]``): C chunks as a batch of C over K/V expanded with a zero batch stride, one
    launch instead of C (more programs for a small model's chunk), each chunk's result as alone."""
    if len(group) == 1:
        q, k, v, idx, sc = group[0]
        return scope_attention(q, k, v, idx, sc.key_pos, sc.q_pos, cos, sin, scale, sc.chunk_tail, backend)
    c, sc = len(group), group[0][4]
    k, v = (t.expand(c, -1, -1, -1) for t in group[0][1:3])
    q, idx, kp, qp = (
        _stacked(ts) for ts in zip(*((g[0], g[3], g[4].key_pos, g[4].q_pos) for g in group), strict=True)
    )  # [C, H, Qc, D], [C, N], [C, N], [C, Qc]
    out = scope_attention(q, k, v, idx, kp, qp, cos, sin, scale, sc.chunk_tail, backend)  # [C, Qc, H, D]
    return out.reshape(1, -1, *out.shape[2:])


def _stacked(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``C`` tensors ``[1, ...]`` of one shape -> ``[C, ...]``: a view when they lie one after another
    in one storage at a fixed step (a forward's consecutive query chunks; the rows of a batch of
    chunks' scope, :func:`~.planning.plan_chunks`), else a copy (``torch.cat``)."""
    first = parts[0]
    step = (parts[1].data_ptr() - first.data_ptr()) // first.element_size()
    regular = step > 0 and all(
        p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and p.shape == first.shape
        and p.stride() == first.stride()
        and p.data_ptr() == first.data_ptr() + i * step * first.element_size()
        for i, p in enumerate(parts)
    )
    if not regular:
        return torch.cat(parts)
    return first.as_strided((len(parts), *first.shape[1:]), (step, *first.stride()[1:]))


def reattention_mask(
    batch_size: int, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> Any:
    """Mask interface: ReAttention builds causal masks per scope; only an all-ones padding mask is accepted.
    The mask of a model's sliding-window layers (``local_size`` set, the model registered by
    :func:`set_stock_sliding`) is the stock one of their implementation."""
    stock = _STOCK_SLIDING.get(id(kwargs.get("config")))
    if stock is not None and kwargs.get("local_size") is not None:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        fn = ALL_MASK_ATTENTION_FUNCTIONS[stock] if stock in ALL_MASK_ATTENTION_FUNCTIONS else None
        fn = fn or ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
        return fn(batch_size, q_length, kv_length, attention_mask=attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
        raise ValueError(
            "ReAttention does not support padded batches (the 2D attention_mask has zeros): run sequences of "
            "different lengths one at a time, or give them equal lengths."
        )
    return None
