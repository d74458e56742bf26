"""Phi-3: fused ``qkv_proj``, partial rotary (``partial_rotary_factor``), a model-wide sliding window.

Tiny random Phi-3 configs on the CPU (fp32 / fp64, seconds): stock within ``G + L`` through
``model(ids)`` and ``generate()``, the slow literal reference beyond the window (partial RoPE applied
by the reference itself, in the model's own dim order), RoPE positions below the window at 16x it,
``sliding_window`` as the attention window, and longrope refused with its reason. On a GPU: the
Triton kernel runs the partial rotary itself (no torch fallback) and agrees with the torch twin.
"""

from __future__ import annotations

import pytest
import reference
import torch
from reference import literal_attention
from tiny_models import distinct_ids, tiny_model, tiny_phi3
from transformers import AttentionInterface, DynamicCache

from reattn_llm import ConfigError, ReAttentionCache, ReAttentionConfig, UnsupportedModelError, patch
from reattn_llm.method.families import check_model_config
from reattn_llm.method.rope import rotary_permutation

REF_NAME = "reattention_literal_reference_phi3"
CFG = dict(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)
_full_rotate = reference.rotate


def _partial_rotate(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference's rotate-half RoPE on the first ``2 * len(inv_freq)`` dims, the rest passed
    through: Phi-3's ``apply_rotary_pos_emb``, in the model's own dim order."""
    r = 2 * inv_freq.numel()
    return torch.cat((_full_rotate(x[..., :r], pos, inv_freq, scale), x[..., r:].double()), dim=-1)


def _literal_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The literal reference on the model's own layout: the patch's dim order undone first."""
    state = module._reattn_state
    if state.rope.perm is not None:
        inv = torch.argsort(state.rope.perm)
        query, key = query[..., inv], key[..., inv]
    rotary = module._ref_rotary
    memory = module.__dict__.setdefault("_ref_memory", {})
    out = literal_attention(
        query, key, value, state.config, rotary.inv_freq, rotary.attention_scaling, scaling, memory
    )
    return out.to(query.dtype), None


AttentionInterface.register(REF_NAME, _literal_forward)


def test_permutation_lays_rotary_pairs_on_whole_head_pairs():
    perm = rotary_permutation(16, 12)  # pairs (i, i + 6) of the model -> (j, j + 8) of the kernels
    assert perm.tolist() == [0, 1, 2, 3, 4, 5, 12, 13, 6, 7, 8, 9, 10, 11, 14, 15]
    assert sorted(perm.tolist()) == list(range(16)) and rotary_permutation(16, 16) is None
    with pytest.raises(UnsupportedModelError, match="even"):
        rotary_permutation(16, 5)


@pytest.mark.parametrize("head_dim,kv_heads,factor", [(32, 2, 0.75), (64, 1, 0.5), (48, 4, 1.0)])
def test_equal_to_stock_within_global_plus_local(head_dim, kv_heads, factor):
    model = tiny_phi3(head_dim=head_dim, kv_heads=kv_heads, partial_rotary_factor=factor)
    ids = distinct_ids(1, 44)  # with 8 new tokens: 52 = G + L
    gen = dict(
        max_new_tokens=8, min_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    with torch.no_grad():
        stock, stock_gen = model(ids).logits, model.generate(ids, **gen)
        with patch(model, ReAttentionConfig(**CFG)) as handle:
            assert len(handle.state.layers) == 2
            assert (handle.state.rope.perm is None) == (factor == 1.0)
            cos, _ = handle.state.rope.get(torch.device("cpu"), torch.float32)
            assert cos.shape == (128, head_dim)  # widened to the whole head: no kernel falls back
            fast, fast_gen = model(ids).logits, model.generate(ids, **gen)
        after = model(ids).logits
    assert (fast - stock).abs().max().item() <= 1e-4
    assert torch.equal(fast_gen.sequences, stock_gen.sequences)
    assert (
        max((a - b).abs().max().item() for a, b in zip(fast_gen.logits, stock_gen.logits, strict=True))
        <= 1e-4
    )
    assert torch.equal(after, stock)  # unpatch removed the qkv_proj hooks


def _reference_run(model, ids, cfg, monkeypatch, run):
    handle = patch(model, cfg)
    for layer in handle.state.layers:
        layer._ref_rotary = model.model.rotary_emb
    fast = run()
    monkeypatch.setattr(reference, "rotate", _partial_rotate)
    model.config._attn_implementation = REF_NAME
    for layer in handle.state.layers:
        layer.__dict__.pop("_ref_memory", None)
    ref = run()
    handle.unpatch()
    return fast, ref


@pytest.mark.parametrize("scoring", ["expected", "raw"])
@pytest.mark.parametrize("head_dim,kv_heads,factor", [(48, 2, 0.75), (32, 1, 0.5)])
def test_matches_literal_reference_beyond_window(head_dim, kv_heads, factor, scoring, monkeypatch):
    model = tiny_phi3(head_dim=head_dim, kv_heads=kv_heads, partial_rotary_factor=factor, seed=1).double()
    ids = distinct_ids(1, 200, seed=1)
    cfg = ReAttentionConfig(**CFG, scoring=scoring)

    def run():
        with torch.no_grad():
            return model(ids).logits

    fast, ref = _reference_run(model, ids, cfg, monkeypatch, run)
    assert model.config._attn_implementation == "sdpa"
    assert (fast - ref).abs().max().item() < 1e-5
    with torch.no_grad():  # beyond the window it is not the stock model
        stock = model(ids).logits
    assert (stock - fast).abs().max().item() > 1e-2


def test_decode_steps_match_reference(monkeypatch):
    model = tiny_phi3(head_dim=32, kv_heads=2, seed=2).double()
    ids = distinct_ids(1, 176, seed=3)
    cfg = ReAttentionConfig(**CFG, decode_spans="question")

    def run():
        cache = ReAttentionCache(model.config.num_hidden_layers)
        with torch.no_grad():
            out = [model(ids[:, :160], past_key_values=cache).logits[:, -1:]]
            out += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(160, 176)]
        return torch.cat(out, 1)

    fast, ref = _reference_run(model, ids, cfg, monkeypatch, run)
    assert (fast - ref).abs().max().item() < 1e-5


def test_rope_positions_stay_below_window_at_16x():
    window = 64
    model = tiny_phi3(window=window, seed=4)
    seen = []
    rotary = model.model.rotary_emb
    inner = rotary.forward
    rotary.forward = lambda x, position_ids: seen.append(int(position_ids.max())) or inner(x, position_ids)
    ids = torch.randint(3, 512, (1, 16 * window), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), patch(model, ReAttentionConfig()) as handle:
        out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert out.shape[1] == 16 * window + 4
        assert max(seen) < window and handle.state.largest_position() < window
        rc = handle.state.config
        assert handle.state.largest_position() >= rc.global_size + rc.local_size - 1


def test_sliding_window_refuses_a_stock_cache_and_a_larger_scope():
    """Phi-3-mini-4k's ``sliding_window`` (2047 of 4096) is the attention window (its equality with
    stock within G + L: test_patch.py's ``test_model_wide_sliding_window_is_the_attention_window``):
    a stock cache that drops old tokens is refused, and so is a larger scope, naming it."""
    model = tiny_phi3(window=128, sliding_window=48, seed=5)
    ids = distinct_ids(1, 120, seed=5)
    with torch.no_grad(), patch(model, ReAttentionConfig()):
        with pytest.raises(ValueError, match="ReAttentionCache"):
            model(ids[:, :8], past_key_values=DynamicCache(config=model.config))
    with pytest.raises(ConfigError, match=r"trained window of 48 tokens \(sliding_window"):
        patch(model, ReAttentionConfig(window=128, global_size=4, local_size=64, span_size=8, max_spans=2))
    assert model.config._attn_implementation == "sdpa"


def test_longrope_is_refused_with_its_reason():
    """Phi-3-128k, Phi-3.5 and Phi-4-mini use longrope: refused from the config, naming why and
    which checkpoints work."""
    rope = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.75,
        "short_factor": [1.0] * 12,
        "long_factor": [2.0] * 12,
        "original_max_position_embeddings": 64,
    }
    model = tiny_model(
        "phi3",
        heads=4,
        kv_heads=2,
        head_dim=32,
        window=256,
        rope_parameters=rope,
        original_max_position_embeddings=64,
    )
    with pytest.raises(UnsupportedModelError, match="longrope") as err:
        check_model_config(model.config)
    msg = str(err.value)
    assert "original_max_position_embeddings=64" in msg and "Phi-3-mini-4k-instruct" in msg
    assert "default, linear, llama3, yarn" in msg
    with pytest.raises(UnsupportedModelError, match="longrope"):
        patch(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_runs_the_partial_rotary_itself_and_matches_torch(monkeypatch):
    pytest.importorskip("triton")
    import reattn_llm.kernels.triton_attention as tri

    fallbacks = []
    real = tri.scope_attention_torch
    monkeypatch.setattr(tri, "scope_attention_torch", lambda *a: fallbacks.append(1) or real(*a))
    model = tiny_phi3(head_dim=96, kv_heads=2, partial_rotary_factor=0.75, seed=6).cuda()
    ids = distinct_ids(1, 300, seed=6).cuda()
    out = {}
    with torch.no_grad():
        stock = model(ids[:, :50]).logits
        for backend in ("triton", "torch"):
            with patch(model, ReAttentionConfig(**CFG, backend=backend)):
                out[backend] = (model(ids[:, :50]).logits, model(ids).logits)
    assert not fallbacks
    assert (out["triton"][0] - stock).abs().max().item() <= 1e-3
    assert (out["triton"][1] - out["torch"][1]).abs().max().item() <= 1e-3
