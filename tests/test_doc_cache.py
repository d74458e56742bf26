"""Reusable document prefixes: a second question prefills only its own tokens; saved caches are checked."""

from __future__ import annotations

import time

import pytest
import torch

from reattn_llm import ReAttentionConfig
from reattn_llm.runtime.engine import Engine, SamplingParams
from reattn_llm.runtime.prefix import CacheFileError
from reattn_llm.runtime.prefix_store import DocumentStore

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


# --- a cache file is checked for structure, not only for sums ----------------------------------


def _forge(src, dst, change):
    """Rewrite the cache file ``src`` as ``dst`` after ``change(tensors, header)``, sums recomputed."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from reattn_llm.runtime.prefix import fingerprint

    with safe_open(str(src), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    change(tensors, header)
    header["checksums"] = json.dumps({name: fingerprint(t) for name, t in tensors.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst), metadata=header)
    return dst


def _rows(t, n):
    for name in [k for k in t if k != "ids"]:
        t[name] = t[name][:, :, :n]


def _head_dim(t, d):
    for name in [k for k in t if k != "ids"]:
        t[name] = t[name][..., :d]


def _layers(t, n):
    for name in [k for k in t if k != "ids" and int(k.split(".")[1]) >= n]:
        del t[name]


def _dtype(t, dtype):
    for name in [k for k in t if k != "ids"]:
        t[name] = t[name].to(dtype)


def _vocab(t, token):
    t["ids"][5] = token


FORGED = {
    "10 K/V rows for 512 ids": (
        lambda t, h: _rows(t, 10),
        r"shape \[1, 3, 10, 64\], expected \[1, 3, 512, 64\]",
    ),
    "head_dim 32": (lambda t, h: _head_dim(t, 32), r"expected \[1, 3, 512, 64\].*head_dim 64"),
    "2 layers": (lambda t, h: _layers(t, 2), r"holds K/V for 2 layers.*model has 30 layers"),
    "fp16 tensors": (lambda t, h: _dtype(t, torch.float16), r"holds F16 values.*torch.float32"),
    "ids past the vocabulary": (lambda t, h: _vocab(t, 10**6), r"token ids outside this model's vocabulary"),
    "ids beyond the header's count": (
        lambda t, h: h.update(tokens="600"),
        r"'ids' has shape \[512\], expected \[600\]",
    ),
}


@pytest.fixture(scope="module")
def kept_document(engine, tmp_path_factory):
    """A 512-token document kept by ``engine`` and saved: ``(file, the kept Prefix, its first keys)``."""
    engine.forget_prefix()
    ids = engine.encode(DOC)[0]
    engine.warm(engine.tokenizer.decode(ids[:600]), chat=False)
    good = tmp_path_factory.mktemp("cache") / "good.safetensors"
    assert engine.save_prefix(str(good)) == 512
    kept = engine.prefixes.prefix
    return good, kept, kept.cache.layers[0].dense(512)[0].clone()


@pytest.mark.parametrize("variant", list(FORGED))
def test_forged_cache_files_are_refused_naming_the_fault_and_leave_the_engine_as_it_was(
    engine, kept_document, tmp_path, variant
):
    good, kept, k0 = kept_document
    assert engine.prefixes.prefix is kept
    change, message = FORGED[variant]
    bad = _forge(good, tmp_path / "forged.safetensors", change)
    with pytest.raises(CacheFileError, match=message):
        engine.load_prefix(str(bad))
    assert engine.prefixes.prefix is kept and kept.reusable == 512  # the kept document is untouched
    assert torch.equal(kept.cache.layers[0].dense(512)[0], k0)


# --- the document store: prefilled documents shared by engines and processes ---------------------


def _sibling(engine, **kw):
    """Another engine of the same model and config (its own kept prefix), sharing the loaded weights."""
    other = Engine(config=CFG, progress=False, **kw)
    other._model, other._tokenizer, other._handle = engine._model, engine._tokenizer, engine._handle
    return other


def _files(store):
    return set(store.root.glob("*.safetensors"))


def test_a_second_engine_prefills_only_the_question_from_the_store_and_answers_the_same(engine, tmp_path):
    store = DocumentStore(tmp_path / "store")
    prompt = PROMPT.format(doc=DOC, q="What is the secret code of the archive room?")
    params = SamplingParams(max_new_tokens=16)
    first = _sibling(engine, prefix_store=store)
    a = first.complete(prompt, params)
    assert first.last_prefill_tokens == a.prompt_tokens > 1000
    assert len(_files(store)) == 1
    second = _sibling(engine, prefix_store=store)  # a new engine: nothing kept in memory
    b = second.complete(prompt, params)
    question = a.prompt_tokens - len(engine.encode(DOC)[0])
    assert second.last_prefill_tokens < question + engine.prefill_chunk
    assert b.text == a.text and "73914" in b.text


def test_the_store_serves_an_engine_that_only_runs_differently(engine, tmp_path):
    """Forwards of several chunks and no CUDA graphs leave the same document rows in the cache: an
    engine that differs only so reads the first engine's file, and answers the same."""
    import dataclasses

    from reattn_llm.runtime.prefix import CacheSpec

    store = DocumentStore(tmp_path / "store")
    prompt = PROMPT.format(doc=DOC, q="What is the secret code of the archive room?")
    params = SamplingParams(max_new_tokens=16)
    a = _sibling(engine, prefix_store=store).complete(prompt, params)
    other = Engine(
        config=dataclasses.replace(CFG, prefill_forward=3 * engine.prefill_chunk, cuda_graphs=False),
        progress=False,
        prefix_store=store,
    )
    other._model, other._tokenizer, other._handle = engine._model, engine._tokenizer, engine._handle
    assert CacheSpec.of(other).meta == CacheSpec.of(engine).meta
    b = other.complete(prompt, params)
    question = a.prompt_tokens - len(engine.encode(DOC)[0])
    assert other.last_prefill_tokens < question + engine.prefill_chunk  # the document came from the file
    assert b.text == a.text and "73914" in b.text
    # a config that changes what the rows hold still keys a different file
    assert (
        CacheSpec.of(Engine(config=dataclasses.replace(CFG, top_k=2), progress=False)).meta
        != CacheSpec.of(engine).meta
    )


def test_the_store_is_bounded_and_evicts_the_least_recently_used(engine, tmp_path):
    store = DocumentStore(tmp_path)
    e = _sibling(engine, prefix_store=store, keep_prefix=False)  # every reuse comes from disk
    docs = [f"Report number {i}.\n" + DOC[:1300] for i in range(4)]
    e.warm(docs[0])
    (f0,) = _files(store)
    store.max_bytes = int(2.5 * store.size())  # room for two documents
    e.warm(docs[1])
    (f1,) = _files(store) - {f0}
    time.sleep(0.05)
    e.warm(docs[0])  # read back from disk: now the most recently used
    assert e.last_prefill_tokens < engine.prefill_chunk
    e.warm(docs[2])
    (f2,) = _files(store) - {f0, f1}
    assert _files(store) == {f0, f2} and store.size() <= store.max_bytes  # f1 went first
    store.max_bytes = f0.stat().st_size // 2
    with pytest.warns(UserWarning, match="larger than the whole document store"):
        e.warm(docs[3])
    assert _files(store) == {f0, f2}


def test_a_damaged_file_in_the_store_is_ignored_with_a_warning_and_recomputed(engine, tmp_path):
    store = DocumentStore(tmp_path)
    doc = "A short report.\n" + DOC[:1300]
    _sibling(engine, prefix_store=store).warm(doc)
    (path,) = _files(store)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    e = _sibling(engine, prefix_store=store)
    with pytest.warns(UserWarning, match="Ignoring a damaged prefilled document.*checksum mismatch"):
        kept = e.warm(doc)
    whole = e.last_prefill_tokens
    assert whole > kept >= 256  # prefilled from the start
    assert _files(store) == {path}  # stored again, whole
    again = _sibling(engine, prefix_store=store)
    assert again.warm(doc) == kept and again.last_prefill_tokens == whole - kept


# --- Gemma 3: sliding-window layers hold only their window ------------------------------------


def _gemma_prefix(chunk: int = 16, tokens: int = 150, reusable: int = 144, **storage):
    """A tiny Gemma 3 (window 128, sliding window 16), patched (``storage``: fp8 / offload config
    fields), with ``tokens`` document tokens prefilled in chunks of ``chunk``:
    ``(model, handle, ids, Prefix, CacheSpec)``."""
    from tiny_models import distinct_ids, tiny_gemma3

    from reattn_llm import patch
    from reattn_llm.kv.storage import KVStorage
    from reattn_llm.method.patch import make_cache
    from reattn_llm.runtime.prefix import CacheLayout, CacheSpec, Prefix

    model = tiny_gemma3(seed=7)
    config = ReAttentionConfig(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, **storage)
    handle = patch(model, config)
    ids = distinct_ids(1, 220, seed=7) % 508 + 4
    cache = make_cache(model)
    with torch.no_grad():
        for s in range(0, tokens, chunk):
            model(ids[:, s : min(s + chunk, tokens)], past_key_values=cache)
    layout = CacheLayout.of(model.config, torch.float32)
    meta = {"model": "tiny-gemma3", "dtype": "torch.float32", "config": repr(config)}
    spec = CacheSpec(meta, layout, torch.device("cpu"), KVStorage.from_config(config))
    return model, handle, ids, Prefix(ids[0, :tokens].tolist(), reusable, cache), spec


def test_gemma3_prefix_saves_its_sliding_windows_and_continues_exactly(tmp_path):
    """A saved Gemma 3 prefix holds every token of the full-attention layers and the 15 rows each
    sliding layer keeps; loaded, it continues exactly as the kept cache and a fresh prefill do."""
    from safetensors import safe_open

    from reattn_llm.method.patch import make_cache
    from reattn_llm.runtime.prefix import load_prefix, save_prefix

    model, handle, ids, prefix, spec = _gemma_prefix()
    assert spec.layout.sliding == (16, 16, None, 16, 16, None)
    path = tmp_path / "gemma.safetensors"
    save_prefix(prefix, path, spec.meta)
    with safe_open(str(path), framework="pt") as f:
        assert [f.get_slice(f"k.{i}").get_shape()[2] for i in range(6)] == [15, 15, 144, 15, 15, 144]
    assert path.stat().st_size < spec.layout.nbytes(144) + 4096
    loaded = load_prefix(path, spec)
    assert loaded.ids == prefix.ids[:144] and loaded.cache.is_sliding == [True, True, False] * 2
    assert loaded.cache.get_seq_length() == 144
    fresh = make_cache(model)
    prefix.cache.crop(144)

    def resume(cache) -> torch.Tensor:  # the question (56 tokens, past G + L), then one decode step
        with torch.no_grad():
            first = model(ids[:, 144:200], past_key_values=cache).logits
            return torch.cat([first, model(ids[:, 200:201], past_key_values=cache).logits], 1)

    with torch.no_grad():
        for s in range(0, 144, 16):
            model(ids[:, s : s + 16], past_key_values=fresh)
    got, kept, again = resume(loaded.cache), resume(prefix.cache), resume(fresh)
    handle.unpatch()
    assert torch.equal(got, kept)
    assert (got - again).abs().max().item() <= 1e-5


def test_gemma3_prefix_past_its_sliding_snapshots_is_refused_before_writing(tmp_path):
    """A reusable length whose sliding-window rows are gone (more than four prefill chunks back) is
    refused before anything is written, and the document store is not asked to keep it."""
    from reattn_llm.runtime.prefix import PrefixStore, save_prefix

    _, handle, _, prefix, spec = _gemma_prefix(reusable=64)
    handle.unpatch()
    path = tmp_path / "gone.safetensors"
    with pytest.raises(CacheFileError, match=r"sliding-window layers no longer hold their rows at its 64"):
        save_prefix(prefix, path, spec.meta)
    assert not path.exists() and not list(tmp_path.iterdir())

    puts: list[int] = []

    class Disk:
        def put(self, spec, prefix):
            puts.append(prefix.reusable)

    store = PrefixStore(disk=Disk(), spec=lambda: spec)
    store.keep(prefix.ids, prefix.cache, 64)  # kept in memory, not written
    assert puts == [] and store.prefix is not None
    store.keep(prefix.ids, prefix.cache, 144)
    assert puts == [144]


def test_gemma3_cache_file_with_every_row_on_a_sliding_layer_is_refused(tmp_path):
    """A file whose sliding layers hold all 144 rows (made by a cache without sliding layers) does not
    fit a Gemma 3 engine: refused from the header, naming the window (and not written at all when the
    writer is given the engine's layout)."""
    from reattn_llm.kv.cache import ReAttentionCache
    from reattn_llm.runtime.prefix import Prefix, load_prefix, save_prefix

    model, handle, ids, _, spec = _gemma_prefix(tokens=16)
    dense = ReAttentionCache(6)
    with torch.no_grad():
        for s in range(0, 144, 48):
            model(ids[:, s : s + 48], past_key_values=dense)
    handle.unpatch()
    path = tmp_path / "dense.safetensors"
    with pytest.raises(CacheFileError, match=r"tensors \['k.0', 'k.1', 'k.3'\].*would not load back"):
        save_prefix(Prefix(ids[0, :144].tolist(), 144, dense), path, spec.meta, spec.layout)
    assert not path.exists()  # with the engine's layout, refused before writing
    save_prefix(Prefix(ids[0, :144].tolist(), 144, dense), path, spec.meta)
    with pytest.raises(
        CacheFileError, match=r"shape \[1, 2, 144, 32\], expected \[1, 2, 15, 32\].*sliding window of 16"
    ):
        load_prefix(path, spec)


GEMMA_STORAGE = {"model dtype": {}, "fp8": {"kv_dtype": "fp8"}, "offloaded values": {"offload": "values"}}


@pytest.mark.parametrize("storage", list(GEMMA_STORAGE))
def test_gemma3_document_store_counts_the_bytes_its_file_takes(tmp_path, storage):
    """The store sizes a document by the file it writes (file_bytes): a sliding layer counts its 15
    rows, not 144, and fp8 or offloaded rows are saved dequantised (fp32 here), so the estimate is the
    file's size plus at most a few header bytes per tensor. A store between that size and the old
    every-layer-holds-every-token estimate keeps the document and evicts nothing it does not need to."""
    import warnings

    from safetensors import safe_open

    from reattn_llm.runtime.prefix import Prefix, file_bytes, load_prefix

    _, handle, _, prefix, spec = _gemma_prefix(**GEMMA_STORAGE[storage])
    handle.unpatch()
    lay = spec.layout
    estimate = file_bytes(lay, 144, spec.meta)
    old = 2 * lay.layers * lay.kv_heads * lay.head_dim * lay.dtype.itemsize * 144  # 442,368 bytes
    assert lay.nbytes(144) + 8 * 144 < estimate < lay.nbytes(144) + 8 * 144 + 4096  # K/V + ids + header
    assert estimate < 0.45 * old  # 181,424 bytes (model dtype)

    store = DocumentStore(tmp_path / "one", max_bytes=(estimate + old) // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = store.put(spec, prefix)
    assert path is not None and path.is_file()
    size = path.stat().st_size
    assert size <= estimate <= size + 8 * (2 * lay.layers + 1)  # the header's offsets counted widest
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_slice(n).get_dtype() for n in f.keys() if n != "ids"} == {"F32"}
    loaded = load_prefix(path, spec)
    assert loaded.ids == prefix.ids[:144] and loaded.cache.get_seq_length() == 144

    # room for two documents by their true size, not by the old estimate (2 * true + 1K < true + old)
    two = DocumentStore(tmp_path / "two", max_bytes=2 * estimate + 1024)
    assert two.max_bytes < estimate + old
    first = two.put(spec, prefix)
    other = Prefix([t + 1 for t in prefix.ids], 144, prefix.cache)  # another document's key
    second = two.put(spec, other)
    assert first is not None and second is not None and first != second
    assert first.is_file() and second.is_file() and two.size() <= two.max_bytes

    tight = DocumentStore(tmp_path / "tight", max_bytes=size - 1)
    with pytest.warns(UserWarning, match="larger than the whole document store"):
        assert tight.put(spec, prefix) is None
    assert tight.size() == 0
