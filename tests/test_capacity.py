"""Capacity and allocation agree: every request the capacity admits allocates, one more token is
refused before prefill, and a kept prefix of another document does not shrink the capacity."""

from __future__ import annotations

import pytest
import torch

from reattn_llm import ContextTooLongError, ReAttentionConfig
from reattn_llm.kv.cache import ReAttentionCache
from reattn_llm.kv.dense import DenseLayer
from reattn_llm.kv.storage import KVStorage, rows_to_allocate
from reattn_llm.runtime import capacity as capacity_mod
from reattn_llm.runtime.capacity import Capacity, kv_bytes_per_token
from reattn_llm.runtime.engine import Engine, SamplingParams
from tests.tiny_models import SMOLLM2_SHAPE

MAX_BYTES = 2_000_000  # 43 tokens of the default model's fp32 K/V (46,080 bytes per token)


def _borrow(engine: Engine, donor: Engine) -> Engine:
    """``engine`` running on ``donor``'s loaded, patched model (same config: no second load)."""
    engine._model, engine._tokenizer, engine._handle = donor._model, donor._tokenizer, donor._handle
    return engine


def _words(n: int) -> str:
    """A plain-text prompt of exactly ``n`` tokens for the default model's tokenizer."""
    return "the" + " the" * (n - 1)


def test_growth_policy_stays_within_the_limit_unless_the_need_is_larger():
    assert rows_to_allocate(37) == 256  # no reserve, no budget: a first buffer of MIN_CAPACITY rows
    assert rows_to_allocate(37, limit=43) == 43  # ...clipped to what the budget affords
    assert rows_to_allocate(37, reserve=40, limit=43) == 40  # a known total: exactly that
    assert rows_to_allocate(44, held=43, limit=43) == 44  # more than affordable: the budget refuses it
    assert rows_to_allocate(300, held=256) == 384 and rows_to_allocate(200, held=256) == 256


@pytest.mark.parametrize("storage", ["model", "fp8", "offload_values"])
@pytest.mark.parametrize("reserve", [True, False])
def test_every_admitted_length_allocates_and_one_more_does_not(storage, reserve):
    """The allocator (dense and tiered layers, with or without a reserved total, appending in small
    pieces) fits every length the capacity admits under ``max_cache_bytes``, and not one more."""
    sizes = dict(window=512, global_size=4, local_size=32, span_size=16, max_spans=4, chunk_size=16)
    extra = {"fp8": dict(kv_dtype="fp8"), "offload_values": dict(offload="values")}.get(storage, {})
    cfg = ReAttentionConfig(**sizes, **extra)
    layers, kv, d = SMOLLM2_SHAPE.num_hidden_layers, SMOLLM2_SHAPE.num_key_value_heads, SMOLLM2_SHAPE.head_dim
    per_tok = kv_bytes_per_token(SMOLLM2_SHAPE, torch.float32, cfg)
    cap = Capacity(10**9, per_tok, 0, 0, 0, "cpu").within(MAX_BYTES).max_tokens
    assert cap == MAX_BYTES // per_tok and cap > 0

    def fill(n: int) -> ReAttentionCache:
        cache = ReAttentionCache(
            layers, reserve=n if reserve else 0, max_bytes=MAX_BYTES, storage=KVStorage.from_config(cfg)
        )
        for start in range(0, n, 7):  # a prefill chunk, then decode-like small appends
            q = min(7, n - start)
            for i in range(layers):
                cache.update(torch.randn(1, kv, q, d), torch.randn(1, kv, q, d), i)
        return cache

    cache = fill(cap)
    assert cache.get_seq_length() == cap
    on_device = sum(
        layer.nbytes()
        if isinstance(layer, DenseLayer)
        else sum(s.nbytes() for s in (layer.cold_k, layer.cold_v) if not s.offloaded)
        for layer in cache.layers
    )  # the bytes the budget charges (a tiered layer's exact hot rows are not)
    assert on_device <= MAX_BYTES
    with pytest.raises(torch.OutOfMemoryError, match="budget exceeded"):
        fill(cap + 1 if reserve else cap + 7)


@pytest.fixture(scope="module")
def donor(shared_engine):
    return shared_engine


def test_largest_admitted_request_runs_and_one_more_token_is_refused(donor, monkeypatch):
    small = _borrow(
        Engine(config=donor.user_config, progress=False, keep_prefix=False, max_cache_bytes=MAX_BYTES), donor
    )
    cap = small.capacity()
    assert cap.max_tokens == 43
    caches = []
    real_prefill = small.prefill

    def spy(ids, cache, *a, **k):
        caches.append(cache)
        return real_prefill(ids, cache, *a, **k)

    monkeypatch.setattr(small, "prefill", spy)
    new = 13
    done = small.complete(_words(cap.max_tokens - new), SamplingParams(max_new_tokens=new), chat=False)
    assert done.prompt_tokens == cap.max_tokens - new  # 37 tokens: the request the issue saw fail with OOM
    (cache,) = caches
    assert cache.layers[0].capacity == cap.max_tokens  # the rows for prompt + answer, not 256
    assert cache.nbytes() <= MAX_BYTES
    monkeypatch.setattr(small, "prefill", lambda *a, **k: pytest.fail("no prefill past the capacity"))
    with pytest.raises(ContextTooLongError, match=r"holds at most 43 tokens.*capped at 2,000,000 bytes"):
        small.complete(_words(cap.max_tokens - new + 1), SamplingParams(max_new_tokens=new), chat=False)


def test_kept_prefix_of_another_document_does_not_shrink_capacity(donor, monkeypatch):
    """Free memory is modelled as a fixed amount minus what the kept prefix holds (as on a device
    where it is resident); the capacity for a new document must not lose the prefix's tokens."""
    engine = _borrow(Engine(config=donor.user_config, progress=False, keep_prefix=True), donor)
    per_tok, reserve = engine.capacity().kv_bytes_per_token, engine.capacity().reserve_bytes
    total = int((reserve + 200 * per_tok) / capacity_mod._SAFETY) + 1

    def held() -> int:
        prefix = engine.prefixes.prefix
        return 0 if prefix is None else prefix.cache.nbytes()

    monkeypatch.setattr(capacity_mod, "available_bytes", lambda device: total - held())
    before = engine.capacity().max_tokens
    assert before == 200
    engine.complete("The sky is blue. " * 20, SamplingParams(max_new_tokens=4), chat=False)  # document A
    assert held() > 80 * per_tok  # its K/V are kept
    assert engine.capacity().max_tokens == before
    doc_b = _words(before - 4)  # another document, as long as the capacity allows
    done = engine.complete(doc_b, SamplingParams(max_new_tokens=4), chat=False)
    assert done.prompt_tokens == before - 4 and engine.last_prefill_tokens == before - 4  # nothing reused
    with pytest.raises(ContextTooLongError):
        engine.check_fits(before - 3, 4)
