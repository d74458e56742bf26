"""How many tokens a model can hold on a device: KV bytes per token against free memory.

ReAttention keeps the whole KV cache (it reads only a bounded part per step), so the capacity is
what the cache can fill after the weights and a working reserve for one chunk. This is the
number the LangChain profile and LlamaIndex metadata report, and requests above it are refused
before any prefill.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .config import ReAttentionConfig

_SAFETY = 0.85


@dataclass(frozen=True)
class Capacity:
    """The token budget of one model on one device."""

    max_tokens: int
    kv_bytes_per_token: int
    available_bytes: int
    weight_bytes: int
    reserve_bytes: int
    device: str

    def explain(self) -> str:
        gib = 1024**3
        return (
            f"{self.kv_bytes_per_token / 1024:.1f} KiB of KV cache per token, {self.available_bytes / gib:.1f} GiB "
            f"available, {self.weight_bytes / gib:.2f} GiB weights, {self.reserve_bytes / gib:.2f} GiB working reserve"
        )


def _shape(model_config: Any) -> tuple[int, int, int]:
    heads = model_config.num_attention_heads
    kv = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return model_config.num_hidden_layers, kv, head_dim


def kv_bytes_per_token(model_config: Any, dtype: torch.dtype, config: ReAttentionConfig | None = None) -> int:
    """Device bytes one token's K and V take: ``2 (K and V) * layers * kv_heads * head_dim * bytes``
    by default; with ``config.kv_dtype="fp8"`` a byte per value plus a 4-byte scale per head; rows
    offloaded by ``config.offload`` take none (see :func:`host_kv_bytes_per_token`)."""
    layers, kv, d = _shape(model_config)
    row = _row_bytes(d, dtype, config)
    offload = getattr(config, "offload", "none")
    on_device = {"none": 2, "values": 1, "keys_values": 0}[offload]
    summaries = 0
    if offload == "keys_values":  # two-level summaries [max | min | mean] per block stay on the device
        summaries = -(-3 * d * torch.empty((), dtype=dtype).element_size() // config.summary_block)  # type: ignore[union-attr]
    return layers * kv * (on_device * row + summaries)


def host_kv_bytes_per_token(
    model_config: Any, dtype: torch.dtype, config: ReAttentionConfig | None = None
) -> int:
    """Host bytes one token's offloaded K/V take (0 without ``config.offload``)."""
    layers, kv, d = _shape(model_config)
    n = {"none": 0, "values": 1, "keys_values": 2}[getattr(config, "offload", "none")]
    return layers * kv * n * _row_bytes(d, dtype, config)


def _row_bytes(head_dim: int, dtype: torch.dtype, config: ReAttentionConfig | None) -> int:
    if getattr(config, "kv_dtype", "model") == "fp8":
        return head_dim + 4
    return head_dim * torch.empty((), dtype=dtype).element_size()


def parameter_count(c: Any) -> int:
    """Parameters of a Llama-style decoder from its config (embeddings, attention, MLP, head)."""
    h, inter, vocab = c.hidden_size, c.intermediate_size, c.vocab_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    d = getattr(c, "head_dim", None) or h // heads
    per_layer = h * heads * d * 2 + h * kv * d * 2 + 3 * h * inter + 2 * h
    head = 0 if getattr(c, "tie_word_embeddings", False) else vocab * h
    return vocab * h + c.num_hidden_layers * per_layer + head


def available_bytes(device: torch.device) -> int:
    """Free memory now: CUDA's free bytes, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def working_reserve(model_config: Any, config: ReAttentionConfig, dtype: torch.dtype) -> int:
    """Bytes for one chunk's activations, logits and the scope workspace (a generous bound)."""
    chunk = config.chunk_size or 1024
    size = torch.empty((), dtype=dtype).element_size()
    h, inter = model_config.hidden_size, model_config.intermediate_size
    acts = chunk * (8 * h + 3 * inter) * size
    scope = (config.window or 8192) * model_config.num_attention_heads * chunk * 4 // 8
    return int(acts + scope + (1 << 24) * 4 + (256 << 20))


def estimate_capacity(
    model_config: Any,
    device: torch.device,
    dtype: torch.dtype,
    config: ReAttentionConfig,
    weights_loaded: bool = False,
) -> Capacity:
    """The most tokens (prompt + answer) whose KV cache fits in free memory after the weights."""
    per_tok = max(1, kv_bytes_per_token(model_config, dtype, config))
    avail = available_bytes(device)
    weights = (
        0 if weights_loaded else parameter_count(model_config) * torch.empty((), dtype=dtype).element_size()
    )
    reserve = working_reserve(model_config, config, dtype)
    usable = max(0, int(avail * _SAFETY) - weights - reserve)
    max_tokens = usable // per_tok
    host_tok = host_kv_bytes_per_token(model_config, dtype, config)
    if host_tok:  # offloaded rows must fit in host memory too (beside the weights when they live there)
        host_free = available_bytes(torch.device("cpu")) - (weights if device.type == "cpu" else 0)
        max_tokens = min(max_tokens, max(0, int(host_free * _SAFETY)) // host_tok)
    return Capacity(max_tokens, per_tok, avail, weights, reserve, str(device))
