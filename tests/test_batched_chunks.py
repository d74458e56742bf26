"""A forward's runs of whole prompt chunks select as one batch (``planning.plan_chunks``): one
scoring, span-vote and scope launch for the run instead of one per chunk, each chunk over its own
middle (the kernels' ``grow``). The scopes, the remembered question spans and the model's logits
equal those of planning chunk by chunk through ``method.selection``'s readable ops, bit for bit.

The Triton kernels' ``grow`` is checked against their twins under the interpreter
(``tests/kernel_cases.py``: ``topk_grow_*``, ``spans_grow_*``); here the twins run, switched on for
the torch backend (``BATCHED_CHUNKS`` and ``SPAN_KERNELS`` name only Triton by default)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from reattn_llm import ReAttentionConfig
from reattn_llm.kv.dense import TensorKV
from reattn_llm.method import planning, two_level
from reattn_llm.method.patch import make_cache
from reattn_llm.method.rope import RopeTable
from reattn_llm.method.state import PatchState
from reattn_llm.runtime.engine import Engine
from tests.conftest import SMALL_CONFIG_KWARGS

CHUNK = SMALL_CONFIG_KWARGS["chunk_size"]


@contextlib.contextmanager
def batching(on: bool) -> Iterator[list[int]]:
    """The torch backend plans runs of chunks as one batch (``on``) or each chunk through the readable
    ops (off); yields the sizes of the runs batched."""
    saved = planning.BATCHED_CHUNKS, planning.SPAN_KERNELS, planning._batched_scopes
    runs: list[int] = []

    def counted(state, query, kv, start, run, backend, scored, mode):
        runs.append(len(run))
        return saved[2](state, query, kv, start, run, backend, scored, mode)

    planning.BATCHED_CHUNKS = planning.SPAN_KERNELS = ("torch",) if on else ()
    planning._batched_scopes = counted
    try:
        yield runs
    finally:
        planning.BATCHED_CHUNKS, planning.SPAN_KERNELS, planning._batched_scopes = saved


def small_state(**kw) -> PatchState:
    cfg = ReAttentionConfig(
        global_size=4, local_size=32, span_size=8, max_spans=4, top_k=2, chunk_size=16, scoring="raw", **kw
    ).resolve(256)  # fmt: skip
    return PatchState(cfg, RopeTable.__new__(RopeTable))


TWO_LEVEL = {"selection": "two_level", "candidate_blocks": 2}


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("selection", ["exact", "two_level"])
def test_a_run_of_chunks_plans_the_scopes_of_chunk_by_chunk(selection, stride):
    """A forward of 8 whole chunks and a 5-query remainder from row 10 of a 143-row layer: the first
    chunk within ``G + L`` (full scope), two whose middle the spans tile, five batched, the short
    remainder alone. Every scope field and the remembered centres equal chunk-by-chunk planning,
    with exact and with two-level selection (2 candidate blocks of 8 keys: middles of 38 to 102 keys),
    with every query voting and with a whole chunk's every third (``query_stride=3``)."""
    torch.manual_seed(0)
    h, hkv, d, total = 4, 2, 16, 143
    keys = torch.randn(1, hkv, total, d)
    query = torch.randn(1, h, 133, d)
    bounds = [(i, i + 16) for i in range(0, 128, 16)] + [(128, 133)]
    kw = {"query_stride": stride, **(TWO_LEVEL if selection == "two_level" else {})}
    got_state, want_state = small_state(**kw), small_state(**kw)
    got_kv, want_kv = TensorKV(keys, keys), TensorKV(keys, keys)
    level1 = two_level.level1_candidates
    grows: list[int] = []
    two_level.level1_candidates = lambda *a: grows.append(a[-1]) or level1(*a)
    try:
        with batching(True) as runs:
            got = planning.plan_chunks(got_state, query, got_kv, bounds, "torch")
    finally:
        two_level.level1_candidates = level1
    assert runs == [5]  # totals 74 .. 138: middles 38 .. 102 past the 32 tokens the spans tile
    # two-level: level 1 once for the five chunks (2 blocks more each); the short remainder (the
    # question's forward) scores exactly (exact_answer)
    assert grows == ([2] if selection == "two_level" else [])
    with batching(False) as none:
        want = [
            planning.plan_scope(want_state, query[:, :, c0:c1], want_kv, 10 + c1, "torch", c1 == 133)
            for c0, c1 in bounds
        ]
    assert none == []
    fields = ("gather_idx", "key_pos", "q_pos", "middle", "middle_valid", "chunk_tail")
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        for f in fields:
            x, y = getattr(a, f), getattr(b, f)
            same = torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
            assert same, f"chunk {i}: {f} differs"
    assert torch.equal(got_kv.pinned, want_kv.pinned) and torch.equal(
        got_kv.pinned_votes, want_kv.pinned_votes
    )


@pytest.mark.parametrize("selection", ["exact", "two_level"])
def test_query_stride_scores_a_whole_chunks_every_sth_query_and_a_short_chunks_all(selection):
    """``query_stride=3``: the queries whose hits vote are a whole chunk's 0, 3, 6, ... (the scoring
    receives exactly ``q[:, :, ::3]``; two-level's level 1 strides within them), a short chunk's (the
    question's) and a decode step's all; chunk by chunk and batched alike."""
    torch.manual_seed(2)
    keys = torch.randn(1, 2, 200, 16)
    query = torch.randn(1, 4, 53, 16)
    kw = {"query_stride": 3, **(TWO_LEVEL if selection == "two_level" else {})}
    seen: list[tuple[torch.Tensor, int]] = []
    kv = TensorKV(keys, keys)
    score, two = kv.score_middle, planning.two_level_topk
    kv.score_middle = lambda q, *a, **k: seen.append((q, 1)) or score(q, *a, **k)  # type: ignore[method-assign]
    planning.two_level_topk = lambda q, *a, **k: seen.append((q, k["level1_stride"])) or two(q, *a, **k)
    try:
        for batched in (False, True):
            seen.clear()
            with batching(batched):
                planning.plan_chunks(
                    small_state(**kw), query, kv, [(0, 16), (16, 32), (32, 48), (48, 53)], "torch"
                )
            qs = [q for q, _ in seen]
            if batched:  # the three whole chunks as one batch [3, H, Q, D], then the short one
                assert torch.equal(qs[0], query[0, :, :48].unflatten(1, (3, 16)).transpose(0, 1)[:, :, ::3])
            else:
                for i in range(3):
                    assert torch.equal(qs[i], query[:, :, 16 * i : 16 * i + 16 : 3])
            assert torch.equal(qs[-1], query[:, :, 48:])  # the question's chunk: every query, exactly
            if selection == "two_level":
                assert [s for _, s in seen[:-1]] == [8] * len(seen[:-1])
        seen.clear()
        planning.plan_scope(small_state(**kw), query[:, :, :1], kv, 200, "torch")  # a decode step
        assert seen[0][0].shape[2] == 1
    finally:
        planning.two_level_topk = two


def test_the_remembered_spans_are_the_forwards_last_chunks_when_it_is_batched():
    torch.manual_seed(1)
    keys = torch.randn(1, 2, 200, 16)
    query = torch.randn(1, 4, 64, 16)
    bounds = [(i, i + 16) for i in range(0, 64, 16)]
    states, kvs = (small_state(), small_state()), (TensorKV(keys, keys), TensorKV(keys, keys))
    with batching(True) as runs:
        planning.plan_chunks(states[0], query, kvs[0], bounds, "torch")
    assert runs == [4]
    planning.plan_scope(states[1], query[:, :, 48:], kvs[1], 200, "torch", True)
    assert torch.equal(kvs[0].pinned, kvs[1].pinned) and torch.equal(kvs[0].pinned_votes, kvs[1].pinned_votes)


class BlockReads(TensorKV):
    """Keys read 32 rows at a time, as an fp8 or host layer reads them (``key_block_rows``)."""

    @property
    def key_block_rows(self) -> int:
        return 32


def test_keys_read_in_blocks_are_scored_chunk_by_chunk_inside_the_batch():
    """A layer that reads its keys in blocks scores each chunk of a batch alone
    (``kv.layer.exact_topk``'s ``grow``); the run is still one batch for the span votes and the
    scopes, each equal to planning the chunk alone (blocked too)."""
    torch.manual_seed(3)
    keys = torch.randn(1, 2, 200, 16)
    query = torch.randn(1, 4, 64, 16)
    bounds = [(i, i + 16) for i in range(0, 64, 16)]
    with batching(True) as runs:
        got = planning.plan_chunks(small_state(), query, BlockReads(keys, keys), bounds, "torch")
    assert runs == [4]
    with batching(False):
        want = [
            planning.plan_scope(small_state(), query[:, :, a:b], BlockReads(keys, keys), 136 + b, "torch")
            for a, b in bounds
        ]
    for x, y in zip(got, want, strict=True):
        assert torch.equal(x.gather_idx, y.gather_idx) and torch.equal(x.key_pos, y.key_pos)


@pytest.mark.parametrize(
    "case", ["batch of two sequences", "span_shift", "hit votes", "running votes", "backend off"]
)
def test_chunks_that_select_otherwise_are_planned_one_by_one(case):
    torch.manual_seed(2)
    b = 2 if case == "batch of two sequences" else 1
    keys = torch.randn(b, 2, 200, 16)
    query = torch.randn(b, 4, 64, 16)
    kw = {
        "span_shift": {"span_shift": 2},
        "running votes": {"decode_spans": "running"},
        "hit votes": {"vote_pooling": "hit"},
    }.get(case, {})
    bounds = [(i, i + 16) for i in range(0, 64, 16)]
    with batching(case != "backend off") as runs:
        if case == "backend off":
            planning.BATCHED_CHUNKS = ()
        got = planning.plan_chunks(small_state(**kw), query, TensorKV(keys, keys), bounds, "torch")
    assert runs == [] and len(got) == 4


@pytest.fixture(scope="module")
def prose_ids(shared_data):
    from reattn_llm.runtime.models import load_tokenizer

    text = (shared_data / "texts" / "austen_emma.txt").read_text(encoding="utf-8")[40000:60000]
    return load_tokenizer(None)(text, add_special_tokens=False)["input_ids"][:1500]


SETTINGS = {
    "exact": {},
    # 4 candidate blocks of 16 keys in middles of 252 to 1148 keys: both levels run for the batch
    "two_level": {"selection": "two_level", "candidate_blocks": 4},
    # fp8 rows: level 2 gathers each chunk's candidates from the tiered layer (entry by entry)
    "two_level_fp8": {"selection": "two_level", "candidate_blocks": 4, "kv_dtype": "fp8"},
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_default_model_prefills_the_same_with_batched_chunks(prose_ids, setting):
    """1,500 tokens of prose at 3x the shrunk window, forwards of 3 chunks, the question apart: the
    logits, the cached rows and every layer's remembered question spans equal bit for bit, with
    eight chunks of every layer selected in three batches (one a forward: runs of 3, 3, 2), with
    exact selection, two-level, and two-level over fp8 rows."""
    question = len(prose_ids) - 20
    out = {}
    for on in (False, True):
        cfg = ReAttentionConfig(**SMALL_CONFIG_KWARGS, prefill_forward=3 * CHUNK, **SETTINGS[setting])
        engine = Engine(None, device="cpu", dtype="fp32", config=cfg, progress=False, keep_prefix=False)
        cache = make_cache(engine.model, reserve=len(prose_ids))
        with batching(on) as runs:
            logits = engine.prefill(torch.tensor([prose_ids]), cache, question=question)
        layers = engine.model.config.num_hidden_layers
        assert runs == ([3] * 2 * layers + [2] * layers if on else [])  # per forward, every layer
        out[on] = logits, cache.layers[-1].dense(len(prose_ids)), [layer.pinned for layer in cache.layers]
    (a, rows_a, pins_a), (b, rows_b, pins_b) = out[False], out[True]
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(rows_a, rows_b, strict=True))
    assert all(p is not None for p in pins_a)
    assert all(torch.equal(x, y) for x, y in zip(pins_a, pins_b, strict=True))


def test_a_long_run_is_cut_where_its_span_votes_would_pass_the_batch_bytes(monkeypatch):
    """``BATCH_BYTES`` bounds a batch's span-vote arrays (20 bytes per chunk and key): a run of five
    chunks over middles of up to 138 keys, with room for three, batches 3 then 2, the same scopes."""
    monkeypatch.setattr(planning, "BATCH_BYTES", planning.SPAN_BYTES_PER_KEY * 150 * 3)
    torch.manual_seed(0)
    keys = torch.randn(1, 2, 143, 16)
    query = torch.randn(1, 4, 133, 16)
    bounds = [(i, i + 16) for i in range(0, 128, 16)] + [(128, 133)]
    with batching(True) as runs:
        got = planning.plan_chunks(small_state(), query, TensorKV(keys, keys), bounds, "torch")
    assert runs == [3, 2]
    want = [
        planning.plan_scope(small_state(), query[:, :, a:b], TensorKV(keys, keys), 10 + b, "torch")
        for a, b in bounds
    ]
    assert all(
        torch.equal(x.gather_idx, y.gather_idx) and torch.equal(x.key_pos, y.key_pos)
        for x, y in zip(got, want, strict=True)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("setting", ["exact", "two_level"])
def test_on_the_gpu_the_kernels_batch_and_the_prefill_is_unchanged(setting):
    """The Triton kernels (their default: a forward's chunks as one batch) against the same engine with
    batching off, bf16 on the GPU, 1,500 tokens of the package's own sample text (the GPU machine
    has no shared data): the same logits and remembered spans, bit for bit."""
    from reattn_llm.cli import SAMPLE
    from reattn_llm.runtime.models import load_tokenizer

    prose_ids = load_tokenizer(None)(SAMPLE.read_text()[5000:30000], add_special_tokens=False)["input_ids"][
        :1500
    ]
    question = len(prose_ids) - 20
    out = {}
    for on in (True, False):
        saved = planning.BATCHED_CHUNKS
        planning.BATCHED_CHUNKS = saved if on else ()
        try:
            cfg = ReAttentionConfig(**SMALL_CONFIG_KWARGS, prefill_forward=3 * CHUNK, **SETTINGS[setting])
            engine = Engine(None, device="cuda", dtype="bf16", config=cfg, progress=False, keep_prefix=False)
            cache = make_cache(engine.model, reserve=len(prose_ids))
            ids = torch.tensor([prose_ids], device="cuda")
            out[on] = engine.prefill(ids, cache, question=question), [layer.pinned for layer in cache.layers]
        finally:
            planning.BATCHED_CHUNKS = saved
    assert planning.BATCHED_CHUNKS == ("triton",)
    assert torch.equal(out[True][0], out[False][0])
    assert all(torch.equal(x, y) for x, y in zip(out[True][1], out[False][1], strict=True))
