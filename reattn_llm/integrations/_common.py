"""What the LangChain and LlamaIndex wrappers share, with neither framework imported.

Both wrap one shared :class:`~reattn_llm.runtime.engine.Engine` per model
(:func:`~reattn_llm.runtime.registry.engine_for`) and build every call on the one
:class:`~reattn_llm.runtime.stream.Stream` that ``engine.generate`` returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from ..method.config import ReAttentionConfig
from ..runtime.citations import cited_pages
from ..runtime.sampling import SamplingParams
from ..runtime.stream import Completion

Prompt = str | list[dict[str, str]]

#: Per-call keyword arguments of both wrappers that set sampling (``invoke(..., temperature=0.7)``).
SAMPLING_KWARGS = frozenset({"max_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "cite"})


def coerce_config(value: Any) -> ReAttentionConfig | None:
    """Accept a :class:`ReAttentionConfig`, a dict of its fields (as serialized), or None."""
    if value is None or isinstance(value, ReAttentionConfig):
        return value
    if isinstance(value, Mapping):
        return ReAttentionConfig(**value)
    raise TypeError(f"config must be a ReAttentionConfig or a dict of its fields, not {type(value).__name__}")


def config_dict(config: ReAttentionConfig | None) -> dict[str, Any] | None:
    """The fields of ``config`` that differ from the defaults (JSON-friendly), or None."""
    if config is None:
        return None
    default = ReAttentionConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def check_call_kwargs(owner: str, kwargs: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Refuse unknown per-call keyword arguments (a typo must not be ignored silently)."""
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {sorted(unknown)}; it accepts {sorted(allowed)}."
        )


def call_params(
    wrapper: Any, kwargs: Mapping[str, Any], stop: list[str] | None
) -> tuple[SamplingParams, bool]:
    """The sampling parameters and the citation switch of one call: the call's keyword arguments
    (:data:`SAMPLING_KWARGS`) win over the wrapper's fields of the same names; ``stop`` (None: the
    wrapper's ``stop``) replaces the stop strings."""
    max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", wrapper.max_tokens))
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=kwargs.get("temperature", wrapper.temperature),
        top_p=kwargs.get("top_p", wrapper.top_p),
        top_k=kwargs.get("top_k", wrapper.top_k),
        seed=kwargs.get("seed", wrapper.seed),
        stop=list(stop if stop is not None else (wrapper.stop or [])),
    )
    return params, bool(kwargs.get("cite", wrapper.cite))


def completion_metadata(c: Completion, *, cite: bool) -> dict[str, Any]:
    """What a finished answer reports besides its text (model, finish reason, timings, citations)."""
    meta: dict[str, Any] = {
        "model_name": c.model_name,
        "finish_reason": c.finish_reason,
        "prefill_seconds": round(c.prefill_seconds, 4),
        "decode_seconds": round(c.decode_seconds, 4),
        "max_position": c.max_position,
    }
    if cite:
        meta["citations"] = [x.as_dict() for x in c.citations]
        meta["cited_pages"] = cited_pages(c.citations)
    return meta


def token_usage(c: Completion) -> dict[str, int]:
    """Prompt, completion and total tokens of one answer."""
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }
