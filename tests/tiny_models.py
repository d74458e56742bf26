"""Tiny random-initialised models of every supported family, built in the tests (no downloads)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")

#: The default model's (SmolLM2-135M) config fields that the capacity and plan arithmetic read.
SMOLLM2_SHAPE = SimpleNamespace(
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_size=576,
    num_hidden_layers=30,
    intermediate_size=1536,
    vocab_size=49152,
    tie_word_embeddings=True,
)


def tiny_model(
    family: str = "llama",
    *,
    heads: int = 6,
    kv_heads: int = 2,
    head_dim: int = 64,
    layers: int = 2,
    window: int = 256,
    rope_parameters: dict | None = None,
    seed: int = 0,
    **extra,
):
    """A small causal LM of ``family`` in fp32, eval mode, SDPA attention (``extra``: more config
    fields, such as Phi-3's ``sliding_window``)."""
    cls = {
        "llama": LlamaConfig,
        "mistral": MistralConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "phi3": Phi3Config,
    }[family]
    kwargs = dict(
        vocab_size=512,
        hidden_size=heads * (head_dim if family == "phi3" else 16),  # Phi-3: head_dim = hidden / heads
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=window,
        tie_word_embeddings=False,
    )
    if family == "mistral":
        kwargs["sliding_window"] = None
    if family == "qwen2":
        kwargs["use_sliding_window"] = False
    if family == "phi3":
        # no pad id: its embedding row would be zero, a zero query that ties every score
        kwargs.update(
            pad_token_id=None, bos_token_id=1, eos_token_id=2, original_max_position_embeddings=window
        )
    if rope_parameters is not None:
        kwargs["rope_parameters"] = rope_parameters
    config = cls(**{**kwargs, **extra})
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # random init is small; scale weights up so attention is peaked and selections matter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name:
                p.mul_(3.0)
    return model


def tiny_phi3(
    *,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    partial_rotary_factor: float = 0.75,
    layers: int = 2,
    window: int = 128,
    seed: int = 0,
    **extra,
):
    """A small Phi-3 (fused ``qkv_proj`` and ``gate_up_proj``) with a partial rotary: RoPE on the first
    ``head_dim * partial_rotary_factor`` dims of each head (Phi-4-mini's 0.75 by default)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": partial_rotary_factor}
    return tiny_model(
        "phi3",
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        layers=layers,
        window=window,
        rope_parameters=rope,
        seed=seed,
        **extra,
    )


#: Gemma 3's layer pattern in the tiny configs: two sliding-window layers, then a full-attention one.
GEMMA3_PATTERN = ["sliding_attention", "sliding_attention", "full_attention"]


def tiny_gemma3(
    *,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    layers: int = 6,
    window: int = 128,
    sliding_window: int = 16,
    seed: int = 0,
    **extra,
):
    """A small Gemma 3 text model (``Gemma3ForCausalLM``) in fp32, SDPA, sliding/sliding/full layers."""
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=window,
        sliding_window=sliding_window,
        layer_types=[GEMMA3_PATTERN[i % 3] for i in range(layers)],
        tie_word_embeddings=False,
        **extra,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # peaked attention, so selections matter
        for name, p in model.named_parameters():
            if "proj" in name:
                p.mul_(3.0)
    return model


def distinct_ids(batch: int, length: int, seed: int = 0, vocab: int = 512) -> torch.Tensor:
    """``[batch, length]`` token ids without repeats in a row: layer-0 keys then never tie exactly,
    so top-k selections are unique and implementations can be compared token for token."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=g)[:length] for _ in range(batch)])


def prompt_then_steps(model, cfg, ids: torch.Tensor, prompt: int) -> tuple[torch.Tensor, list]:
    """``model`` patched with ``cfg`` (unpatched after): ``ids[:, :prompt]`` in one forward, then the
    rest one token at a time into one cache. Returns the logits of every position ``[1, T, V]`` and
    each layer's remembered question centres (``pinned``)."""
    from reattn_llm import ReAttentionCache, patch

    layers = model.config.num_hidden_layers
    handle = patch(model, cfg)
    try:
        cache = ReAttentionCache(layers)
        with torch.no_grad():
            out = [model(ids[:, :prompt], past_key_values=cache).logits]
            out += [
                model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(prompt, ids.shape[1])
            ]
        return torch.cat(out, 1), [cache.layers[i].pinned for i in range(layers)]
    finally:
        handle.unpatch()


def prefill_in_forwards(
    model, cfg, ids: torch.Tensor, question: int, tokens: int
) -> tuple[torch.Tensor, list]:
    """``model`` patched with ``cfg`` (unpatched after) prefilled on the engine's grid (the question
    from ``question`` apart), chunks joined in forwards of ``tokens`` (``PatchState.running``).
    Returns the last forward's logits ``[1, q, V]`` and the cache's layers."""
    from reattn_llm import patch
    from reattn_llm.method.chunks import plan_prefill
    from reattn_llm.method.patch import make_cache

    with patch(model, cfg) as handle, torch.no_grad():
        cache = make_cache(model, reserve=ids.shape[1])
        t = ids.shape[1]
        # as the engine: a sliding-window layer's forwards end where a later prompt may reuse the cache
        for f in plan_prefill(
            t, cfg.chunk_size, cfg.tail_size, tokens, question, end_at_reuse=cache.cut_at_forward_ends
        ):
            with handle.state.running(f):
                out = model(input_ids=ids[:, f.start : f.end], past_key_values=cache, use_cache=True)
    return out.logits, cache.layers
