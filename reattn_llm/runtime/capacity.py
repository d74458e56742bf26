"""How many tokens a model can hold on a device: KV bytes per token against free memory.

ReAttention keeps the whole KV cache (it reads only a bounded part per step), so the capacity is
what the cache can fill after the weights and a working reserve for one chunk. This is the
number the LangChain profile and LlamaIndex metadata report, and requests above it are refused
before any prefill. A kept document prefix counts as free: the next request either reuses its rows
as part of its own cache or frees it before allocating. Under ``max_cache_bytes`` the capacity is
the per-layer row limit of the cache's growth policy (:func:`~reattn_llm.kv.storage.rows_to_allocate`,
:func:`~reattn_llm.kv.storage.budget_rows`), so every request it admits also allocates.

Only the layers that keep every token grow with the context: Gemma 3's sliding-window layers hold
their window (and the few prefill-chunk snapshots of it that make a kept prefix reusable,
:meth:`~reattn_llm.kv.cache.SlidingLayer.max_rows`) in the model's dtype whatever the length, a
fixed cost (:func:`sliding_kv_bytes`) taken from the memory before the per-token division and kept
outside ``max_cache_bytes``, which caps the growing layers (the cache's
:class:`~reattn_llm.kv.storage.MemoryBudget` charges only those). Shapes are read from the text
model's config (Gemma 3's ``text_config``); Phi-3's head size is ``hidden_size / heads``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ContextTooLongError
from ..kv.cache import SlidingLayer
from ..kv.storage import KVStorage, budget_rows
from ..method.chunks import engine_forward, prefill_chunk
from ..method.config import ReAttentionConfig
from ..method.families import sliding_windows, text_config

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
    max_cache_bytes: int | None = None  # the cap on one request's KV cache, when one is set
    sliding_bytes: int = 0  # the sliding-window layers' fixed K/V (Gemma 3), beside the per-token cache
    #: the longest context whose span-vote keys stay exact (:func:`vote_key_tokens`)
    vote_key_tokens: int = sys.maxsize

    def within(self, max_bytes: int | None) -> Capacity:
        """This budget with one request's KV cache capped at ``max_bytes`` (None: no cap): the rows each
        layer's equal share of the cap holds (:func:`~reattn_llm.kv.storage.budget_rows`, the limit the
        cache's growth policy allocates within)."""
        if max_bytes is None:
            return self
        tokens = min(self.max_tokens, budget_rows(max_bytes, self.kv_bytes_per_token))
        return dataclasses.replace(self, max_tokens=tokens, max_cache_bytes=max_bytes)

    def explain(self) -> str:
        gib = 1024**3
        return (
            f"{self.kv_bytes_per_token / 1024:.1f} KiB of KV cache per token, {self.available_bytes / gib:.1f} GiB "
            f"available, {self.weight_bytes / gib:.2f} GiB weights, {self.reserve_bytes / gib:.2f} GiB working reserve"
            + (
                ""
                if not self.sliding_bytes
                else f", {self.sliding_bytes / gib:.2f} GiB sliding-window layers"
            )
            + (
                ""
                if self.max_cache_bytes is None
                else f", the KV cache capped at {self.max_cache_bytes:,} bytes"
            )
            + (
                ""
                if self.vote_key_tokens > self.max_tokens
                else f", span votes exact up to {self.vote_key_tokens:,} tokens (lower top_k or chunk_size)"
            )
        )


def _shape(model_config: Any) -> tuple[int, int, int]:
    """``(layers that keep every token, KV heads, head_dim)`` of the text model."""
    c = text_config(model_config)
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    windows = sliding_windows(model_config)
    growing = c.num_hidden_layers if windows is None else sum(w is None for w in windows)
    return growing, kv, head_dim


def sliding_kv_bytes(model_config: Any, dtype: torch.dtype, tokens: int | None = None) -> int:
    """Device bytes the sliding-window layers' K/V take at most (Gemma 3; 0 for other families):
    per sliding layer :meth:`~reattn_llm.kv.cache.SlidingLayer.max_rows` rows (``min(window, tokens)``
    each with ``tokens``) of K and V per KV head, in the model's dtype whatever the cache storage."""
    windows = sliding_windows(model_config) or []
    _, kv, d = _shape(model_config)
    row = 2 * kv * d * torch.empty((), dtype=dtype).element_size()
    return sum(
        SlidingLayer.max_rows(w if tokens is None else min(w, tokens)) * row for w in windows if w is not None
    )


def kv_bytes_per_token(model_config: Any, dtype: torch.dtype, config: ReAttentionConfig | None = None) -> int:
    """Device bytes one token's K and V take over the layers that keep every token (all but Gemma 3's
    sliding-window layers: :func:`sliding_kv_bytes`) and their KV heads: the rows the config's
    storage keeps on the device (:meth:`~reattn_llm.kv.storage.KVStorage.device_bytes_per_row`; by
    default ``2 (K and V) * head_dim * bytes``), offloaded rows none (:func:`host_kv_bytes_per_token`)."""
    layers, kv, d = _shape(model_config)
    return layers * kv * KVStorage.from_config(config).device_bytes_per_row(d, dtype)


def host_kv_bytes_per_token(
    model_config: Any, dtype: torch.dtype, config: ReAttentionConfig | None = None
) -> int:
    """Host bytes one token's offloaded K/V take (0 without ``config.offload``)."""
    layers, kv, d = _shape(model_config)
    return layers * kv * KVStorage.from_config(config).host_bytes_per_row(d, dtype)


def parameter_count(config: Any) -> int:
    """Parameters of a Llama-style decoder from its config (embeddings, attention, MLP, head; the text
    model of Gemma 3, plus its vision tower when the config has one; Phi-3's fused ``qkv_proj`` and
    ``gate_up_proj`` hold the same weights as separate projections)."""
    c = text_config(config)
    h, inter, vocab = c.hidden_size, c.intermediate_size, c.vocab_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    d = getattr(c, "head_dim", None) or h // heads
    per_layer = h * heads * d * 2 + h * kv * d * 2 + 3 * h * inter + 2 * h
    head = 0 if getattr(c, "tie_word_embeddings", False) else vocab * h
    vision = getattr(config, "vision_config", None) if c is not config else None
    extra = 0
    if vision is not None:  # a ViT: attention (4 h^2) and a two-matrix MLP per layer, and the projector
        vh, vi = vision.hidden_size, vision.intermediate_size
        extra = vision.num_hidden_layers * (4 * vh * vh + 2 * vh * vi) + vh * h
    return vocab * h + c.num_hidden_layers * per_layer + head + extra


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


def working_reserve(
    model_config: Any,
    config: ReAttentionConfig,
    dtype: torch.dtype,
    device: torch.device | None = None,
    prompt: int | None = None,
) -> int:
    """Bytes one prefill forward needs beside the weights and the KV cache, at its peak, for a
    forward of ``tokens`` (chunks joined up to ``prefill_forward``,
    :func:`~reattn_llm.method.chunks.engine_forward`; no more than a ``prompt`` of that many tokens
    needs, when given). A layer's attention and its MLP do not hold their temporaries at once, so
    the larger of the two phases counts:

    * attention: the residual stream, its norm, q, its rotation for scoring and its copy as a batch
      of chunks, k, v and the chunks' outputs (``tokens * (6 * hidden + 2 * Hkv * D)`` values); then
      the larger of the selection's and the scope attention's temporaries. Selection: the hits and
      the scoring kernel's candidates (``24`` bytes per query, head and hit), the span votes' arrays
      per middle key (20 bytes per chunk of a batch, at most ``planning.BATCH_BYTES`` a batch, or
      the twin's 80 bytes of one chunk), and the torch twin's fp32 score block when it scores
      (``kernels.torch_ops``: 64 MB on the CPU, 1 GiB on a GPU; the Triton kernel keeps scores on
      chip). Attention, for each of the forward's chunks (they attend as one batch): the scope's
      gathered K and V and their rotated copies (``3 * 2 * Hkv * scope * D`` values) and the boolean
      mask (``chunk * scope`` bytes), and with the torch twin its SDPA's fp32 scores and the mask
      as floats (``(H + 1) * chunk * scope`` values; the Triton kernel keeps scores on chip);
    * MLP: the residual stream, its norm, gate, up and their product (``tokens * (2 * hidden + 3 *
      intermediate)`` values);

    and the last position's logits and 64 MiB of allocator slack.
    """
    from ..kernels import resolve_backend

    device = device or torch.device("cpu")
    chunk = prefill_chunk(config)
    size = torch.empty((), dtype=dtype).element_size()
    c = text_config(model_config)
    h, inter = c.hidden_size, c.intermediate_size
    _, kv, d = _shape(model_config)
    scope = config.scope if config.is_resolved and config.mode != "full" else (config.window or 8192)
    tokens = engine_forward(config, chunk, device.type)
    if prompt is not None:  # the forward no longer than the prompt's whole chunks (at least one chunk)
        tokens = min(tokens, max(chunk, -(-prompt // chunk) * chunk))
    joined = max(1, tokens // chunk)  # the forward's chunks attend (and on Triton select) as one batch
    backend = resolve_backend(config.backend, device)
    attn = joined * (6 * kv * scope * d * size + chunk * scope)
    if config.mode == "reattention" and backend == "torch":  # the twin's SDPA: scores, float mask
        attn += joined * (c.num_attention_heads + 1) * chunk * scope * 4
    slide = max(sliding_windows(model_config) or [0], key=lambda w: w or 0) or 0
    if slide:  # a sliding layer's concatenation of its window and the forward, and that mask
        attn = max(attn, 2 * kv * (slide + tokens) * d * size + tokens * (slide + tokens))
    if config.mode == "reattention":
        heads = c.num_attention_heads
        attn = max(attn, _selection_bytes(config, heads, tokens, joined, scope, prompt, device, backend))
    attention = tokens * (6 * h + 2 * kv * d) * size + attn
    mlp = tokens * (2 * h + 3 * inter) * size
    logits = 2 * c.vocab_size * 4
    return int(max(attention, mlp) + logits + (64 << 20))


def vote_key_tokens(model_config: Any, config: ReAttentionConfig) -> int:
    """The most tokens whose span votes rank exactly: a middle no longer than
    :func:`~reattn_llm.kernels.torch_select.max_vote_middle` of a prompt chunk's hits (all query
    heads, its queries, ``hits_for`` each), counted on the whole context. Far past any memory at the
    defaults (the 8B shape: 5.4e8 tokens); 64 heads with ``top_k=32`` reach it at 2.1M. Unbounded
    outside ``mode="reattention"``."""
    from ..kernels.torch_select import max_vote_middle

    if config.mode != "reattention":
        return sys.maxsize
    heads = text_config(model_config).num_attention_heads
    return max_vote_middle(heads * prefill_chunk(config) * max(config.top_k, config.prompt_top_k or 0))


def _selection_bytes(
    config: ReAttentionConfig,
    heads: int,
    tokens: int,
    joined: int,
    scope: int,
    prompt: int | None,
    device: torch.device,
    backend: str,
) -> int:
    """A forward's selection temporaries (:func:`working_reserve`) on the resolved ``backend``: hits
    and candidates, span votes over the largest middle (the prompt's, when known), the torch twin's
    score block."""
    from ..kernels.torch_ops import _SCORE_BLOCK_ELEMS
    from ..method.planning import BATCH_BYTES, BATCHED_CHUNKS, SPAN_BYTES_PER_KEY

    hits = tokens * heads * max(config.top_k, config.prompt_top_k or 0) * 24
    middle = max(0, (prompt or 0) - scope)
    if backend in BATCHED_CHUNKS and joined > 1:  # a batch of chunks: bounded, at least two chunks
        spans = max(BATCH_BYTES if prompt is None else min(BATCH_BYTES, joined * SPAN_BYTES_PER_KEY * middle),
                    2 * SPAN_BYTES_PER_KEY * middle)  # fmt: skip
    else:
        spans = (SPAN_BYTES_PER_KEY if backend == "triton" else 80) * middle
    score = 4 * _SCORE_BLOCK_ELEMS.get(device.type, 1 << 24) if backend == "torch" else 0
    return hits + spans + score


def engine_capacity(
    model_config: Any,
    device: torch.device,
    dtype: torch.dtype,
    config: ReAttentionConfig,
    model: Any = None,
    split: bool = False,
    *,
    max_bytes: int | None = None,
    kept: Any = None,
) -> Capacity:
    """An engine's token budget: ``model`` (None: weights not loaded yet) on ``device``, its layers
    split across devices when ``split`` (a ``device_map``), one request's cache capped at ``max_bytes``;
    ``kept``: the cache of a kept document prefix (a :class:`~reattn_llm.kv.cache.ReAttentionCache`),
    whose memory counts as free."""
    if split and model is not None:
        devices = [next(layer.parameters()).device for layer in model.get_decoder().layers]
        cap = estimate_capacity_split(model_config, devices, dtype, config, kept=kept)
    else:
        cap = estimate_capacity(
            model_config, device, dtype, config, weights_loaded=model is not None, kept=kept
        )
    return cap.within(max_bytes)


def _kept_bytes(kept: Any, device: torch.device) -> tuple[int, int]:
    """(bytes on ``device``, bytes in host memory) that the kept cache ``kept`` holds; on the CPU both."""
    if kept is None:
        return 0, 0
    dev, host = int(kept.nbytes()), int(kept.host_nbytes())
    return (dev + host, 0) if device.type == "cpu" else (dev, host)


def estimate_capacity(
    model_config: Any,
    device: torch.device,
    dtype: torch.dtype,
    config: ReAttentionConfig,
    weights_loaded: bool = False,
    kept: Any = None,
) -> Capacity:
    """The most tokens (prompt + answer) whose KV cache fits in free memory after the weights; the
    memory of ``kept`` (a kept prefix's cache, reused or freed by the next request) counts as free."""
    per_tok = max(1, kv_bytes_per_token(model_config, dtype, config))
    kept_dev, kept_host = _kept_bytes(kept, device)
    avail = available_bytes(device) + kept_dev
    weights = (
        0 if weights_loaded else parameter_count(model_config) * torch.empty((), dtype=dtype).element_size()
    )
    reserve = working_reserve(model_config, config, dtype, device)
    slide = sliding_kv_bytes(model_config, dtype)
    usable = max(0, int(avail * _SAFETY) - weights - reserve - slide)
    votes = vote_key_tokens(model_config, config)
    max_tokens = min(
        usable // per_tok,
        _host_token_limit(model_config, dtype, config, (weights if device.type == "cpu" else 0) - kept_host),
        votes,
    )
    return Capacity(
        max_tokens, per_tok, avail, weights, reserve, str(device), sliding_bytes=slide, vote_key_tokens=votes
    )


def _host_token_limit(
    model_config: Any, dtype: torch.dtype, config: ReAttentionConfig, host_weights: int
) -> int:
    """Tokens whose offloaded rows fit in host memory beside ``host_weights`` (unbounded without offload)."""
    host_tok = host_kv_bytes_per_token(model_config, dtype, config)
    if not host_tok:
        return sys.maxsize
    host_free = available_bytes(torch.device("cpu")) - host_weights
    return max(0, int(host_free * _SAFETY)) // host_tok


def estimate_capacity_split(
    model_config: Any,
    layer_devices: list[torch.device],
    dtype: torch.dtype,
    config: ReAttentionConfig,
    kept: Any = None,
) -> Capacity:
    """Capacity of a model whose decoder layers sit on several devices (loaded with a ``device_map``,
    weights already in memory): each device holds the KV cache of its own layers, so the token budget
    is the smallest one over the devices, ``usable_d / (kv_bytes_per_token * layers_d / layers)``; a
    kept prefix's cache ``kept`` counts as free on the devices of its layers."""
    per_tok = max(1, kv_bytes_per_token(model_config, dtype, config))
    windows = sliding_windows(model_config) or [None] * len(layer_devices)
    growing = max(1, sum(w is None for w in windows))  # the layers per_tok is summed over
    _, kv, d = _shape(model_config)
    row = 2 * kv * d * torch.empty((), dtype=dtype).element_size()
    reserve = working_reserve(model_config, config, dtype, layer_devices[0] if layer_devices else None)
    counts = Counter(layer_devices)
    avail = {dev: available_bytes(dev) for dev in counts}
    grows: Counter[torch.device] = Counter()
    fixed: Counter[torch.device] = Counter()
    for dev, w in zip(layer_devices, windows, strict=False):
        if w is None:
            grows[dev] += 1
        else:
            fixed[dev] += SlidingLayer.max_rows(w) * row
    for dev, layer in zip(layer_devices, getattr(kept, "layers", None) or [], strict=False):
        avail[dev] += int(layer.nbytes())
    max_tokens = min(
        (
            max(0, int(avail[dev] * _SAFETY) - reserve - fixed[dev]) * growing // (per_tok * grows[dev])
            if grows[dev]
            else sys.maxsize
        )
        for dev in counts
    )
    votes = vote_key_tokens(model_config, config)
    max_tokens = min(max_tokens, _host_token_limit(model_config, dtype, config, 0), votes)
    names = ", ".join(f"{d} ({n} layers)" for d, n in counts.items())
    return Capacity(
        max_tokens,
        per_tok,
        sum(avail.values()),
        0,
        reserve * len(counts),
        names,
        sliding_bytes=sum(fixed.values()),
        vote_key_tokens=votes,
    )


def check_fits(cap: Capacity, prompt_tokens: int, max_new_tokens: int, device: Any) -> None:
    """Raise :class:`~reattn_llm.errors.ContextTooLongError` when a prompt and its answer exceed ``cap``."""
    need = prompt_tokens + max_new_tokens
    if need > cap.max_tokens:
        raise ContextTooLongError(
            f"The prompt has {prompt_tokens} tokens (+{max_new_tokens} to generate = {need}), but this model "
            f"holds at most {cap.max_tokens} tokens on {device} ({cap.explain()}). Shorten the document, "
            "lower max_new_tokens, or use a device with more memory."
        )
