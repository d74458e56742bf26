"""Which models ReAttention patches exactly, decided from the config alone."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .rope import check_rope

#: ``config.model_type`` values ReAttention patches exactly (``gemma3``: its text model).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")

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


def check_model_config(config: Any) -> None:
    """Raise :class:`UnsupportedModelError` for an unsupported family, a length-dependent RoPE, or
    attention-logit soft-capping (Gemma 2 style), which the scope kernels do not apply."""
    mtype = getattr(config, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {mtype!r} is not supported by ReAttention. Supported families: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (e.g. Llama 3.x, SmolLM2, Mistral, Qwen2.5, Qwen3, Gemma 3)."
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
