"""The fast path against a slow literal reference of SPEC section 1, beyond the window."""

from __future__ import annotations

import pytest
import torch
from reference import literal_attention
from tiny_models import distinct_ids, tiny_model
from transformers import AttentionInterface

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.kv.layer import KVReader

REF_NAME = "reattention_literal_reference"


def _literal_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    state = module._reattn_state
    rotary = module._ref_rotary
    memory = module.__dict__.setdefault("_ref_memory", {})
    out = literal_attention(
        query, key, value, state.config, rotary.inv_freq, rotary.attention_scaling, scaling, memory
    )
    return out.to(query.dtype), None


AttentionInterface.register(REF_NAME, _literal_forward)


def _logits(model, ids, chunk=None):
    with torch.no_grad():
        if chunk is None:
            return model(ids).logits
        from reattn_llm import ReAttentionCache

        cache = ReAttentionCache(model.config.num_hidden_layers)
        return torch.cat(
            [
                model(ids[:, s : s + chunk], past_key_values=cache).logits
                for s in range(0, ids.shape[1], chunk)
            ],
            1,
        )


@pytest.mark.parametrize("scoring", ["expected", "raw"])
@pytest.mark.parametrize(
    "family,heads,kv_heads,head_dim",
    [
        ("llama", 6, 2, 64),
        ("llama", 4, 1, 128),
        ("qwen3", 8, 2, 64),
        ("mistral", 4, 4, 64),
        ("qwen2", 6, 2, 128),
    ],
)
def test_matches_literal_reference_beyond_window(family, heads, kv_heads, head_dim, scoring):
    model = tiny_model(family, heads=heads, kv_heads=kv_heads, head_dim=head_dim, window=128).double()
    cfg = ReAttentionConfig(
        global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16, scoring=scoring
    )
    ids = distinct_ids(1, 300, seed=1)
    handle = patch(model, cfg)
    for layer in handle.state.layers:
        layer._ref_rotary = model.model.rotary_emb
    fast = _logits(model, ids)
    model.config._attn_implementation = REF_NAME
    ref = _logits(model, ids)
    handle.unpatch()
    err = (fast - ref).abs().max().item()
    assert err < 1e-5, f"max |fast - literal| = {err}"
    # and it is not the stock model: beyond the window the logits differ
    with torch.no_grad():
        stock = model(ids).logits
    assert (stock - fast).abs().max().item() > 1e-2


def test_chunked_prefill_matches_reference_in_batch_of_two():
    model = tiny_model("llama", heads=8, kv_heads=2, head_dim=64, window=128, seed=3).double()
    cfg = ReAttentionConfig(global_size=4, local_size=32, span_size=4, max_spans=5, top_k=2, chunk_size=16)
    ids = distinct_ids(2, 200, seed=2)
    handle = patch(model, cfg)
    for layer in handle.state.layers:
        layer._ref_rotary = model.model.rotary_emb
    fast = _logits(model, ids, chunk=40)
    model.config._attn_implementation = REF_NAME
    ref = _logits(model, ids, chunk=40)
    handle.unpatch()
    assert (fast - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "decode_spans,span_shift,vote_pooling,prompt_top_k",
    [(d, 0, "hit", None) for d in ("question", "own", "both", "running", "union")]
    + [
        ("union", 2, "hit", None),
        ("own", 1, "hit", None),
        ("union", 0, "span", None),
        ("running", 0, "span", None),
        ("own", 1, "span", None),
        ("union", 0, "span", 5),  # prompt chunks score 5 hits per query, decode steps top_k = 2
    ],
)
def test_decode_steps_match_reference_with_question_spans(
    decode_spans, span_shift, vote_pooling, prompt_top_k
):
    """A prefill then one-token decode steps: with ``decode_spans="question"`` every step keeps the
    centres the last prefill chunk chose (the literal reference keeps them in its own memory)."""
    model = tiny_model("llama", heads=6, kv_heads=2, head_dim=64, window=128, seed=5).double()
    cfg = ReAttentionConfig(
        global_size=4,
        local_size=32,
        span_size=4,
        max_spans=4,
        top_k=2,
        chunk_size=16,
        decode_spans=decode_spans,
        span_shift=span_shift,
        vote_pooling=vote_pooling,
        prompt_top_k=prompt_top_k,
    )
    ids = distinct_ids(1, 230, seed=7)
    handle = patch(model, cfg)
    for layer in handle.state.layers:
        layer._ref_rotary = model.model.rotary_emb

    def run() -> torch.Tensor:
        from reattn_llm import ReAttentionCache

        cache = ReAttentionCache(model.config.num_hidden_layers)
        with torch.no_grad():
            out = [model(ids[:, :200], past_key_values=cache).logits[:, -1:]]
            out += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(200, 230)]
        return torch.cat(out, 1)

    fast = run()
    model.config._attn_implementation = REF_NAME
    for layer in handle.state.layers:
        layer.__dict__.pop("_ref_memory", None)
    ref = run()
    handle.unpatch()
    assert (fast - ref).abs().max().item() < 1e-5


def test_past_decode_extra_until_union_steps_keep_only_the_question_spans():
    """``decode_extra_until``: a ``"union"`` decode step over a longer cache adds no spans of its own
    hits and keeps the whole local window, which is ``decode_spans="question"`` bit for bit; within
    the limit the own spans are there (the logits differ from the question-only steps)."""
    model = tiny_model("llama", heads=6, kv_heads=2, head_dim=64, window=128, seed=5).double()
    sizes = dict(global_size=4, local_size=32, span_size=4, max_spans=4, top_k=2, chunk_size=16)
    ids = distinct_ids(1, 230, seed=7)

    def run(**kw) -> torch.Tensor:
        from reattn_llm import ReAttentionCache

        with patch(model, ReAttentionConfig(**sizes, **kw)):
            cache = ReAttentionCache(model.config.num_hidden_layers)
            with torch.no_grad():
                out = [model(ids[:, :200], past_key_values=cache).logits[:, -1:]]
                out += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(200, 230)]
        return torch.cat(out, 1)

    question = run(decode_spans="question")
    assert torch.equal(run(decode_spans="union", decode_extra_spans=2, decode_extra_until=150), question)
    # such a step scores nothing: its spans are the question's (slots the question left empty stay empty)
    scored: list[int] = []
    real = KVReader.score_middle
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            KVReader, "score_middle", lambda self, q, *a: scored.append(q.shape[2]) or real(self, q, *a)
        )
        assert torch.equal(run(decode_spans="union", decode_extra_spans=2, decode_extra_until=150), question)
    assert scored and 1 not in scored
    within = run(decode_spans="union", decode_extra_spans=2, decode_extra_until=None)
    assert (within - question).abs().max().item() > 1e-6
    assert torch.equal(
        run(decode_spans="union", decode_extra_spans=2), within
    )  # 230 tokens: within the default
