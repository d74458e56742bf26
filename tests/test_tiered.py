"""fp8 and host-offloaded K/V (reattn_llm.kv.tiered) against the plain cache."""

from __future__ import annotations

import pytest
import torch

import reattn_llm.kv.rows as kv_rows
from reattn_llm import ReAttentionCache, ReAttentionConfig, patch
from reattn_llm.errors import ConfigError
from reattn_llm.kv.dense import DenseLayer, TensorKV
from reattn_llm.kv.layer import exact_topk
from reattn_llm.kv.rows import dequantize_fp8, quantize_fp8
from reattn_llm.kv.storage import FP8_MAX, KVStorage
from reattn_llm.kv.tiered import TieredLayer
from reattn_llm.method.config import chunk_bounds
from reattn_llm.method.two_level import two_level_topk
from tests.tiny_models import distinct_ids, tiny_model

# window 128: G 8 + 6 spans of 8 + L 64; prompts of 400 tokens are 3x the window.
CFG = dict(window=128, global_size=8, local_size=64, span_size=8, max_spans=6, chunk_size=32, backend="torch")


def _run(model, cfg: ReAttentionConfig, ids: torch.Tensor, decode: int = 6) -> tuple[torch.Tensor, list[int]]:
    """Chunked prefill then greedy decode through a fresh cache: (last prefill logits, decoded ids)."""
    with patch(model, cfg):
        from reattn_llm.method.patch import make_cache

        cache = make_cache(model)
        for s, e in chunk_bounds(ids.shape[1], 32, 16):
            logits = model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True).logits[:, -1]
        first = logits.clone()
        out, tok = [], logits.argmax(-1, keepdim=True)
        for _ in range(decode):
            out.append(int(tok))
            logits = model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1]
            tok = logits.argmax(-1, keepdim=True)
    return first, out


@pytest.mark.parametrize(
    "storage",
    # with keys in host memory the question scores exactly, the decode steps two-level (exact_answer
    # 'question', their default): the reference on the device says so too
    [
        dict(offload="values"),
        dict(offload="keys_values", selection="two_level", candidate_blocks=5, exact_answer="question"),
        dict(offload="keys_values", selection="two_level", candidate_blocks=5, exact_answer="none"),
    ],
)
def test_offload_in_the_models_dtype_is_exact(storage):
    model = tiny_model("llama", window=128)
    ids = distinct_ids(1, 400, seed=3)
    base = {k: v for k, v in storage.items() if k != "offload"}
    ref_logits, ref_tokens = _run(model, ReAttentionConfig(**CFG, **base), ids)
    logits, tokens = _run(model, ReAttentionConfig(**CFG, **storage), ids)
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)
    assert tokens == ref_tokens


def test_fp8_keeps_global_and_recent_rows_exact():
    model = tiny_model("qwen3", window=128)
    ids = distinct_ids(1, 72, seed=5)  # <= G + L: every row read is a global or recent one
    ref, _ = _run(model, ReAttentionConfig(**CFG), ids, decode=0)
    got, _ = _run(model, ReAttentionConfig(**CFG, kv_dtype="fp8"), ids, decode=0)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)


def test_fp8_and_offload_on_the_default_model_cost_little_perplexity_and_find_every_key(smollm2):
    """The quality cost of fp8 storage on real keys: window 512, 1,536 tokens of the bundled novel."""
    from reattn_llm.cli import SAMPLE
    from reattn_llm.lab.evaluation import passkey_trial, token_nll
    from tests.conftest import SMALL_CONFIG_KWARGS

    model, tok = smollm2
    ids = tok(SAMPLE.read_text()[:20000], return_tensors="pt", add_special_tokens=False).input_ids[:, :1536]
    ppl = {}
    for name, extra in {"model": {}, "fp8": {"kv_dtype": "fp8", "offload": "values"}}.items():
        with patch(model, ReAttentionConfig(**SMALL_CONFIG_KWARGS, **extra)):
            ppl[name] = float(token_nll(model, ids, 128)[600:].mean().exp())
            if name == "fp8":
                found = passkey_trial(model, tok, 1600, 0.3, "48213", chunk=128).found
    assert ppl["fp8"] <= ppl["model"] * 1.02, ppl
    assert found


def test_fp8_round_trip_error_is_bounded_by_the_e4m3_step():
    x = torch.randn(2, 3, 50, 64) * torch.logspace(-3, 3, 50)[:, None]
    bits, scale = quantize_fp8(x)
    assert bits.dtype == torch.uint8 and scale.shape == (2, 3, 50)
    back = dequantize_fp8(bits, scale, torch.float32)
    amax = x.abs().amax(-1, keepdim=True)
    # e4m3 has 3 mantissa bits: relative error <= 2^-4 for normals; tiny values lose at most amax/448 * 2^-9
    err = (back - x).abs()
    assert bool((err <= x.abs() * 2**-4 + amax / FP8_MAX * 2**-9 + 1e-30).all())
    assert torch.allclose(back.abs().amax(-1, keepdim=True), amax, rtol=1e-6)


def test_recent_rows_stay_exact_across_compactions_and_crops():
    st = KVStorage(kv_dtype="fp8", global_size=4, local_size=16)
    layer, dense_k = TieredLayer(st), []
    g = torch.Generator().manual_seed(0)
    for q in [30] + [1] * 260 + [7, 13]:  # a prefill chunk, many decode steps, two small forwards
        k = torch.randn(1, 2, q, 8, generator=g)
        layer.update(k, k * 2)
        dense_k.append(k)
        dense = torch.cat(dense_k, dim=2)
        t = dense.shape[2]
        # the forward's local windows reach back L rows before the rows it added: all exact
        idx = torch.cat([torch.arange(4), torch.arange(max(4, t - q - 16), t)])[None]
        k_got, v_got = layer.gather_scope(idx)
        assert torch.equal(k_got, dense[:, :, idx[0]]) and torch.equal(v_got, 2 * dense[:, :, idx[0]])
    # the middle comes from fp8: close, not equal
    k_mid, _ = layer.gather_scope(torch.arange(4, 40)[None])
    assert not torch.equal(k_mid, dense[:, :, 4:40])
    assert torch.allclose(k_mid, dense[:, :, 4:40], atol=0.15, rtol=0.07)
    layer.crop(50)  # below the recent rows: they restart at the crop point, nothing stale is read
    assert layer.get_seq_length() == 50
    k_got, _ = layer.gather_scope(torch.arange(50)[None])
    assert torch.allclose(k_got, dense[:, :, :50], atol=0.15, rtol=0.07)
    layer.update(torch.ones(1, 2, 3, 8), torch.ones(1, 2, 3, 8))
    k_got, _ = layer.gather_scope(torch.arange(50, 53)[None])
    assert torch.equal(k_got, torch.ones(1, 2, 3, 8))


def test_fp8_halves_the_device_bytes_and_offload_moves_them_to_the_host():
    def fill(storage):
        cache = ReAttentionCache(2, storage=storage)
        for _ in range(32):  # a prefill of 16K tokens in chunks of 512
            for i in range(2):
                cache.update(torch.randn(1, 2, 512, 64), torch.randn(1, 2, 512, 64), i)
        return cache

    plain = fill(None)
    fp8 = fill(KVStorage(kv_dtype="fp8", global_size=32, local_size=256))
    off = fill(KVStorage(offload="values", global_size=32, local_size=256))
    # fp8: 1 byte + a 4-byte scale per 64 values vs 4 bytes (fp32 here; bf16 on a GPU: 2 bytes)
    assert fp8.nbytes() < 0.36 * plain.nbytes()
    assert off.host_nbytes() >= plain.nbytes() // 2 and off.nbytes() < 0.62 * plain.nbytes()


def test_doc_cache_round_trip_through_fp8_storage(tmp_path):
    from reattn_llm.runtime.prefix import CacheLayout, CacheSpec, Prefix, load_prefix, save_prefix

    st = KVStorage(kv_dtype="fp8", global_size=4, local_size=16)
    cache = ReAttentionCache(1, storage=st)
    k = torch.randn(1, 2, 64, 8)
    cache.update(k, -k, 0)
    save_prefix(Prefix(ids=list(range(64)), reusable=64, cache=cache), tmp_path / "c.safetensors", {"m": 1})
    layout = CacheLayout(layers=1, kv_heads=2, head_dim=8, dtype=torch.float32)
    back = load_prefix(tmp_path / "c.safetensors", CacheSpec({"m": "1"}, layout, torch.device("cpu"), st))
    k0, v0 = cache.layers[0].dense(64)
    k1, v1 = back.cache.layers[0].dense(64)
    assert isinstance(back.cache.layers[0], TieredLayer)
    assert torch.allclose(k1, k0, atol=1e-6) and torch.allclose(v1, v0, atol=1e-6)
    assert torch.equal(k1[:, :, -16:], k[:, :, -16:])  # recent rows exact


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(offload="keys_values"), "two_level"),
        (dict(kv_dtype="fp4"), "kv_dtype"),
        (dict(offload="disk"), "offload"),
        (dict(kv_dtype="fp8", mode="full"), "mode='reattention'"),
    ],
)
def test_storage_configs_are_validated(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        ReAttentionConfig(**kwargs)


def test_blockwise_fp8_scoring_equals_scoring_the_dequantised_keys_at_once(monkeypatch):
    from reattn_llm.kernels import score_topk_torch

    monkeypatch.setattr(kv_rows, "BLOCK_ROWS", 97)  # ten blocks, the last one partial
    g = torch.Generator().manual_seed(0)
    layer = TieredLayer(KVStorage(kv_dtype="fp8", global_size=4, local_size=16))
    k = torch.randn(1, 2, 1000, 16, generator=g)
    layer.update(k, k)
    assert layer.key_block_rows == 97
    q = torch.randn(1, 6, 5, 16, generator=g)  # GQA 3
    got = layer.score_middle(q, 4, 900, 4, "torch")
    ref = score_topk_torch(q, layer.read_keys(4, 900), 4)
    assert torch.equal(got.sort(-1).values, ref.sort(-1).values)


@pytest.mark.parametrize(
    "rows, lo, hi, block, top_k",
    [
        (1000, 4, 900, 97, 4),
        (257, 0, 257, 64, 7),
        (130, 17, 18, 5, 4),
        (300, 33, 299, 1, 3),
        (513, 1, 513, 512, 32),
    ],
)
def test_exact_topk_is_one_function_for_dense_and_fp8_readers(monkeypatch, rows, lo, hi, block, top_k):
    """The one exact top-k, over an fp8 store read in blocks, a dense cache layer and raw tensors of the
    same (dequantised) keys, equals a brute-force fp32 top-k; so does two-level's exact fallback."""
    monkeypatch.setattr(kv_rows, "BLOCK_ROWS", block)
    g = torch.Generator().manual_seed(rows + block)
    fp8 = TieredLayer(KVStorage(kv_dtype="fp8", global_size=4, local_size=16))
    k = torch.randn(2, 2, rows, 16, generator=g)
    fp8.update(k, k)
    keys = fp8.read_keys(0, rows)  # what the fp8 store holds, dequantised
    dense = DenseLayer()
    dense.update(keys, keys)
    q = torch.randn(2, 6, 5, 16, generator=g)  # batch 2, GQA 3
    scores = torch.einsum("bhqd,bhmd->bhqm", q, keys[:, :, lo:hi].repeat_interleave(3, dim=1))
    ref = scores.topk(min(top_k, hi - lo), dim=-1).indices.sort(-1).values
    for reader in (fp8, dense, TensorKV(keys)):
        assert torch.equal(exact_topk(q, reader, lo, hi, top_k, "torch").sort(-1).values, ref)
        fallback = two_level_topk(
            q, reader, top_k, 10**6, 8, "torch", lo=lo, hi=hi
        )  # every block a candidate
        assert torch.equal(fallback.sort(-1).values, ref)


@pytest.mark.parametrize("bucket", [1, 8])
def test_static_steps_write_fp8_rows_as_eager_steps_do(bucket):
    """A device-resident fp8 layer's static steps (CUDA graphs' path, run eagerly here) write the same
    fp8 bits and scales as eager steps, across the recent buffer's compaction. A bucket of one step
    compacts when the eager step would, so its reads are the eager ones exactly; a longer bucket
    makes room at its start, so it may keep a few more rows exact (never fewer)."""
    st = KVStorage("fp8", "none", global_size=4, local_size=16)
    eager, static = TieredLayer(st), TieredLayer(st)
    torch.manual_seed(0)
    k0, v0 = torch.randn(1, 2, 250, 8), torch.randn(1, 2, 250, 8)
    eager.update(k0, v0)
    static.update(k0, v0)
    row = torch.zeros(1, dtype=torch.long)
    steps = 40  # 250 + 40 rows pass the recent buffer's 282 (2L + 250): one compaction
    for t in range(250, 250 + steps, bucket):
        end = min(t + bucket, 250 + steps)
        static.hold_static(row, end, t)
        assert static.length == end and static.keys.shape[2] == end
        for r in range(t, end):
            k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
            eager.update(k, v)
            row.fill_(r)
            static.update(k, v)
        static.hold_static(None, 0, end)
        assert static.length == eager.length == end
    assert eager.base > 0  # the compaction happened
    for a, b in ((eager.cold_k, static.cold_k), (eager.cold_v, static.cold_v)):
        assert torch.equal(a.data[:, :, : eager.length], b.data[:, :, : eager.length])
        assert torch.equal(a.scale[:, :, : eager.length], b.scale[:, :, : eager.length])
    idx = torch.arange(eager.length)[None]
    ke, ve = eager.gather_scope(idx)
    ks, vs = static.gather_scope(idx)
    assert static.base <= eager.base
    if bucket == 1:
        assert static.base == eager.base and torch.equal(ke, ks) and torch.equal(ve, vs)
    assert torch.equal(ke[:, :, eager.base :], ks[:, :, eager.base :])  # exact in both
    assert torch.equal(ke[:, :, : static.base], ks[:, :, : static.base])  # global exact, then fp8 in both
