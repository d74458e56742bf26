"""Which models ReAttention patches exactly, decided from the config alone."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .rope import check_rope

#: ``config.model_type`` values ReAttention patches exactly (``gemma3``: its text model).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3", "phi3")

#: Families whose ``config.sliding_window``, when set, limits every layer's attention (Phi-3-mini-4k
#: and Phi-3-medium-4k: 2047; Mistral-7B-v0.1: 4096 of 32768): transformers runs the stock model
#: with that sliding mask, so the model's attention window is ``min(max_position_embeddings,
#: sliding_window)`` (:func:`attention_window`).
MODEL_WIDE_SLIDING = ("phi3", "mistral")

#: ``config.layer_types`` entry of a layer that only sees its local window (left stock).
SLIDING = "sliding_attention"
#: The RoPE table (rotary ``layer_type``) of the full-attention layers of a model with layer types.
FULL = "full_attention"


def text_config(config: Any) -> Any:
    """The config of the decoder that ReAttention patches: ``text_config`` of a multimodal Gemma 3."""
    if getattr(config, "model_type", None) == "gemma3":
        return config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
    return config


def sliding_layers(config: Any) -> list[bool]:
    """Per decoder layer, whether it is a sliding-window layer that stays stock (Gemma 3's
    ``layer_types``); all False for the Llama-style families, whose every layer is patched."""
    tc = text_config(config)
    types = getattr(tc, "layer_types", None) if getattr(tc, "model_type", None) == "gemma3_text" else None
    n = int(getattr(tc, "num_hidden_layers", 0) or 0)
    return [t == SLIDING for t in types] if types else [False] * n


def sliding_windows(config: Any) -> list[int | None] | None:
    """Per decoder layer, the window a sliding-window layer keeps in the cache (None: a ReAttention
    layer); None when no layer slides (every family but Gemma 3)."""
    sliding = sliding_layers(config)
    if not any(sliding):
        return None
    w = int(text_config(config).sliding_window)
    return [w if s else None for s in sliding]


def model_sliding_window(config: Any) -> int | None:
    """The sliding window of every layer of a :data:`MODEL_WIDE_SLIDING` family, when its config sets
    one (Phi-3-mini-4k: 2047); None otherwise."""
    tc = text_config(config)
    if getattr(tc, "model_type", None) not in MODEL_WIDE_SLIDING:
        return None
    w = getattr(tc, "sliding_window", None)
    return int(w) if w else None


def attention_window(config: Any) -> tuple[int | None, str]:
    """The longest span the stock model attends over, and where it comes from: the text model's
    ``max_position_embeddings``, or a model-wide ``sliding_window`` below it (Phi-3-mini-4k: 2047 of
    4096; transformers masks every layer to it). ``(None, ...)`` when the config names neither."""
    w = getattr(text_config(config), "max_position_embeddings", None)
    slide = model_sliding_window(config)
    if slide is not None and (not w or slide < int(w)):
        return slide, f"sliding_window (every layer attends over its last {slide} tokens)"
    return (int(w) if w else None), "max_position_embeddings"


def check_model_config(config: Any) -> None:
    """Raise :class:`UnsupportedModelError` for an unsupported family, a length-dependent RoPE, or
    attention-logit soft-capping (Gemma 2 style), which the scope kernels do not apply."""
    mtype = getattr(config, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {mtype!r} is not supported by ReAttention. Supported families: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (e.g. Llama 3.x, SmolLM2, Mistral, Qwen2.5, Qwen3, Gemma 3, "
            "Phi-3 / Phi-4 with static RoPE)."
        )
    tc = text_config(config)
    cap = getattr(tc, "attn_logit_softcapping", None)
    if cap:
        raise UnsupportedModelError(
            f"attn_logit_softcapping={cap} is set: ReAttention's attention kernels do not soft-cap the "
            "logits, so the patched model would not be exact. Use a config with attn_logit_softcapping=None "
            "(Gemma 3 checkpoints ship it unset)."
        )
    check_rope(tc)
