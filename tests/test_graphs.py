"""Static decode steps (reattn_llm.runtime.graphs): the bucketed steps that CUDA graphs replay.

On the CPU the decoder runs its static steps eagerly (``capture=False``): a bucket of one step is
the eager step exactly, longer buckets keep the scope's bound and still answer from far back. On
a GPU the replayed graph must equal the same static steps run eagerly.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from reattn_llm.method.patch import make_cache
from reattn_llm.method.state import SelectionRecorder
from reattn_llm.runtime.graphs import EagerSteps, GraphDecoder, bucket_for, engine_decoder, unsupported

FACT = "The secret code of the archive room is 73914."
QUESTION = "What is the secret code of the archive room?"


def _prompt(engine, tokens: int = 1000) -> list[int]:
    from importlib.resources import files

    text = (files("reattn_llm") / "data" / "pride_and_prejudice_1-3.txt").read_text(encoding="utf-8")
    words = text.split()
    body = " ".join(words[: int(tokens * 0.7)])
    cut = len(body) // 4
    doc = body[:cut] + " " + FACT + " " + body[cut:]
    from reattn_llm.runtime.sampling import SamplingParams

    prompt = f"{doc}\n\nAnswer the question using the document above.\nQuestion: {QUESTION}"
    return engine.prepare(prompt, SamplingParams(max_new_tokens=16))


def _decode(engine, enc, steps: int, bucket: int | None, capture: bool = False):
    """Greedy ``steps`` tokens after prefilling ``enc``: plain eager steps (``bucket=None``) or static
    steps in buckets; returns (tokens, logits per step, the decoder or None, the cache)."""
    model, state = engine.model, engine._handle.state
    cache = make_cache(model, reserve=len(enc.ids) + steps)
    ids = torch.tensor([enc.ids], device=engine.device)
    logits = engine.prefill(ids, cache, question=enc.question)
    tokens, outs = [], []
    dec = None if bucket is None else GraphDecoder(model, cache, state, bucket=bucket, capture=capture)
    try:
        for _ in range(steps):
            tok = int(logits.argmax(-1))
            tokens.append(tok)
            t = torch.tensor([[tok]], device=engine.device)
            logits = engine.decode_one_token(t, cache) if dec is None else dec.step(t)
            outs.append(logits.float().clone())
    finally:
        if dec is not None:
            dec.close()
    return tokens, outs, dec, cache


@pytest.fixture(scope="module")
def eager_run(shared_engine):
    enc = _prompt(shared_engine)
    return enc, _decode(shared_engine, enc, 16, None)


def test_a_bucket_of_one_step_is_the_eager_step(shared_engine, eager_run):
    enc, (tokens, outs, _, cache) = eager_run
    s_tokens, s_outs, dec, s_cache = _decode(shared_engine, enc, 16, 1)
    assert s_tokens == tokens
    for a, b in zip(outs, s_outs, strict=True):
        assert torch.equal(a, b)
    # the decoder handed the cache back with every row counted, the rows themselves identical
    assert dec.length == len(enc.ids) + 16 == s_cache.layers[0].length == cache.layers[0].length
    for a, b in zip(cache.layers, s_cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_rows_not_yet_written_never_reach_the_answer(shared_engine):
    """A static step's scope reaches rows not written yet (masked); whatever their buffer holds
    (here NaN, as fresh GPU memory may) must not reach the logits: 0 x NaN is NaN."""
    enc = _prompt(shared_engine, 600)
    model, state = shared_engine.model, shared_engine._handle.state
    runs = []
    for poison in (False, True):
        cache = make_cache(model, reserve=len(enc.ids) + 8)
        ids = torch.tensor([enc.ids], device=shared_engine.device)
        logits = shared_engine.prefill(ids, cache, question=enc.question)
        if poison:
            with torch.inference_mode():
                for layer in cache.layers:
                    layer._k[:, :, len(enc.ids) :] = float("nan")
                    layer._v[:, :, len(enc.ids) :] = float("nan")
        outs = []
        with GraphDecoder(model, cache, state, bucket=8, capture=False) as dec:
            for _ in range(8):
                logits = dec.step(logits.argmax(-1).reshape(1, 1))
                outs.append(logits.clone())
        runs.append(outs)
    for clean, poisoned in zip(*runs, strict=True):
        assert torch.isfinite(poisoned).all()
        assert torch.equal(clean, poisoned)


def test_two_level_selection_runs_static_too(small_config):
    """Two-level selection (8 candidate blocks of a middle of about 50) in buckets of one step is
    its eager step bit for bit; its block summaries come from the bucket's first step."""
    from reattn_llm.runtime.engine import Engine

    cfg = dataclasses.replace(small_config, selection="two_level", candidate_blocks=8)
    engine = Engine(None, device="cpu", config=cfg, progress=False).load()
    enc = _prompt(engine)
    tokens, outs, _, _ = _decode(engine, enc, 6, None)
    s_tokens, s_outs, _, _ = _decode(engine, enc, 6, 1)
    assert s_tokens == tokens
    for a, b in zip(outs, s_outs, strict=True):
        assert torch.equal(a, b)


def test_fp8_rows_on_the_device_run_static_too(small_config):
    """fp8 storage (the tiered layer, rows on the device) decodes static: buckets of one step are its
    eager steps bit for bit, buckets of 8 still answer from far back; offloaded rows stay eager."""
    from reattn_llm.kv.storage import KVStorage
    from reattn_llm.kv.tiered import TieredLayer
    from reattn_llm.runtime.engine import Engine

    cfg = dataclasses.replace(small_config, kv_dtype="fp8")
    engine = Engine(None, device="cpu", config=cfg, progress=False).load()
    short = _prompt(engine, 600)  # still past G + L: the steps select
    tokens, outs, _, cache = _decode(engine, short, 8, None)
    assert isinstance(cache.layers[0], TieredLayer) and unsupported(cache, engine._handle.state) is None
    s_tokens, s_outs, _, _ = _decode(engine, short, 8, 1)
    assert s_tokens == tokens
    for a, b in zip(outs, s_outs, strict=True):
        assert torch.equal(a, b)
    enc = _prompt(engine)
    b_tokens, _, dec, b_cache = _decode(engine, enc, 14, 8)
    assert "73914" in engine.tokenizer.decode(b_tokens)
    assert dec.length == b_cache.layers[0].length == len(enc.ids) + 14
    offloaded = SimpleNamespace(layers=[TieredLayer(KVStorage("fp8", "values", 4, 256))])
    assert "offloaded" in unsupported(offloaded, engine._handle.state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="captures succeed on a GPU")
def test_a_failed_capture_is_reported_and_decoding_goes_on(shared_engine, eager_run):
    """Here (CPU) every capture fails: one warning, then the same static steps without graphs."""
    enc, _ = eager_run
    ref_tokens, ref_outs, _, _ = _decode(shared_engine, enc, 6, 3)
    with pytest.warns(RuntimeWarning, match="capture failed") as caught:
        tokens, outs, dec, _ = _decode(shared_engine, enc, 6, 3, capture=True)
    assert len(caught) == 1 and dec.captures == 0 and not dec.capture
    assert tokens == ref_tokens
    for a, b in zip(ref_outs, outs, strict=True):
        assert torch.equal(a, b)


def test_buckets_keep_the_bound_and_answer_from_far_back(shared_engine, eager_run):
    enc, (tokens, *_rest) = eager_run
    state = shared_engine._handle.state
    state.max_position = None
    s_tokens, _, dec, _ = _decode(shared_engine, enc, 16, 8)
    cfg = shared_engine.config
    steps_max = int(dec._step.max_position)  # what the static steps kept (planning._unwritten), from -1
    assert 0 < steps_max <= state.largest_position() < cfg.scope  # positions never leave the scope's bound
    eager_text = shared_engine.tokenizer.decode(tokens)
    static_text = shared_engine.tokenizer.decode(s_tokens)
    assert "73914" in eager_text, eager_text  # the fact lies about 700 tokens before the question
    assert "73914" in static_text, static_text
    assert dec.length == len(enc.ids) + 16 and state.static is None


def test_what_cannot_run_static_is_named(shared_engine):
    state = shared_engine._handle.state
    enc = _prompt(shared_engine, 600)
    cache = make_cache(shared_engine.model, reserve=len(enc.ids) + 4)
    shared_engine.prefill(torch.tensor([enc.ids], device=shared_engine.device), cache, question=enc.question)
    assert unsupported(cache, state) is None
    # graphs are the default, used on CUDA only; cuda_graphs=False decodes eagerly there too
    assert state.config.cuda_graphs
    chosen = engine_decoder(shared_engine, cache, cite=False)
    if shared_engine.device.type == "cpu":
        assert isinstance(chosen, EagerSteps)
    else:
        assert isinstance(chosen, GraphDecoder)
        chosen.close()
    asks = SimpleNamespace(config=state.config)
    off = SimpleNamespace(config=dataclasses.replace(state.config, cuda_graphs=False))
    for st in (asks, off):
        on_cpu = SimpleNamespace(_handle=SimpleNamespace(state=st), device=torch.device("cpu"), model=None)
        assert isinstance(engine_decoder(on_cpu, cache, cite=False), EagerSteps)
    gpu_off = SimpleNamespace(_handle=SimpleNamespace(state=off), device=torch.device("cuda"), model=None)
    assert isinstance(engine_decoder(gpu_off, cache, cite=False), EagerSteps)
    state.recorder = SelectionRecorder()
    try:
        assert "citations" in unsupported(cache, state)
        with pytest.raises(ValueError, match="citations"):
            GraphDecoder(shared_engine.model, cache, state, capture=False)
    finally:
        state.recorder = None
    with pytest.raises(ValueError, match="bucket"):
        GraphDecoder(shared_engine.model, cache, state, bucket=10_000, capture=False)
    with GraphDecoder(shared_engine.model, cache, state, capture=False) as dec:  # the engine's bucket
        assert dec.bucket == bucket_for(dec.local) == 8  # the small config decodes with 128 local rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("selection", ["exact", "two_level"])
def test_cuda_graph_replays_equal_the_eager_static_steps(small_config, selection):
    from reattn_llm.runtime.engine import Engine

    cfg = dataclasses.replace(small_config, selection=selection, candidate_blocks=8)
    engine = Engine(None, device="cuda", config=cfg, progress=False).load()
    enc = _prompt(engine)
    g_tokens, g_outs, dec, cache = _decode(engine, enc, 20, 8, capture=True)
    assert dec.captures == 3  # steps 1-8, 9-16, 17-20: each bucket's first step eager, then a graph
    # the same steps again from the same prefilled rows, static but eager
    for layer in cache.layers:
        layer.rewind(len(enc.ids))
    ref = GraphDecoder(engine.model, cache, engine._handle.state, bucket=8, capture=False)
    with ref:
        for tok, out in zip(g_tokens, g_outs, strict=True):
            assert torch.equal(ref.step(torch.tensor([[tok]], device="cuda")).float(), out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_the_engine_decodes_from_cuda_graphs_when_asked(small_config):
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.sampling import SamplingParams

    engine = Engine(
        None, device="cuda", config=dataclasses.replace(small_config, cuda_graphs=True), progress=False
    )
    enc = _prompt(engine.load())
    cache = make_cache(engine.model, reserve=len(enc.ids) + 4)
    engine.prefill(torch.tensor([enc.ids], device="cuda"), cache, question=enc.question)
    assert isinstance(engine_decoder(engine, cache, cite=False), GraphDecoder)
    assert isinstance(engine_decoder(engine, cache, cite=True), EagerSteps)  # citations read every step
    out = engine.complete(enc, SamplingParams(max_new_tokens=16))
    assert "73914" in out.text, out.text
    assert 0 <= out.max_position < engine.config.scope
    again = engine.complete(enc, SamplingParams(max_new_tokens=16))  # the kept prefix, graphs again
    assert again.text == out.text


def test_the_engine_bucket_is_a_sixteenth_of_the_decode_local_window():
    """A bucket's first step loses at most a sixteenth of its local rows; long windows stop at 128."""
    assert [bucket_for(n) for n in (8, 16, 128, 512, 2048, 4096, 100_000)] == [1, 1, 8, 32, 128, 128, 128]
    for n in range(1, 5000, 37):
        assert 1 <= bucket_for(n) <= max(1, n // 16) and bucket_for(n) <= n
