"""A memory and time plan for a document, before any model work.

Memory: the KV cache (``kv_bytes_per_token * tokens``, plus the fixed window of Gemma 3's
sliding-window layers), the weights and a working reserve.
Time: FLOPs of the prefill (weights, scope attention and the position-agnostic scoring of
every middle key on the ReAttention layers; Gemma 3's sliding layers attend over their window and
the chunk only) over this machine's measured matrix-multiply rate (a 0.1 s calibration).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..method.chunks import prefill_chunk
from ..method.config import ReAttentionConfig
from ..method.families import sliding_windows, text_config
from .capacity import (
    Capacity,
    estimate_capacity,
    host_kv_bytes_per_token,
    kv_bytes_per_token,
    parameter_count,
    sliding_kv_bytes,
    working_reserve,
)


@dataclass(frozen=True)
class Plan:
    """What a prefill of ``tokens`` will cost on ``device``."""

    tokens: int
    kv_bytes: int
    host_kv_bytes: int
    weight_bytes: int
    reserve_bytes: int
    capacity: Capacity
    prefill_flops: float
    device_flops: float

    @property
    def fits(self) -> bool:
        return self.tokens <= self.capacity.max_tokens

    @property
    def prefill_seconds(self) -> float:
        return self.prefill_flops / self.device_flops

    @property
    def peak_bytes(self) -> int:
        return self.kv_bytes + self.weight_bytes + self.reserve_bytes


def prefill_flops(model_config: Any, config: ReAttentionConfig, tokens: int) -> float:
    """FLOPs of a chunked ReAttention prefill of ``tokens`` (dense layers + scope attention + scoring
    on the layers that keep every token; a sliding-window layer's attention over its window and the
    chunk, ``min(tokens, window + chunk)`` keys per query)."""
    c = text_config(model_config)
    heads = c.num_attention_heads
    d = getattr(c, "head_dim", None) or c.hidden_size // heads
    windows = sliding_windows(model_config) or [None] * c.num_hidden_layers
    layers = sum(w is None for w in windows)
    dense = 2.0 * parameter_count(model_config) * tokens
    g, loc = config.global_size or 0, config.local_size or 0
    scope = min(tokens, config.scope if config.mode != "full" else tokens)
    attn = 4.0 * tokens * scope * heads * d * layers / (2 if config.mode == "full" else 1)
    chunk = prefill_chunk(config)
    attn += sum(4.0 * tokens * min(tokens, w + chunk) * heads * d for w in windows if w is not None)
    middle = max(0, tokens - g - loc)
    scoring = 0.0 if config.mode != "reattention" else 2.0 * heads * d * layers * middle * middle / 2
    return dense + attn + scoring


_RATE_CACHE: dict[tuple[str, torch.dtype], float] = {}


def measured_flops(device: torch.device, dtype: torch.dtype) -> float:
    """This device's matrix-multiply rate (FLOP/s), measured once per process (~0.1 s)."""
    key = (str(device), dtype)
    if key not in _RATE_CACHE:
        n = 1024 if device.type == "cpu" else 4096
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.1 or reps < 2:
            a @ b
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        _RATE_CACHE[key] = 2.0 * n**3 * reps / (time.perf_counter() - t0)
    return _RATE_CACHE[key]


def make_plan(
    model_config: Any, config: ReAttentionConfig, tokens: int, device: torch.device, dtype: torch.dtype
) -> Plan:
    """Memory and time for a prefill of ``tokens``; ``config`` must be resolved."""
    cap = estimate_capacity(model_config, device, dtype, config)
    return Plan(
        tokens=tokens,
        kv_bytes=kv_bytes_per_token(model_config, dtype, config) * tokens
        + sliding_kv_bytes(model_config, dtype, tokens),
        host_kv_bytes=host_kv_bytes_per_token(model_config, dtype, config) * tokens,
        weight_bytes=cap.weight_bytes,
        reserve_bytes=working_reserve(model_config, config, dtype, device, prompt=tokens),
        capacity=cap,
        prefill_flops=prefill_flops(model_config, config, tokens),
        device_flops=measured_flops(device, dtype),
    )
