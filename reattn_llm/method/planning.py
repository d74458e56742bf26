"""The scope of each query chunk: stock full attention within ``G + L``, else global + selected + local.

:func:`plan_scope` scores a chunk's queries against the middle keys (exactly, or two-level), pools
the hits into span centres (per ``vote_pooling`` / ``decode_spans``, with what the layer remembers
of the question) and builds the chunk's :class:`~.selection.Scope`; the backends run it as
fused kernels or as the readable ops of :mod:`.selection`, the same scope either way.
:func:`plan_chunks` plans all the chunks of one forward, the runs of whole prompt chunks that
select alike as one batch (:data:`BATCHED_CHUNKS`).
"""

from __future__ import annotations

import torch

from ..kernels import rank_spans, rotate_one, scope_from_centres, select_scope
from ..kv.layer import KVReader
from .config import ReAttentionConfig
from .rope import rotate_expected
from .selection import Scope, build_scope, expand_spans, full_scope, mask_unwritten, rank_centres
from .state import PatchState
from .two_level import two_level_topk

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
    answer: bool | None = None,
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
        answer: with ``last``, whether the chunk is the answer's (``ReAttentionConfig.two_level_for``;
            None: when shorter than a chunk); a chunk that does not end its forward never is.
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
        return scope if static is None else _unwritten(state, scope, backend)
    if n_spans:
        answer = answer if last else False
        qs, stride1 = _voting_queries(state, q, scored, loc, n_spans, backend, answer)  # type: ignore[arg-type]
        if cfg.two_level_for(qc, answer):
            hits = two_level_topk(
                qs,
                kv,
                cfg.hits_for(qc),
                cfg.candidates,
                cfg.summary_block,
                backend,
                lo=g,
                hi=g + m,
                level1_stride=stride1,
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
            return scope if static is None else _unwritten(state, scope, backend)
        if span_votes and backend in SPAN_KERNELS:
            return _span_scope(cfg, kv, hits, (m, n_spans, loc_rows, total), qc, backend, last)  # type: ignore[arg-type]
        centres = _select(cfg, kv, hits, m, qc, n_spans, span_votes, backend, last).sort(dim=1).values
        sel, valid = expand_spans(centres, m, cfg.span_size)  # type: ignore[arg-type]
    scope = build_scope(sel, valid, total, qc, g, loc_rows, b, q.device)  # type: ignore[arg-type]
    return scope if static is None else _unwritten(state, scope, backend)


def _unwritten(state: PatchState, scope: Scope, backend: str) -> Scope:
    """A static decode step's scope cut to the rows written (:func:`mask_unwritten`), its largest
    query position kept in the same launch (:meth:`PatchState.note_positions` then has nothing to do)."""
    static = state.static
    track = static.max_position if state.track_positions else None  # type: ignore[union-attr]
    return mask_unwritten(scope, static.total, backend, track)  # type: ignore[union-attr]


def _voting_queries(
    state: PatchState,
    q: torch.Tensor,
    scored: torch.Tensor | None,
    local: int,
    n_spans: int,
    backend: str,
    answer: bool | None = None,
) -> tuple[torch.Tensor, int]:
    """The queries whose hits vote for a chunk's spans, and two-level's level-1 stride among them:
    every ``query_stride``-th of a document chunk's ``q [B, H, Q, D]`` (all of the answer's chunk,
    ``answer``: :meth:`~.config.ReAttentionConfig.strides_for`), taken from ``scored`` (the same queries already
    rotated for ``scoring="expected"``) when given, else rotated here when that scoring is on (only
    the voting ones: the logit a key gets at the distances a span takes)."""
    cfg = state.config
    stride, stride1 = cfg.strides_for(q.shape[2], answer)
    qs = (q if scored is None else scored)[:, :, ::stride]
    if cfg.scoring == "expected" and scored is None:
        qs = _expected_queries(state, qs, local, n_spans * cfg.span_size, backend)  # type: ignore[operator]
    return qs, stride1


def _expected_queries(
    state: PatchState, q: torch.Tensor, local: int, spans: int, backend: str
) -> torch.Tensor:
    """``q [B, H, Q, D]`` rotated by RoPE averaged over the distances ``[local, local + spans)`` a
    selected span takes in a scope of ``local`` rows and ``spans`` span tokens (``scoring="expected"``);
    one kernel on Triton (full rotary width), the readable ops otherwise."""
    rope = state.rope.expected(local, local + spans, q.device)
    if backend == "triton" and rope.cos.shape[-1] == q.shape[-1]:
        return rotate_one(q, rope.cos, rope.sin, backend)
    return rotate_expected(q, *rope)


def prompt_scoring_queries(state: PatchState, query: torch.Tensor, backend: str) -> torch.Tensor | None:
    """``query [B, H, Q, D]`` rotated as every prompt chunk (more than one query) scores it under
    ``scoring="expected"``: they all have the sizes of ``decode_sizes(pinned=False)``, so one
    elementwise rotation of a forward's queries serves all its chunks, bit for bit (a launch a forward
    on Triton, four through the readable ops, instead of as many a chunk). None when nothing scores
    that way."""
    cfg = state.config
    loc, n_spans = cfg.decode_sizes(pinned=False)
    if cfg.scoring != "expected" or not n_spans:
        return None
    return _expected_queries(state, query, loc, n_spans * cfg.span_size, backend)  # type: ignore[operator]


#: Backends whose runs of whole prompt chunks in one forward select as one batch: the run's scoring,
#: span votes and scope kernels launch once, each chunk over its own middle (the kernels' ``grow``),
#: instead of once per chunk; the same scopes bit for bit (``tests/test_batched_chunks.py``). Chunks
#: that select otherwise (within ``G + L``, a middle the spans tile, ``span_shift``, hit votes,
#: ``decode_spans="running"``, several sequences) are planned one by one. Exact and two-level
#: selection both batch; a layer whose keys are read in blocks (fp8, host) scores entry by entry
#: inside the reader (:func:`~reattn_llm.kv.layer.exact_topk`, ``KVReader.score_blocks``).
BATCHED_CHUNKS: tuple[str, ...] = ("triton",)
#: The most bytes a batch's span-vote arrays take (20 per chunk and middle key: hits per key, their
#: order keys, the peaks); a longer run is cut into batches of fewer chunks (at least two), so a
#: batch at millions of keys stays bounded (``runtime.capacity.working_reserve`` counts it).
BATCH_BYTES = 256 << 20
#: Bytes per chunk and middle key of a batch's span votes (``kernels.triton_spans``: int32 hits, int64
#: keys, and the centres' int64 list, one slot per ``span_size`` keys: at most 8 bytes a key at span 1).
SPAN_BYTES_PER_KEY = 20


def plan_chunks(
    state: PatchState,
    query: torch.Tensor,
    kv: KVReader,
    bounds: list[tuple[int, int]],
    backend: str,
    scored: torch.Tensor | None = None,
    answer: bool | None = None,
) -> list[Scope]:
    """The scope of every chunk ``bounds`` (query ranges, in order) of one forward: :func:`plan_scope`
    each, but runs of two or more whole prompt chunks that :func:`_batch_mode` admits as one batch
    (:func:`_batched_scopes`). ``query [B, H, Q, D]`` is the forward's (its last query is the
    layer's last row); ``scored`` its queries rotated for scoring (:func:`prompt_scoring_queries`);
    ``answer``: whether its last chunk is the answer's (``PatchState.chunks_of``; None: not said)."""
    q_len = query.shape[2]
    start = kv.length - q_len  # the forward's first query is cache row ``start``
    answers = [answer if c1 == q_len else False for _, c1 in bounds]
    modes = [  # the answer's chunk (its own strides) selects alone
        None if a else _batch_mode(state, query.shape[0], start + c1, c1 - c0, a, backend)
        for (c0, c1), a in zip(bounds, answers, strict=True)
    ]
    scopes: list[Scope] = []
    i = 0
    while i < len(bounds):
        j, size = i + 1, bounds[i][1] - bounds[i][0]
        while modes[i] and j < len(bounds) and modes[j] == modes[i] and bounds[j][1] - bounds[j][0] == size:
            if j - i >= max(2, BATCH_BYTES // (SPAN_BYTES_PER_KEY * (start + bounds[j][1]))):
                break  # the batch's span-vote arrays would pass BATCH_BYTES
            j += 1
        if j - i > 1:
            scopes.extend(_batched_scopes(state, query, kv, start, bounds[i:j], backend, scored, modes[i]))
        else:
            c0, c1 = bounds[i]
            qs = scored[:, :, c0:c1] if scored is not None and c1 - c0 > 1 else None
            last = c1 == q_len
            scopes.append(
                plan_scope(state, query[:, :, c0:c1], kv, start + c1, backend, last, qs, answers[i])
            )
        i = j
    return scopes


def _batch_mode(
    state: PatchState, batch: int, total: int, qc: int, answer: bool | None, backend: str
) -> str | None:
    """How a chunk of ``qc`` queries seeing ``total`` keys (``answer``: the answer's, as
    ``ReAttentionConfig.two_level_for`` takes it) scores, when it takes :func:`plan_scope`'s path that
    :func:`_batched_scopes` batches (one sequence, a prompt chunk past ``G + L`` whose middle the spans
    do not tile, span votes in kernels, no ``span_shift``): ``"exact"`` or ``"two_level"``; else None.
    A run batches chunks of one mode."""
    cfg = state.config
    g, span = cfg.global_size, cfg.span_size
    if backend not in BATCHED_CHUNKS or batch != 1 or qc < 2 or total <= g + cfg.local_size:  # type: ignore[operator]
        return None
    loc, n_spans = cfg.decode_sizes(pinned=False)
    m = total - g - loc  # type: ignore[operator]
    two_level = cfg.two_level_for(qc, answer)
    if (
        n_spans > 0
        and m > n_spans * span  # type: ignore[operator]
        and m >= cfg.hits_for(qc)
        and not cfg.span_shift
        and cfg.vote_pooling == "span"
        and cfg.decode_spans != "running"
        and backend in SPAN_KERNELS
    ):
        return "two_level" if two_level else "exact"
    return None


def _batched_scopes(
    state: PatchState,
    query: torch.Tensor,
    kv: KVReader,
    start: int,
    run: list[tuple[int, int]],
    backend: str,
    scored: torch.Tensor | None,
    mode: str,
) -> list[Scope]:
    """The scopes of ``run``, C consecutive chunks of Q queries that :func:`_batch_mode` admits (all in
    ``mode``: ``"exact"`` or ``"two_level"``), selected
    as one batch of C: their queries ``[C, H, Q, D]`` (a view of ``query [1, H, ., D]``) over the
    layer's middle expanded to C with batch stride 0, chunk c scoring, ranking and building its scope
    over its own middle (``grow=Q``), under two-level selection too
    (:func:`~.two_level.two_level_topk`). Each scope is row c of the batch's, a ``[1, ...]`` view;
    equal bit for bit to :func:`plan_scope`'s for the chunk (its ``_span_scope`` path), and the
    forward's last chunk, when in the run, is remembered as there."""
    cfg = state.config
    g, span = cfg.global_size, cfg.span_size
    loc, n_spans = cfg.decode_sizes(pinned=False)
    c, qc = len(run), run[0][1] - run[0][0]
    lo, hi = run[0][0], run[-1][1]
    total = start + hi  # the run's last chunk's keys
    m = total - g - loc  # type: ignore[operator]

    def chunks(t: torch.Tensor) -> torch.Tensor:  # [1, H, ., D] -> the run's chunks [C, H, Q, D]
        return t[0, :, lo:hi].unflatten(1, (c, qc)).transpose(0, 1)

    qs, stride1 = _voting_queries(
        state, chunks(query), None if scored is None else chunks(scored), loc, n_spans, backend
    )  # type: ignore[arg-type]
    k = cfg.hits_for(qc)
    if mode == "two_level":  # both levels for the batch, each chunk over its middle
        bs = cfg.summary_block
        hits = two_level_topk(
            qs, kv, k, cfg.candidates, bs, backend, lo=g, hi=g + m, grow=qc, level1_stride=stride1
        )  # type: ignore[arg-type]
    else:
        hits = kv.score_middle(qs, g, g + m, k, backend, grow=qc)  # type: ignore[operator]
    centres, votes = rank_spans(hits, m, n_spans, span, backend, grow=qc)  # type: ignore[arg-type]
    if hi == query.shape[2]:  # the forward's last chunk: the decode steps keep its centres
        _remember(kv, centres[-1:], votes[-1:], m)
    parts = scope_from_centres(centres, m, span, g, loc, total, qc, backend, grow=qc)  # type: ignore[arg-type]
    return [Scope(*(p[i : i + 1] for p in parts)) for i in range(c)]
