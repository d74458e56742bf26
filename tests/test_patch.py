"""patch(): exact within the window, the gather path, bounded positions, errors, unpatch."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, distinct_ids, tiny_model, tiny_phi3

import reattn_llm.method.attention as attention_mod
import reattn_llm.method.planning as planning_mod
from reattn_llm import ReAttentionConfig, UnsupportedModelError, patch, unpatch
from reattn_llm.kv.cache import ReAttentionCache


def _stock_and_patched(model, ids, cfg, **gen):
    with torch.no_grad():
        stock = model(ids).logits
        sgen = model.generate(ids, do_sample=False, output_logits=True, return_dict_in_generate=True, **gen)
        with patch(model, cfg) as handle:
            assert model.config._attn_implementation == "reattention"
            ours = model(ids).logits
            ogen = model.generate(
                ids, do_sample=False, output_logits=True, return_dict_in_generate=True, **gen
            )
        assert not handle.active
    return stock, ours, sgen, ogen


@pytest.mark.parametrize("family", FAMILIES)
def test_within_window_equals_stock_for_every_family(family):
    model = tiny_model(family, window=256)
    cfg = ReAttentionConfig()  # resolved: G 16, L 128
    ids = distinct_ids(1, 140)  # T <= G + L through the prompt and the new tokens
    stock, ours, sgen, ogen = _stock_and_patched(model, ids, cfg, max_new_tokens=4, min_new_tokens=4)
    assert (stock - ours).abs().max().item() <= 1e-4
    assert torch.equal(sgen.sequences, ogen.sequences)
    for a, b in zip(sgen.logits, ogen.logits, strict=True):
        assert (a - b).abs().max().item() <= 1e-4


def test_within_window_equals_stock_for_smollm2(smollm2):
    model, tok = smollm2
    ids = tok(
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. " * 12,
        return_tensors="pt",
    ).input_ids
    stock, ours, sgen, ogen = _stock_and_patched(model, ids, ReAttentionConfig(), max_new_tokens=3)
    assert (stock - ours).abs().max().item() <= 1e-4
    assert torch.equal(sgen.sequences, ogen.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(sgen.logits, ogen.logits, strict=True)) <= 1e-4


@pytest.mark.parametrize("pooling", ["hit", "span"])
def test_gather_path_covering_every_middle_token_reproduces_sdpa(monkeypatch, pooling):
    """Per hit, 32 hits per query hit every middle key; per span, the middle fits the span budget,
    so spans tile it. Either way the scope is every key in order: the stock attention."""
    model = tiny_model("llama", window=128)
    ids = distinct_ids(1, 84)
    with torch.no_grad():
        stock = model(ids).logits
    # M = 84 - 4 - 48 = 32 middle keys; top_k = 32 and 32 one-token spans select all of them.
    cfg = ReAttentionConfig(
        global_size=4, local_size=48, span_size=1, max_spans=76, top_k=32, chunk_size=48, vote_pooling=pooling
    )
    calls = []
    name = {"hit": "rank_centres", "span": "rank_spans"}[pooling]
    real = getattr(planning_mod, name)
    monkeypatch.setattr(planning_mod, name, lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    with torch.no_grad(), patch(model, cfg):
        # one chunk: every query sees the whole middle selected, so scope == all keys in order
        cache = ReAttentionCache(2)
        model(ids[:, :50], past_key_values=cache)
        ours = model(ids[:, 50:], past_key_values=cache).logits
    assert calls and max(calls) == 32  # the selection path ran with a non-empty middle
    assert (stock[:, 50:] - ours).abs().max().item() <= 1e-4


def _observe_rotary(model):
    seen = []
    rotary = model.model.rotary_emb
    inner = rotary.forward

    def spy(x, position_ids):
        seen.append(int(position_ids.max()))
        return inner(x, position_ids)

    rotary.forward = spy
    return seen


def test_largest_rope_position_stays_below_window_at_16x():
    window = 64
    model = tiny_model("llama", window=window)
    seen = _observe_rotary(model)
    ids = torch.randint(0, 512, (1, 16 * window), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)
    assert max(seen) == 16 * window - 1  # the observer sees the stock model's positions
    seen.clear()
    with torch.no_grad(), patch(model, ReAttentionConfig()) as handle:
        model(ids)  # one call, 16x the window, split into chunks inside the layers
        assert max(seen) < window and handle.state.largest_position() < window
        out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert out.shape[1] == 16 * window + 8
        assert max(seen) < window and handle.state.largest_position() < window
        assert (
            handle.state.largest_position()
            >= handle.state.config.global_size + handle.state.config.local_size - 1
        )


def test_unpatch_restores_stock():
    model = tiny_model("qwen3", window=64)
    ids = distinct_ids(1, 200)
    with torch.no_grad():
        before = model(ids).logits
        handle = patch(model, ReAttentionConfig())
        during = model(ids).logits
        unpatch(model)
        after = model(ids).logits
    assert not handle.active and "generate" not in vars(model)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(before, after) and (before - during).abs().max() > 1e-3


def test_full_mode_leaves_the_model_stock():
    model = tiny_model("llama", window=64)
    handle = patch(model, ReAttentionConfig(mode="full"))
    assert handle.state is None and model.config._attn_implementation == "sdpa"


def test_unsupported_family_names_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="llama, mistral, qwen2, qwen3"):
        patch(model)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0] * 32,
            "long_factor": [1.0] * 32,
            "original_max_position_embeddings": 64,
        },
    ],
)
def test_length_dependent_rope_is_refused(rope):
    model = tiny_model("llama", window=128, rope_parameters=rope)
    with pytest.raises(UnsupportedModelError, match="default, linear, llama3, yarn"):
        patch(model)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "rope_theta": 500000.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 32},
    ],
)
def test_static_rope_scalings_are_exact_within_window(rope):
    model = tiny_model("llama", window=128, rope_parameters=rope)
    ids = distinct_ids(1, 60)
    with torch.no_grad():
        stock = model(ids).logits
        with patch(model, ReAttentionConfig()):
            ours = model(ids).logits
    assert (stock - ours).abs().max().item() <= 1e-4


def test_padded_batch_is_refused_clearly():
    model = tiny_model("llama", window=64)
    ids = distinct_ids(2, 20)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :5] = 0
    with patch(model), pytest.raises(ValueError, match="padded batches"):
        model(ids, attention_mask=mask)


def test_attention_reads_its_layer_through_the_cache_and_a_plain_cache_gives_the_same_logits(monkeypatch):
    """Beyond the window, with spans selected: the attention finds a ReAttentionCache's layer through
    the cache (no attribute on the key tensors), and a plain DynamicCache (raw tensors) or no cache
    gives the same logits."""
    from transformers import DynamicCache

    model = tiny_model("llama", heads=6, kv_heads=2, window=128)
    cfg = ReAttentionConfig(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)
    ids = distinct_ids(1, 300, seed=1)
    readers: list[str] = []
    real = attention_mod.layer_reader
    monkeypatch.setattr(
        attention_mod, "layer_reader", lambda *a: readers.append(type(real(*a)).__name__) or real(*a)
    )

    def chunked(cache):
        with torch.no_grad():
            return torch.cat(
                [model(ids[:, s : s + 40], past_key_values=cache).logits for s in range(0, 300, 40)], 1
            )

    with patch(model, cfg):
        cache = ReAttentionCache(2)
        ours = chunked(cache)
        assert set(readers) == {"DenseLayer"}
        assert not [n for n in vars(cache.layers[0].keys) if n.startswith("_reattn")]
        readers.clear()
        plain = chunked(DynamicCache())
        assert set(readers) == {"TensorKV"}
        with torch.no_grad():
            whole, uncached = model(ids).logits, model(ids, use_cache=False).logits
    assert torch.equal(plain, ours)
    assert torch.equal(uncached, whole)
    with torch.no_grad():
        stock = model(ids).logits
    assert (stock - ours).abs().max().item() > 1e-2  # beyond the window: not the stock model


@pytest.mark.parametrize("family", ["mistral", "phi3"])
def test_model_wide_sliding_window_is_the_attention_window(family):
    """Mistral-7B-v0.1 (4096 of 32768) and Phi-3-mini-4k (2047 of 4096) set ``sliding_window`` and
    transformers masks every layer to it: the default scope fits in it, so the patched model equals
    stock within G + L."""
    seed = {"mistral": 3, "phi3": 5}[family]
    build = tiny_phi3 if family == "phi3" else lambda **kw: tiny_model("mistral", **kw)
    model = build(window=128, sliding_window=48, seed=seed)
    ids = distinct_ids(1, 120, seed=seed)
    with torch.no_grad():
        stock = model(ids).logits
        with patch(model, ReAttentionConfig()) as handle:
            rc = handle.state.config
            assert rc.window == 48 and rc.scope <= 48
            ours = model(ids).logits
            assert handle.state.largest_position() < 48
    gl = rc.global_size + rc.local_size
    assert (ours[:, :gl] - stock[:, :gl]).abs().max().item() <= 1e-4
