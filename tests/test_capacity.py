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


# --- the families' shapes: Gemma 3's sliding-window layers, Phi-3's head size ---------------------


def test_sliding_layers_hold_their_window_and_capacity_counts_it(monkeypatch):
    """Tiny Gemma 3 (4 sliding layers of window 16, 2 full-attention layers): the per-token cost is the
    full layers' alone, the sliding layers' bytes never pass :func:`sliding_kv_bytes` however long the
    context (prefill chunks and decode steps), and the capacity takes those bytes off before dividing."""
    from tiny_models import tiny_gemma3

    from reattn_llm import patch
    from reattn_llm.kv.cache import SlidingLayer
    from reattn_llm.method.patch import make_cache
    from reattn_llm.runtime.capacity import estimate_capacity, sliding_kv_bytes

    model = tiny_gemma3(seed=3)
    row = 2 * 2 * 32 * 4  # K and V, 2 KV heads, head_dim 32, fp32
    per_tok = kv_bytes_per_token(model.config, torch.float32)
    assert per_tok == 2 * row  # the two full-attention layers only, not 6 * row
    assert sliding_kv_bytes(model.config, torch.float32) == 4 * SlidingLayer.max_rows(16) * row
    assert sliding_kv_bytes(model.config, torch.float32, tokens=10) == 4 * 5 * 10 * row
    cfg = ReAttentionConfig(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)
    ids = torch.randint(4, 512, (1, 400), generator=torch.Generator().manual_seed(0))
    with patch(model, cfg), torch.no_grad():
        cache = make_cache(model, reserve=400)
        for s in range(0, 390, 30):  # chunks larger than the window, then decode steps
            model(ids[:, s : min(s + 30, 390)], past_key_values=cache)
        sliding_peak = 0
        for t in range(390, 400):
            model(ids[:, t : t + 1], past_key_values=cache)
            sliding_peak = max(
                sliding_peak, sum(layer.nbytes() for layer in cache.layers if layer.is_sliding)
            )
    assert 0 < sliding_peak <= sliding_kv_bytes(model.config, torch.float32)
    assert sum(layer.nbytes() for layer in cache.layers if not layer.is_sliding) == 400 * per_tok
    resolved = cfg.resolve(128)
    monkeypatch.setattr(capacity_mod, "available_bytes", lambda device: 10**9)
    cap = estimate_capacity(model.config, torch.device("cpu"), torch.float32, resolved, weights_loaded=True)
    usable = (
        int(10**9 * capacity_mod._SAFETY) - cap.reserve_bytes - sliding_kv_bytes(model.config, torch.float32)
    )
    assert cap.sliding_bytes == 4 * SlidingLayer.max_rows(16) * row
    assert cap.max_tokens == usable // per_tok > 0
    assert "sliding-window layers" in cap.explain()


def test_phi3_head_size_and_parameters_come_from_hidden_over_heads():
    """Phi-3's config has no head_dim (hidden_size / heads): Phi-3-mini-4k's shape gives 384 KiB of
    bf16 K/V per token and 3.82B parameters (fused qkv_proj / gate_up_proj counted as the separate
    projections), and a tiny Phi-3, Gemma 3 and Llama count as many parameters as they hold."""
    from tiny_models import tiny_gemma3, tiny_model, tiny_phi3
    from transformers import Phi3Config

    from reattn_llm.runtime.capacity import parameter_count

    mini = Phi3Config(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32)
    assert kv_bytes_per_token(mini, torch.bfloat16) == 32 * 32 * 2 * 96 * 2 == 384 * 1024
    assert abs(parameter_count(mini) - 3.821e9) < 0.005e9
    for model in (tiny_phi3(), tiny_gemma3(), tiny_model("llama")):
        real = sum(p.numel() for p in model.parameters())
        assert abs(parameter_count(model.config) - real) <= 0.01 * real, type(model).__name__


def test_span_vote_keys_bound_the_capacity_and_the_kernels_refuse_past_them(monkeypatch):
    """The span votes rank middle rows by one int64 key, ``(votes·(n + 1) + own)·M + ...`` for ``n``
    hits a prompt chunk: 64 query heads x 1,024 queries x ``top_k=32`` reach 2^63 at a 2.1M-token
    middle, so the capacity stops there (and says why) while memory would hold far more; the 8B shape's
    defaults stay at 5.4e8 tokens. Past the bound the ranking refuses before allocating anything."""
    from transformers import LlamaConfig

    from reattn_llm.kernels.torch_select import check_vote_keys, rank_spans_torch
    from reattn_llm.runtime.capacity import estimate_capacity, vote_key_tokens

    wide = LlamaConfig(
        hidden_size=8192, num_attention_heads=64, num_key_value_heads=8, num_hidden_layers=2, vocab_size=256
    )
    cfg = ReAttentionConfig(top_k=32, chunk_size=1024)
    n = 64 * 1024 * 32
    assert vote_key_tokens(wide, cfg) == (2**63 - 1) // (n + 1) ** 2 == 2_097_150
    eight_b = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8)
    assert (
        vote_key_tokens(eight_b, ReAttentionConfig()) == (2**63 - 1) // (32 * 1024 * 4 + 1) ** 2 > 5 * 10**8
    )
    assert vote_key_tokens(wide, ReAttentionConfig(mode="streaming")) > 10**18  # no span votes
    monkeypatch.setattr(capacity_mod, "available_bytes", lambda device: 10**15)
    cap = estimate_capacity(wide, torch.device("cpu"), torch.bfloat16, cfg, weights_loaded=True)
    assert cap.max_tokens == cap.vote_key_tokens == 2_097_150
    assert "span votes exact up to 2,097,150 tokens" in cap.explain()
    check_vote_keys("x", 3, 2**63 // 16 - 1)  # (3 + 1)^2 * M < 2^63
    with pytest.raises(ValueError, match="top_k"):
        check_vote_keys("x", 3, 2**63 // 16)
    with pytest.raises(ValueError, match="overflow the span votes' int64 keys"):
        rank_spans_torch(torch.zeros(1, 3, dtype=torch.int64), 2**61, 4, 8)  # a [1, 2^61] array never made
