"""The engine's prefill joins whole chunks into one model forward (``prefill_forward``); the layers
split it back and every chunk selects as if fed alone, so the logits, the cached rows and the
question's remembered spans equal those of a forward per chunk, bit for bit, on the real model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reattn_llm import ReAttentionConfig
from reattn_llm.method.chunks import (
    PREFILL_FORWARD,
    Forward,
    engine_forward,
    plan_forwards,
    plan_prefill,
    prefill_bounds,
    prompt_reusable,
    reusable_length,
)
from reattn_llm.method.patch import make_cache
from reattn_llm.runtime.capacity import working_reserve
from reattn_llm.runtime.engine import Engine
from tests.conftest import SMALL_CONFIG_KWARGS
from tests.tiny_models import SMOLLM2_SHAPE

CHUNK = SMALL_CONFIG_KWARGS["chunk_size"]


def spans(forwards: list[Forward]) -> list[tuple[int, int]]:
    return [(f.start, f.end) for f in forwards]


def test_plan_forwards_join_chunks_up_to_the_forward_size():
    # a 1000-token document on the grid of 128, its 104-token remainder, then a 40-token question
    bounds = prefill_bounds(1040, 128, 16, question_start=1000)
    assert spans(plan_forwards(bounds, 3 * 128 + 50)) == [(0, 384), (384, 768), (768, 1040)]
    assert spans(plan_forwards(bounds, 128)) == bounds  # 104 + 40 tokens: 144 > 128, apart
    assert spans(plan_forwards(bounds, 144))[-1] == (896, 1040)
    assert spans(plan_forwards(bounds, 1)) == bounds  # at least one chunk
    (whole,) = plan_forwards(bounds, 10**6)
    assert whole.chunks == tuple(bounds) and whole.answer  # the chunks, relative to the forward's start
    last = plan_forwards(bounds, 384)[-1]  # (768, 1040): one whole chunk, the remainder, the question
    assert last.chunks == ((0, 128), (128, 232), (232, 272)) and last.answer
    assert not any(f.answer for f in plan_forwards(bounds, 384)[:-1])
    assert not plan_forwards(bounds, 384, answer=False)[-1].answer  # a document alone (warm)
    # a forward ends at each of ``ends`` (a sliding-window layer's snapshot where a prompt may reuse it)
    assert spans(plan_forwards(bounds, 10**6, ends=(896,))) == [(0, 896), (896, 1040)]
    # the engine's plan: the grid, the reuse end (a sliding-window model), relative to a kept prefix's end
    assert spans(plan_prefill(1040, 128, 16, 10**6, 1000, end_at_reuse=True)) == [(0, 896), (896, 1040)]
    assert spans(plan_prefill(1040, 128, 16, 10**6, 1000, start=256, end_at_reuse=True)) == [
        (0, 640),
        (640, 784),
    ]
    assert plan_prefill(1040, 128, 16, 10**6, 1000) == plan_forwards(bounds, 10**6)
    # no question: the body's remainder and the 16-token tail join the whole chunks before them
    tail = prefill_bounds(700, 128, 16)
    assert spans(plan_forwards(tail, 10**6)) == [(0, 700)]
    assert spans(plan_forwards(tail, 256)) == [(0, 256), (256, 512), (512, 700)]
    # the 131,072-token prompt on the grid of 1,024: 16 forwards of 8,192 (127 whole chunks, 1,008, 16)
    big = plan_forwards(prefill_bounds(1 << 17, 1024, 16), PREFILL_FORWARD)
    assert len(big) == 16 and {f.end - f.start for f in big} == {PREFILL_FORWARD}
    assert big[-1].chunks[-2:] == ((7168, 8176), (8176, 8192))


def test_prompt_reusable_is_the_documents_whole_chunks():
    assert prompt_reusable(1040, 128, 16, 1000) == 896 == reusable_length(1000, 128)
    assert prompt_reusable(700, 128, 16) == 640 == reusable_length(700, 128, 16)
    assert prompt_reusable(700, 128, 16, 0) == 640  # no question inside: the tail rule, as prefill_bounds


def test_a_forward_fed_other_tokens_than_announced_is_refused():
    from tiny_models import distinct_ids, tiny_model

    from reattn_llm import patch

    model = tiny_model("llama", layers=1, window=512, seed=1)
    cfg = ReAttentionConfig(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)
    (f,) = plan_forwards(prefill_bounds(40, 16, 4), 64)
    with patch(model, cfg) as handle, handle.state.running(f), pytest.raises(RuntimeError, match="announced"):
        model(input_ids=distinct_ids(1, 32, seed=1))


def test_engine_forward_rules():
    base = ReAttentionConfig(**SMALL_CONFIG_KWARGS).resolve(512)
    assert engine_forward(base, CHUNK, "cuda") == PREFILL_FORWARD  # 8192 = 64 chunks of 128
    assert engine_forward(base, CHUNK, "cpu") == CHUNK  # the CPU gains nothing; progress stays prompt
    for device in ("cuda", "cpu"):  # as asked, in whole chunks, at least one
        assert engine_forward(dataclasses.replace(base, prefill_forward=1000), CHUNK, device) == 896
        assert engine_forward(dataclasses.replace(base, prefill_forward=5), CHUNK, device) == CHUNK
    # fp8 / offload keep exact recent rows on the device that grow with the forward: one chunk unless asked
    fp8 = dataclasses.replace(base, kv_dtype="fp8")
    assert engine_forward(fp8, CHUNK, "cuda") == CHUNK
    assert engine_forward(dataclasses.replace(fp8, prefill_forward=512), CHUNK, "cuda") == 512
    full = dataclasses.replace(base, mode="full", prefill_forward=8192)
    assert engine_forward(full, 2048, "cuda") == 2048  # the stock baseline: a forward per chunk


def test_config_refuses_a_bad_prefill_forward():
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="prefill_forward"):
            ReAttentionConfig(prefill_forward=bad)


def test_working_reserve_grows_with_the_forward_and_stops_at_the_prompt():
    cfg = ReAttentionConfig(**SMALL_CONFIG_KWARGS).resolve(512)
    one = working_reserve(SMOLLM2_SHAPE, cfg, torch.float32)  # the CPU's default: a forward per chunk
    cfg = dataclasses.replace(cfg, prefill_forward=PREFILL_FORWARD)
    joined = working_reserve(SMOLLM2_SHAPE, cfg, torch.float32)
    h, inter = SMOLLM2_SHAPE.hidden_size, SMOLLM2_SHAPE.intermediate_size
    kv, d = SMOLLM2_SHAPE.num_key_value_heads, h // SMOLLM2_SHAPE.num_attention_heads
    mlp = PREFILL_FORWARD * (2 * h + 3 * inter) * 4  # the MLP temporaries of 8192 tokens
    # its 64 chunks attend as one batch: each gathers its scope's K and V, rotated, and a mask; the
    # CPU's torch twin then holds its SDPA's fp32 scores and the mask as floats
    per_chunk = (
        6 * kv * cfg.scope * d * 4
        + CHUNK * cfg.scope
        + (SMOLLM2_SHAPE.num_attention_heads + 1) * CHUNK * cfg.scope * 4
    )
    gathered = PREFILL_FORWARD // CHUNK * per_chunk
    attention = PREFILL_FORWARD * (6 * h + 2 * kv * d) * 4 + gathered
    peak = max(mlp, attention)
    assert peak <= joined <= peak + (128 << 20)  # the logits, the allocator's slack
    # a 300-token prompt joins at most its 3 chunks
    short = working_reserve(SMOLLM2_SHAPE, cfg, torch.float32, prompt=300)
    assert one < short < joined


@pytest.fixture(scope="module")
def prose_ids(shared_data):
    from reattn_llm.runtime.models import load_tokenizer

    text = (shared_data / "texts" / "austen_emma.txt").read_text(encoding="utf-8")[20000:40000]
    return load_tokenizer(None)(text, add_special_tokens=False)["input_ids"][:1500]


def prefill(forward: int, selection: str, ids: list[int], question: int) -> tuple:
    """``(logits, last layer's K/V rows, every layer's pinned centres, forward sizes, progress)``."""
    cfg = ReAttentionConfig(**SMALL_CONFIG_KWARGS, selection=selection, prefill_forward=forward)
    engine = Engine(None, device="cpu", dtype="fp32", config=cfg, progress=False, keep_prefix=False)
    assert engine.prefill_forward == forward
    calls: list[int] = []
    seen: list[int] = []
    engine.model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    cache = make_cache(engine.model, reserve=len(ids))
    logits = engine.prefill(
        torch.tensor([ids]), cache, lambda done, total, s: seen.append(done), question=question
    )
    pinned = [layer.pinned for layer in cache.layers]
    return logits, cache.layers[-1].dense(len(ids)), pinned, calls, seen


@pytest.mark.parametrize("selection", ["exact", "two_level"])
def test_joined_forwards_equal_a_forward_per_chunk(prose_ids, selection, monkeypatch):
    """1,500 tokens of prose, 3x the shrunk window, the last 20 as the question: forwards of 3
    chunks against one chunk each, the same logits, K/V rows and pinned span centres."""
    from reattn_llm.method import planning

    question = len(prose_ids) - 20
    scored: list[int] = []  # the queries of each chunk that selects two-level, layer by layer
    real = planning.two_level_topk
    monkeypatch.setattr(
        planning, "two_level_topk", lambda q, *a, **k: scored.append(q.shape[-2]) or real(q, *a, **k)
    )
    a, rows_a, pins_a, calls_a, _ = prefill(CHUNK, selection, prose_ids, question)
    scored_a, scored[:] = list(scored), []
    b, rows_b, pins_b, calls_b, seen_b = prefill(3 * CHUNK, selection, prose_ids, question)
    assert set(scored) == set(
        scored_a
    )  # chunks of the same sizes two-level (a batch of whole chunks: one call)
    if selection == "two_level":  # the document's 72-token remainder too; the question (20) exactly
        assert 72 in scored and 20 not in scored
    # 11 whole chunks of the document (1408 tokens), its 72-token remainder, the question
    assert calls_a == [CHUNK] * 11 + [72 + 20]  # the remainder and the question: 92 tokens, one forward
    assert calls_b == [3 * CHUNK] * 3 + [2 * CHUNK + 72 + 20]
    assert seen_b == [384, 768, 1152, 1500]  # progress after each forward
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(rows_a, rows_b, strict=True))
    assert all(p is not None for p in pins_a)  # the question selected spans in every layer
    assert all(torch.equal(x, y) for x, y in zip(pins_a, pins_b, strict=True))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_joined_forwards_on_tiny_models_with_sliding_layers(family):
    """Gemma 3's stock sliding-window layers see a joined forward as one long forward (their own
    mask), the full layers split it: the logits of a forward per chunk, and the sliding layers'
    snapshot at the joined forward's end (a kept prefix reusable there)."""
    from tiny_models import distinct_ids, prefill_in_forwards, tiny_gemma3, tiny_model

    from reattn_llm.kv.cache import SlidingLayer

    cfg = ReAttentionConfig(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)
    ids = distinct_ids(1, 300, seed=4) % 508 + 4  # 18 whole chunks, a 2-token remainder, the question
    logits = {}
    for tokens in (16, 64):
        model = (
            tiny_gemma3(seed=5) if family == "gemma3" else tiny_model("llama", layers=3, window=128, seed=5)
        )
        logits[tokens], layers = prefill_in_forwards(model, cfg, ids, 290, tokens)
        sliding = [layer for layer in layers if isinstance(layer, SlidingLayer)]
        assert (family == "gemma3") == bool(sliding)
        assert all(layer.can_crop(288) for layer in sliding)  # a forward ends at the document's whole chunks
    # Llama: bit for bit; Gemma's stock sliding SDPA sums a longer forward in another order (4e-7)
    assert torch.allclose(logits[16][:, -12:], logits[64][:, -12:], atol=1e-5, rtol=0)  # the last 12 queries
