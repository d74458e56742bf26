"""Which models ReAttention patches exactly, decided from the config alone."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .rope import check_rope

#: ``config.model_type`` values ReAttention patches exactly.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def check_model_config(config: Any) -> None:
    """Raise :class:`UnsupportedModelError` for an unsupported family or a length-dependent RoPE."""
    mtype = getattr(config, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {mtype!r} is not supported by ReAttention. Supported families: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (e.g. Llama 3.x, SmolLM2, Mistral, Qwen2.5, Qwen3)."
        )
    check_rope(config)
