"""Shared engines: one per (model, device, dtype, config, device map), reused by every wrapper.

Two LangChain models and a LlamaIndex LLM of the same model hold one copy of its weights and
take turns on it (:mod:`~reattn_llm.runtime.fifo`).
"""

from __future__ import annotations

import threading
from typing import Any

from .engine import Engine
from .model_spec import ModelSpec

#: Engine settings the LangChain and LlamaIndex wrappers expose as fields of the same names.
WRAPPER_SETTINGS = ("device", "dtype", "config", "progress", "device_map")

_engines: dict[tuple, Engine] = {}
_lock = threading.Lock()


def shared_engine(model: str | ModelSpec | None = None, **settings: Any) -> Engine:
    """The engine of ``model`` with these :class:`Engine` settings, created on first use (cheap:
    weights load on the first request). Settings that name the same engine share it; the first
    caller's ``progress`` wins."""
    probe = Engine(model, **settings)
    name = model if isinstance(model, ModelSpec) else probe.model_name  # a spec: its object or arguments
    key = (name, str(probe.device), str(probe.dtype), probe.user_config, repr(probe.device_map))
    with _lock:
        return _engines.setdefault(key, probe)


def engine_for(wrapper: Any, model: str | None) -> Engine:
    """:func:`shared_engine` with the settings a wrapper carries as fields (:data:`WRAPPER_SETTINGS`)."""
    return shared_engine(model, **{name: getattr(wrapper, name) for name in WRAPPER_SETTINGS})
