"""Reusable document prefixes: a second question prefills only its own tokens; saved caches are checked."""

from __future__ import annotations

import pytest

from reattn_llm import ReAttentionConfig
from reattn_llm.runtime.engine import Engine, SamplingParams
from reattn_llm.runtime.prefix import CacheFileError

CFG = ReAttentionConfig(window=512, global_size=4, local_size=256, span_size=16, max_spans=15, chunk_size=128)
DOC = (
    "The grass is green. The sky is blue. The sun is yellow. " * 40
    + "The secret code of the archive room is 73914. "
    + "Here we go. There and back again. " * 60
)
PROMPT = "{doc}\n\nQuestion: {q}"


@pytest.fixture(scope="module")
def engine():
    return Engine(config=CFG, progress=False).load()


def test_second_question_prefills_only_its_own_tokens_and_matches_fresh(engine):
    p1 = PROMPT.format(doc=DOC, q="What color is the sky?")
    p2 = PROMPT.format(doc=DOC, q="What is the secret code of the archive room?")
    params = SamplingParams(max_new_tokens=20)
    engine.forget_prefix()
    engine.complete(p1, params)
    first = engine.last_prefill_tokens
    a = engine.complete(p2, params)
    second = engine.last_prefill_tokens
    n2 = len(engine.encode(p2)[0])
    doc_tokens = len(engine.encode(DOC)[0])
    assert first == len(engine.encode(p1)[0]) and first > 1000
    # only the question's own tokens plus less than one chunk of the document
    assert second < (n2 - doc_tokens) + engine.prefill_chunk
    assert second < first / 4
    fresh = Engine(config=CFG, progress=False, keep_prefix=False)
    fresh._model, fresh._tokenizer, fresh._handle = engine._model, engine._tokenizer, engine._handle
    b = fresh.complete(p2, params)
    assert a.text == b.text and "73914" in a.text


def test_saved_prefix_round_trip_and_corruption(engine, tmp_path):
    engine.forget_prefix()
    kept = engine.warm(DOC)
    assert kept > 0 and kept % engine.prefill_chunk == 0
    path = tmp_path / "doc.safetensors"
    assert engine.save_prefix(str(path)) == kept
    engine.forget_prefix()
    assert engine.load_prefix(str(path)) == kept
    c = engine.complete(
        PROMPT.format(doc=DOC, q="What is the secret code of the archive room?"),
        SamplingParams(max_new_tokens=20),
    )
    assert engine.last_prefill_tokens < len(engine.encode(PROMPT.format(doc=DOC, q="x"))[0]) - kept + 64
    assert "73914" in c.text

    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip a byte inside the tensor data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CacheFileError, match="checksum mismatch"):
        engine.load_prefix(str(bad))
    short = tmp_path / "short.safetensors"
    short.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(CacheFileError, match="truncated or corrupt"):
        engine.load_prefix(str(short))
    other = Engine(config=ReAttentionConfig(window=1024), progress=False)
    with pytest.raises(CacheFileError, match="config"):
        other.load_prefix(str(path))
