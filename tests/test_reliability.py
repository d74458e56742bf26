"""Faults and limits: out of memory mid-prefill, cancelled streams, input limits; the engine recovers."""

from __future__ import annotations

import gc
import weakref

import pytest

from reattn_llm import ConfigError, ContextTooLongError, ReAttentionConfig
from reattn_llm.errors import DocumentNotFoundError, OutOfMemoryError, UnsupportedModelError
from reattn_llm.runtime.engine import Engine, SamplingParams

CFG = ReAttentionConfig(window=512, global_size=4, local_size=256, span_size=16, max_spans=15, chunk_size=128)
DOC = "The grass is green. The sky is blue. " * 150 + "The secret code is 73914. " + "Here we go. " * 100
Q = "\n\nWhat is the secret code?"


@pytest.fixture(scope="module")
def engine():
    return Engine(config=CFG, progress=False, keep_prefix=False).load()


def _caches_alive():
    from reattn_llm.kv.cache import ReAttentionCache

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, ReAttentionCache)]


def test_out_of_memory_mid_prefill_frees_the_cache_and_recovers(engine, monkeypatch):
    before = len(_caches_alive())
    small = Engine(config=CFG, progress=False, keep_prefix=False, max_cache_bytes=8 << 20)
    small._model, small._tokenizer, small._handle = engine._model, engine._tokenizer, engine._handle
    # 8 MiB holds ~180 tokens of this model's fp32 K/V: the check before prefill would refuse the
    # prompt, so bypass it to hit the cap for real in the middle of the prefill
    monkeypatch.setattr(small, "check_fits", lambda *a: None)
    refs = []
    real_prefill = small.prefill

    def spy(ids, cache, *a, **k):
        refs.append(weakref.ref(cache))
        return real_prefill(ids, cache, *a, **k)

    monkeypatch.setattr(small, "prefill", spy)
    with pytest.raises(OutOfMemoryError, match="cache was freed") as err:
        small.complete(DOC + Q, SamplingParams(max_new_tokens=8))
    assert isinstance(err.value, MemoryError)
    del err
    gc.collect()
    assert refs and refs[0]() is None  # the request's cache is gone
    assert len(_caches_alive()) == before
    ok = engine.complete(DOC + Q, SamplingParams(max_new_tokens=20))
    assert "73914" in ok.text


def test_cancelled_stream_frees_state_and_next_request_runs(engine):
    before = len(_caches_alive())
    gen = engine.generate(DOC + Q, SamplingParams(max_new_tokens=40))
    next(gen)
    gen.close()
    assert len(_caches_alive()) == before
    assert engine._lock.waiting == 0  # the FIFO lock was released
    assert "73914" in engine.complete(DOC + Q, SamplingParams(max_new_tokens=20)).text


def test_budget_shrinks_capacity_and_refuses_before_prefill(engine, monkeypatch):
    small = Engine(config=CFG, progress=False, max_cache_bytes=8 << 20)
    small._model, small._tokenizer, small._handle = engine._model, engine._tokenizer, engine._handle
    assert small.capacity().max_tokens == (8 << 20) // small.capacity().kv_bytes_per_token
    monkeypatch.setattr(small, "prefill", lambda *a, **k: pytest.fail("no prefill"))
    with pytest.raises(ContextTooLongError):
        small.complete(DOC + Q, SamplingParams(max_new_tokens=8))


def test_input_limits_fail_clearly_before_loading_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "reattn_llm.runtime.models.load_model", lambda *a, **k: pytest.fail("weights must not load")
    )
    with pytest.raises(ConfigError, match="chunk_size"):
        Engine(config=ReAttentionConfig(local_size=64, chunk_size=128)).config  # noqa: B018
    from transformers import BertConfig

    BertConfig(num_hidden_layers=1).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="supported"):
        Engine(model=str(tmp_path / "bert")).load()
    with pytest.raises(UnsupportedModelError, match="is a file"):
        (tmp_path / "weights.bin").write_bytes(b"x")
        Engine(model=str(tmp_path / "weights.bin")).load()
    from reattn_llm import load_document

    with pytest.raises(DocumentNotFoundError):
        load_document(tmp_path / "missing.pdf")
    with pytest.raises(DocumentNotFoundError):
        load_document(tmp_path)
    with pytest.raises(ValueError, match="max_cache_bytes"):
        Engine(max_cache_bytes=0)
