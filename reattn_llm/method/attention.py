"""The attention function registered with transformers: select, gather, re-position, attend.

It receives un-rotated queries ``[B, H, Q, D]`` and all un-rotated keys/values so far
``[B, Hkv, T, D]`` (the chunk is the last ``Q`` of them), and returns ``[B, Q, H, D]``. It reads
the keys and values through the layer's :class:`~reattn_llm.kv.layer.KVReader`: the cache that
the patch's ``self_attn`` pre-hook passes in as ``reattn_cache`` knows the layer, whatever its
storage; a plain transformers cache or none gives the raw tensors.

A forward with more queries than one chunk is split into chunks of ``chunk_size`` (the last
``tail_size`` queries apart, unless the engine joined whole chunks: ``PatchState.whole_chunks``),
each selecting against the keys before it, so any single ``model(ids)`` call stays in distribution.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..kernels import resolve_backend, scope_attention, scope_from_centres, select_scope
from ..kv.cache import layer_reader
from ..kv.layer import KVReader
from .config import ReAttentionConfig, chunk_bounds
from .rope import rotate_expected
from .selection import (
    Scope,
    build_scope,
    expand_spans,
    full_scope,
    mask_unwritten,
    rank_centres,
    rank_spans,
)
from .state import PatchState
from .two_level import two_level_topk

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

#: A pinned centre that no middle ever reaches (an empty slot of the question's selection).
_NEVER = 1 << 62


def decode_pins(cfg: ReAttentionConfig, kv: KVReader) -> torch.Tensor | None:
    """The question's centres a decode step keeps before its own hits (``decode_spans``): all
    (``"question"``, ``"union"``), its most voted half (``"both"``), else none. ``[B, P]`` or None."""
    if cfg.decode_spans not in ("question", "both", "union") or kv.pinned is None:
        return None
    return kv.pinned[:, : cfg.max_spans // 2] if cfg.decode_spans == "both" else kv.pinned  # type: ignore[operator]


#: Per phase (``"decode"``: one-query forwards, ``"prefill"``: chunks), the backends whose span selection
#: runs fused (:func:`~reattn_llm.kernels.select_scope`: votes, ranking, spans and scope in one kernel,
#: nothing of size M); the others run the readable ops of :mod:`.selection`. Both give the same scope.
#: ``decode_spans="running"`` (carried votes) stays unfused. Decode is fused on Triton: on one H200 the
#: selection of a decode step takes 24 us in one launch against 984 us in 103 (Llama-8B shape, 32K), and
#: the 8B shape's decode step 51 ms against 78 (32K) and 95 (128K) (BENCHMARKS.md, Run 4). Prefill chunks
#: stay unfused until a run shows the fused one no slower end to end (their hits exceed the kernel's
#: ranking limit, so they gain little: 1.7 ms against 1.7 ms per chunk).
FUSED_SELECT: dict[str, tuple[str, ...]] = {"decode": ("triton",), "prefill": ()}
#: Backends whose prompt chunks turn span votes into their scope in kernels
#: (:func:`~reattn_llm.kernels.rank_spans`, then :func:`~reattn_llm.kernels.scope_from_centres`):
#: seven launches per layer where ``method.selection``'s ops take about fifty, the same scope bit for bit.
SPAN_KERNELS: tuple[str, ...] = ("triton",)


def _pins(cfg: ReAttentionConfig, kv: KVReader, qc: int) -> tuple[torch.Tensor | None, bool]:
    """``(pins, union)``: the centres a ``qc``-query forward keeps before its own hits, and whether
    it is a ``decode_spans="union"`` decode step (ties of votes then go to the best-ranked hit)."""
    pins = decode_pins(cfg, kv) if qc == 1 else None
    return pins, pins is not None and cfg.decode_spans == "union"


def _remember(kv: KVReader, ranked: torch.Tensor, votes: torch.Tensor, m: int) -> None:
    """Keep a forward's centres by rank (``[B, n]``, ``m`` = empty) and their votes in the layer;
    empty slots stay empty as the middle grows."""
    kv.pinned = torch.where(ranked < m, ranked, torch.full_like(ranked, _NEVER))
    kv.pinned_votes = votes


def _select(
    cfg: ReAttentionConfig,
    kv: KVReader,
    hits: torch.Tensor,
    m: int,
    qc: int,
    n_spans: int,
    span_votes: bool,
    backend: str,
    remember: bool = True,
) -> torch.Tensor:
    """Rank the hits into at most ``n_spans`` centres ``[B, n]`` (by rank), with what the layer
    remembers of the question (``kv.pinned`` / ``kv.pinned_votes``) per ``decode_spans``;
    ``span_votes``: by the hits each span covers (:func:`~.selection.rank_spans`); ``remember``:
    keep a prompt chunk's centres in the layer (its forward's last chunk: the next overwrites them)."""
    running = cfg.decode_spans == "running"
    keep = n_spans * (2 if running else 1)
    if span_votes:  # a prompt chunk: nothing pinned or carried
        ranked, votes = rank_spans(hits, m, keep, cfg.span_size, backend)  # type: ignore[arg-type]
    else:
        carried = (kv.pinned, kv.pinned_votes) if qc == 1 and running and kv.pinned is not None else None
        pins, union = _pins(cfg, kv, qc)
        ranked, votes = rank_centres(hits, m, keep, pins, carried, by_rank=union)
    if (qc > 1 or running) and remember:
        _remember(kv, ranked, votes, m)
    return ranked[:, :n_spans]


def _fused_scope(
    cfg: ReAttentionConfig,
    kv: KVReader,
    hits: torch.Tensor,
    sizes: tuple[int, int, int, int],
    qc: int,
    backend: str,
    remember: bool = True,
) -> Scope:
    """:func:`_select` + sort + ``expand_spans`` + ``build_scope`` in one fused selection;
    ``sizes``: ``(M, n_spans, local, total)``. Not for ``decode_spans="running"``."""
    m, n_spans, loc, total = sizes
    pins, union = _pins(cfg, kv, qc)
    g, span = cfg.global_size, cfg.span_size
    r = select_scope(hits, pins, m, n_spans, span, g, loc, total, qc, by_rank=union, backend=backend)  # type: ignore[arg-type]
    if qc > 1 and remember:
        _remember(kv, r.centres, r.votes, m)
    return Scope(r.gather_idx, r.key_pos, r.q_pos, r.middle, r.middle_valid)


def _span_scope(
    cfg: ReAttentionConfig,
    kv: KVReader,
    hits: torch.Tensor,
    sizes: tuple[int, int, int, int],
    qc: int,
    backend: str,
    remember: bool = True,
) -> Scope:
    """A prompt chunk's span votes to its scope in kernels; ``sizes``: ``(M, n_spans, local, total)``.
    The scope of :func:`_select` + sort + ``expand_spans`` + ``build_scope``, in seven launches."""
    m, n_spans, loc, total = sizes
    span, g = cfg.span_size, cfg.global_size
    centres, votes = rank_spans(hits, m, n_spans, span, backend)  # type: ignore[arg-type]
    if remember:
        _remember(kv, centres, votes, m)
    return Scope(*scope_from_centres(centres, m, span, g, loc, total, qc, backend))  # type: ignore[arg-type]


def plan_scope(
    state: PatchState,
    q: torch.Tensor,
    kv: KVReader,
    total: int,
    backend: str,
    last: bool = True,
    scored: torch.Tensor | None = None,
) -> Scope:
    """The scope of one query chunk: stock full attention within ``G + L``, else global + selected + local.

    Args:
        q: ``[B, H, Qc, D]`` the chunk's un-rotated queries.
        kv: the layer's rows; the chunk sees rows ``0..total-1``.
        total: T, keys visible to the chunk (its queries are the last ``Qc`` of them).
        last: the chunk ends its forward (two-level selection's ``exact_answer`` rule; only its
            centres are remembered for the decode steps).
        scored: a prompt chunk's queries already rotated for ``scoring="expected"`` (a forward of
            several chunks rotates them all at once, :func:`prompt_scoring_queries`), or None.
    """
    cfg = state.config
    b, _, qc, _ = q.shape
    g = cfg.global_size
    if total <= g + cfg.local_size:  # type: ignore[operator]
        return full_scope(b, total, qc, q.device)
    # a decode step under decode_spans="union" trades local rows for spans of its own hits
    loc, n_spans = cfg.decode_sizes(pinned=qc == 1 and kv.pinned is not None, total=total)
    # a static decode step (CUDA graphs) keeps its bucket's middle; its local rows reach the bucket's end
    static = state.static if qc == 1 else None
    m = total - g - loc if static is None else static.middle  # type: ignore[operator]
    loc_rows = total - g - m  # == loc, except in a static step
    sel = valid = None
    pins, _ = _pins(cfg, kv, qc)
    if n_spans and pins is not None and pins.shape[1] >= n_spans:
        # a step that keeps the question's spans and adds none (decode_spans="question", or "union" past
        # decode_extra_until): its own hits could only fill slots the question left empty; none are scored
        scope = Scope(*scope_from_centres(pins, m, cfg.span_size, g, loc_rows, total, qc, backend))  # type: ignore[arg-type]
        return scope if static is None else mask_unwritten(scope, static.total)
    if n_spans:
        spans = n_spans * cfg.span_size  # type: ignore[operator]
        qs = q if scored is None else scored
        if cfg.scoring == "expected" and scored is None:  # the logit a key gets at the distances a span takes
            qs = _expected_queries(state, q, loc, spans)  # type: ignore[arg-type]
        if cfg.two_level_for(qc, last):
            hits = two_level_topk(
                qs, kv, cfg.hits_for(qc), cfg.candidates, cfg.summary_block, backend, lo=g, hi=g + m
            )  # type: ignore[arg-type]
        else:
            hits = kv.score_middle(qs, g, g + m, cfg.hits_for(qc), backend)  # type: ignore[arg-type]
        if cfg.span_shift:  # spans reach further past their hits: move the hits, then pool them
            hits = (hits + cfg.span_shift).clamp(max=m - 1)
        running = cfg.decode_spans == "running"
        # a prompt chunk ranks spans by the hits they cover (not under "running": decode steps add to its votes)
        span_votes = qc > 1 and cfg.vote_pooling == "span" and not running
        if backend in FUSED_SELECT["decode" if qc == 1 else "prefill"] and not (running or span_votes):
            scope = _fused_scope(cfg, kv, hits, (m, n_spans, loc_rows, total), qc, backend, last)  # type: ignore[arg-type]
            return scope if static is None else mask_unwritten(scope, static.total)
        if span_votes and backend in SPAN_KERNELS:
            return _span_scope(cfg, kv, hits, (m, n_spans, loc_rows, total), qc, backend, last)  # type: ignore[arg-type]
        centres = _select(cfg, kv, hits, m, qc, n_spans, span_votes, backend, last).sort(dim=1).values
        sel, valid = expand_spans(centres, m, cfg.span_size)  # type: ignore[arg-type]
    scope = build_scope(sel, valid, total, qc, g, loc_rows, b, q.device)  # type: ignore[arg-type]
    return scope if static is None else mask_unwritten(scope, static.total)


def _expected_queries(state: PatchState, q: torch.Tensor, local: int, spans: int) -> torch.Tensor:
    """``q [B, H, Q, D]`` rotated by RoPE averaged over the distances ``[local, local + spans)`` a
    selected span takes in a scope of ``local`` rows and ``spans`` span tokens (``scoring="expected"``)."""
    return rotate_expected(q, *state.rope.expected(local, local + spans, q.device))


def prompt_scoring_queries(state: PatchState, query: torch.Tensor) -> torch.Tensor | None:
    """``query [B, H, Q, D]`` rotated as every prompt chunk (more than one query) scores it under
    ``scoring="expected"``: they all have the sizes of ``decode_sizes(pinned=False)``, so one
    elementwise rotation of a forward's queries serves all its chunks, bit for bit (four launches a
    forward instead of four a chunk). None when nothing scores that way."""
    cfg = state.config
    loc, n_spans = cfg.decode_sizes(pinned=False)
    if cfg.scoring != "expected" or not n_spans:
        return None
    return _expected_queries(state, query, loc, n_spans * cfg.span_size)  # type: ignore[operator]


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
    start = total - q_len
    within = total <= cfg.global_size + cfg.local_size  # type: ignore[operator]
    tail = 0 if state.joined else cfg.tail_size  # a joined forward's chunks are all whole (whole_chunks)
    bounds = [(0, q_len)] if within else chunk_bounds(q_len, cfg.chunk_size, tail)  # type: ignore[arg-type]
    outs: list[torch.Tensor] = []
    group: list[_Chunk] = []  # chunks that attend in one launch (_joins)
    scored = prompt_scoring_queries(state, query) if len(bounds) > 1 else None
    for c0, c1 in bounds:
        qc = query[:, :, c0:c1]
        qs = scored[:, :, c0:c1] if scored is not None and c1 - c0 > 1 else None
        scope = plan_scope(state, qc, kv, start + c1, backend, last=c1 == q_len, scored=qs)
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
    q = torch.cat([g[0] for g in group])  # [C, H, Qc, D]
    k, v = (t.expand(c, -1, -1, -1) for t in group[0][1:3])
    idx, kp, qp = (
        torch.cat(ts) for ts in zip(*((g[3], g[4].key_pos, g[4].q_pos) for g in group), strict=True)
    )
    out = scope_attention(q, k, v, idx, kp, qp, cos, sin, scale, sc.chunk_tail, backend)  # [C, Qc, H, D]
    return out.reshape(1, -1, *out.shape[2:])


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
