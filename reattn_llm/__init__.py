"""reattn-llm: whole books and PDFs as raw context for a local Hugging Face model (ReAttention).

Public API: :class:`ReAttentionLLM` (a LangChain LLM), :class:`ChatReAttention`,
:class:`ReAttentionConfig`, :func:`load_document`, :func:`patch` / :func:`unpatch`.
Heavy imports (the integrations, the engine) happen on first attribute access.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

from .errors import (
    ConfigError,
    ContextTooLongError,
    DocumentError,
    ReAttentionError,
    UnsupportedModelError,
)
from .kv.cache import ReAttentionCache
from .method.config import ReAttentionConfig
from .method.patch import patch, unpatch

DISTRIBUTION = "reattn-llm"


def _read_version() -> str:
    """The installed distribution's version; in a source tree that was never installed, the
    ``version`` of the ``pyproject.toml`` beside the package (``"0+unknown"`` without one)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib

        with pyproject.open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "0+unknown"


__version__ = _read_version()

_LAZY = {
    "ReAttentionLLM": ".integrations.langchain",
    "ChatReAttention": ".integrations.langchain",
    "load_document": ".documents",
    "load_documents": ".documents",
    "Document": ".documents",
    "Engine": ".runtime.engine",
}

__all__ = [
    "ChatReAttention",
    "ConfigError",
    "ContextTooLongError",
    "Document",
    "DocumentError",
    "Engine",
    "ReAttentionCache",
    "ReAttentionConfig",
    "ReAttentionError",
    "ReAttentionLLM",
    "UnsupportedModelError",
    "__version__",
    "load_document",
    "load_documents",
    "patch",
    "unpatch",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reattn_llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
