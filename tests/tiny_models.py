"""Tiny random-initialised models of every supported family, built in the tests (no downloads)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")

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
):
    """A small causal LM of ``family`` in fp32, eval mode, SDPA attention."""
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    kwargs = dict(
        vocab_size=512,
        hidden_size=heads * 16,
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
    if rope_parameters is not None:
        kwargs["rope_parameters"] = rope_parameters
    config = cls(**kwargs)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # random init is small; scale weights up so attention is peaked and selections matter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name:
                p.mul_(3.0)
    return model


def distinct_ids(batch: int, length: int, seed: int = 0, vocab: int = 512) -> torch.Tensor:
    """``[batch, length]`` token ids without repeats in a row: layer-0 keys then never tie exactly,
    so top-k selections are unique and implementations can be compared token for token."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=g)[:length] for _ in range(batch)])
