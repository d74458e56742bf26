"""What the LangChain and LlamaIndex wrappers share, with neither framework imported.

Both wrap one shared :class:`~reattn_llm.runtime.engine.Engine` per model
(:func:`~reattn_llm.runtime.registry.engine_for`) and build every call on the one
:class:`~reattn_llm.runtime.stream.Stream` that ``engine.generate`` returns.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import warnings
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, field_validator, model_validator

from ..errors import ConfigError
from ..method.config import ReAttentionConfig
from ..runtime.citations import NOT_RECORDED, cited_pages
from ..runtime.engine import Engine
from ..runtime.model_spec import ModelSpec
from ..runtime.models import DEFAULT_MODEL, is_default
from ..runtime.prompts import QuestionStart
from ..runtime.registry import WRAPPER_SETTINGS, shared_engine
from ..runtime.sampling import SamplingParams
from ..runtime.stream import Completion, Stream
from ..runtime.structured import from_response_format

Prompt = str | list[dict[str, str]]

#: Sampling settings that are both wrapper fields and per-call keyword arguments (transformers'
#: meanings: :class:`~reattn_llm.runtime.sampling.SamplingParams`).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "seed",
)

#: Per-call keyword arguments of both wrappers that set sampling (``invoke(..., temperature=0.7)``).
SAMPLING_KWARGS = frozenset({"max_tokens", "max_new_tokens", "cite", "response_format", *SAMPLING_FIELDS})

#: Per-call keyword arguments LangChain itself may pass down with a call: accepted, not used here.
FRAMEWORK_CALL_KWARGS = frozenset({"callbacks", "run_manager", "tags", "metadata", "run_name", "run_id"})


#: Names other wrappers use for these settings (LangChain's / LlamaIndex's / transformers'),
#: suggested when they are given here.
SYNONYMS = {
    "context_window": "max_input_tokens",
    "max_input_tokens": "context_window",
    "max_length": "max_tokens",
    "num_output": "max_tokens",
    "model_name": "model",
    "model_id": "model",
    "model_path": "model",
    "torch_dtype": "dtype",
    "tokenizer_name": "tokenizer",
    "do_sample": "temperature",
}


def check_constructor_kwargs(cls: type, data: Any, also: Collection[str] = ()) -> None:
    """Refuse constructor arguments that are not fields (or aliases) of ``cls``, naming each with
    the nearest valid name: a typo (``temprature=``) or an option this wrapper lacks must not be
    dropped silently. ``also``: names the framework accepts besides its fields."""
    if not isinstance(data, Mapping):
        return
    valid = set(also)
    for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
        valid.add(name)
        if info.alias:
            valid.add(info.alias)
    unknown = sorted(k for k in data if isinstance(k, str) and k not in valid)
    if not unknown:
        return
    hints = []
    for k in unknown:
        near = (
            [SYNONYMS[k]] if SYNONYMS.get(k) in valid else difflib.get_close_matches(k, sorted(valid), 1, 0.6)
        )
        hints.append(f"{k!r} (did you mean {near[0]!r}?)" if near else repr(k))
    raise TypeError(
        f"{cls.__name__} got unexpected keyword argument(s) {', '.join(hints)}. "
        f"Its settings: {', '.join(sorted(v for v in valid if not v.startswith('_')))}."
    )


def model_spec(model: Any, tokenizer: Any = None, model_kwargs: Mapping[str, Any] | None = None) -> Any:
    """What the engine loads for a wrapper's ``model`` / ``tokenizer`` / ``model_kwargs``: the plain
    name (or None) when there is nothing more, else a :class:`ModelSpec` (checked here: cheap)."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k not in ("dtype", "torch_dtype")}
    if (model is None or isinstance(model, str)) and tokenizer is None and not kwargs:
        return model
    if model is None or isinstance(model, str):
        return ModelSpec(model, kwargs, tokenizer=tokenizer)
    return ModelSpec(model=model, tokenizer=tokenizer, kwargs=kwargs)


def model_name(wrapper: Any) -> str:
    """The name results report for a wrapper's own model (no engine is created)."""
    spec = model_spec(
        wrapper.model, getattr(wrapper, "tokenizer", None), getattr(wrapper, "model_kwargs", None)
    )
    return DEFAULT_MODEL if is_default(spec) else str(spec)


def engine_settings(wrapper: Any) -> dict[str, Any]:
    """The :class:`Engine` settings of a wrapper's own model: its fields (``WRAPPER_SETTINGS``), a
    ``dtype`` given in ``model_kwargs``, and for a model the user loaded its own device and dtype."""
    settings = {name: getattr(wrapper, name) for name in WRAPPER_SETTINGS}
    extra = dict(getattr(wrapper, "model_kwargs", None) or {})
    for key in ("dtype", "torch_dtype"):
        if key in extra:
            if str(settings["dtype"]) not in ("auto", str(extra[key])):
                raise ConfigError(
                    f"dtype={settings['dtype']!r} and model_kwargs[{key!r}]={extra[key]!r}: give one."
                )
            settings["dtype"] = extra[key]
    model = wrapper.model
    if model is not None and not isinstance(model, str | os.PathLike):  # loaded by the user: used where it is
        device = model.get_input_embeddings().weight.device
        if settings["device"] not in ("auto", None, str(device)):
            raise ConfigError(
                f"device={settings['device']!r}, but the model you loaded is on {device}: "
                "move it first (model.to(...)) or leave device='auto'."
            )
        devices = set(getattr(model, "hf_device_map", {}).values())
        if len(devices) > 1 and settings["device_map"] is None:
            settings["device_map"] = model.hf_device_map
        settings["device"], settings["dtype"] = str(device), model.dtype
    return settings


def wrapper_engine(wrapper: Any, model: str | None = None) -> Engine:
    """The shared engine of the wrapper's own model (``model`` None), or of another model named
    in a call (``invoke(..., model="other")``: loaded by name, with the wrapper's device and dtype)."""
    if model is None:
        spec = model_spec(
            wrapper.model, getattr(wrapper, "tokenizer", None), getattr(wrapper, "model_kwargs", None)
        )
        return shared_engine(spec, **engine_settings(wrapper))
    return shared_engine(model, **{name: getattr(wrapper, name) for name in WRAPPER_SETTINGS})


def check_model(value: Any) -> Any:
    """A wrapper's ``model`` field: a Hub id or folder (str / path), None, or a loaded transformers model."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "config") and hasattr(value, "get_input_embeddings"):
        return value
    raise TypeError(
        f"model must be a Hub id, a local folder or a loaded transformers model, not {type(value).__name__}."
    )


class WrapperChecks(BaseModel):
    """The constructor checks of both wrappers (a pydantic base of no fields of its own): unknown
    keyword arguments are refused with the nearest valid name, ``model`` / ``tokenizer`` /
    ``model_kwargs`` combinations are checked (cheaply: nothing is loaded), and ``config`` may be
    a dict of :class:`ReAttentionConfig` fields."""

    @model_validator(mode="before")
    @classmethod
    def _check_names(cls, data: Any) -> Any:
        check_constructor_kwargs(cls, data, also={"callback_manager"})  # LangChain's deprecated name
        return data

    @model_validator(mode="after")
    def _check_model_spec(self) -> Any:
        model_spec(self.model, self.tokenizer, self.model_kwargs)  # type: ignore[attr-defined]
        return self

    @field_validator("model", mode="before", check_fields=False)
    @classmethod
    def _check_model(cls, value: Any) -> Any:
        return check_model(value)

    @field_validator("config", mode="before", check_fields=False)
    @classmethod
    def _check_config(cls, value: Any) -> ReAttentionConfig | None:
        return coerce_config(value)


#: Raw PDF syntax: the header, and object / stream markers (``12 0 obj``, ``endobj``, ``endstream``).
_PDF_HEADER = re.compile(r"%PDF-\d\.\d")
_PDF_OBJECTS = re.compile(r"\b\d+ \d+ obj\b|\bendobj\b|\bendstream\b")


def looks_like_raw_pdf(text: str) -> bool:
    """Whether ``text`` holds a PDF's bytes read as text rather than its extracted text: the
    ``%PDF-1.x`` header with object markers, or many object markers (a PDF read without a PDF reader)."""
    head = _PDF_HEADER.search(text) is not None
    markers = 0
    for _ in _PDF_OBJECTS.finditer(text):
        markers += 1
        if markers >= (2 if head else 8):
            return True
    return False


RAW_PDF_FIX = (
    "read PDFs with the package's reader: SimpleDirectoryReader(..., file_extractor=pdf_file_extractor()) "
    "(from reattn_llm.integrations.loaders import pdf_file_extractor), or reattn_llm.load_document(path)"
)


def warn_if_raw_pdf(text: str, where: str) -> bool:
    """A ``UserWarning`` with the fix when ``text`` looks like raw PDF syntax (see
    :func:`looks_like_raw_pdf`); returns whether it warned."""
    if not looks_like_raw_pdf(text):
        return False
    warnings.warn(
        f"{where} looks like a PDF's raw bytes (%PDF-, 'obj'/'endobj' markers), not its text: the model "
        f"would read PDF syntax. A loader read the file as text (SimpleDirectoryReader without a PDF "
        f"reader does this); {RAW_PDF_FIX}.",
        UserWarning,
        stacklevel=3,
    )
    return True


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
    """Refuse unknown per-call keyword arguments (a typo must not be ignored silently); those
    LangChain itself passes down (:data:`FRAMEWORK_CALL_KWARGS`) are accepted."""
    allowed = set(allowed) | FRAMEWORK_CALL_KWARGS
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        hints = []
        for k in unknown:
            near = difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.6)
            hints.append(f"{k!r} (did you mean {near[0]!r}?)" if near else repr(k))
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {', '.join(hints)}; it accepts {sorted(allowed)}."
        )


def call_params(
    wrapper: Any, kwargs: Mapping[str, Any], stop: list[str] | None
) -> tuple[SamplingParams, bool]:
    """The sampling parameters and the citation switch of one call: the call's keyword arguments
    (:data:`SAMPLING_KWARGS`) win over the wrapper's fields of the same names; ``stop`` (None: the
    wrapper's ``stop``) replaces the stop strings; the wrapper's input cap (``_input_cap``, from
    ``max_input_tokens`` / ``context_window``) becomes ``max_input_tokens``."""
    max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", wrapper.max_tokens))
    cap, cap_name = wrapper._input_cap(max_tokens)
    params = SamplingParams(
        max_new_tokens=max_tokens,
        stop=list(stop if stop is not None else (wrapper.stop or [])),
        max_input_tokens=cap,
        input_cap=cap_name,
        **{name: kwargs.get(name, getattr(wrapper, name)) for name in SAMPLING_FIELDS},
        **from_response_format(kwargs.get("response_format")),  # JSON schema / JSON object constraint
    )
    return params, bool(kwargs.get("cite", wrapper.cite))


def start_stream(
    engine: Engine,
    prompt: Prompt,
    params: SamplingParams,
    *,
    chat: bool,
    cite: bool,
    question_start: QuestionStart = "auto",
) -> Stream:
    """One call's engine stream, its prompt checked now, before any model work: a warning when it
    holds a PDF's raw bytes, then tokenized once and refused (``ContextTooLongError``,
    ``ValueError``) when it cannot fit (:meth:`Engine.prepare`)."""
    text = prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)
    warn_if_raw_pdf(text, "The prompt")
    encoded = engine.prepare(prompt, params, chat=chat, question_start=question_start)
    return engine.generate(encoded, params, cite_sources=cite)


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
        if not c.citations:  # say why, rather than an empty list that reads like "nothing cited"
            meta["citations_note"] = getattr(c.citations, "note", None) or NOT_RECORDED
    return meta


def token_usage(c: Completion) -> dict[str, int]:
    """Prompt, completion and total tokens of one answer."""
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }
