"""What :class:`~reattn_llm.integrations.langchain.ReAttentionLLM` and
:class:`~reattn_llm.integrations.langchain.ChatReAttention` share: their fields, the shared engine,
token counting, per-call settings, and the one loop that turns an engine
:class:`~reattn_llm.runtime.stream.Stream` into LangChain chunks (sync and async).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.messages.ai import UsageMetadata
from pydantic import ConfigDict, Field, PrivateAttr

from ...method.config import ReAttentionConfig
from ...runtime.capacity import Capacity
from ...runtime.engine import Engine
from ...runtime.stream import Completion, Stream
from .._common import (
    SAMPLING_KWARGS,
    Prompt,
    WrapperChecks,
    call_params,
    check_call_kwargs,
    config_dict,
    model_name,
    start_stream,
    wrapper_engine,
)

#: Environment variable naming the model a wrapper uses when ``model`` is not given.
MODEL_ENV = "REATTN_LLM_MODEL"


def _env_model() -> str | None:
    return os.environ.get(MODEL_ENV) or None


def usage_metadata(c: Completion) -> UsageMetadata:
    """Input, output and total tokens of one answer, as LangChain reports them."""
    return UsageMetadata(
        input_tokens=c.prompt_tokens,
        output_tokens=c.completion_tokens,
        total_tokens=c.prompt_tokens + c.completion_tokens,
    )


class LazyProfile(dict):  # type: ignore[type-arg]
    """A ``ModelProfile`` whose ``max_input_tokens`` is computed on first read.

    The capacity needs the model's config (a file read, or a download for a Hub id), which a
    constructor must not do; the other keys are known up front. Key-only operations (``in``,
    iteration, ``len``) never compute.
    """

    _LAZY_KEY = "max_input_tokens"

    def __init__(self, static: Mapping[str, Any], compute: Callable[[], int]) -> None:
        super().__init__(static)
        self._compute: Callable[[], int] | None = compute

    def _fill(self) -> None:
        if self._compute is not None:
            compute, self._compute = self._compute, None
            super().__setitem__(self._LAZY_KEY, compute())

    def _keys(self) -> list[str]:
        keys = list(super().keys())
        return keys if self._compute is None else [self._LAZY_KEY, *keys]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def keys(self):  # type: ignore[override]
        return self._keys()

    def __getitem__(self, key: str) -> Any:
        if key == self._LAZY_KEY:
            self._fill()
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self else default

    def values(self):  # type: ignore[override]
        self._fill()
        return super().values()

    def items(self):  # type: ignore[override]
        self._fill()
        return super().items()

    def copy(self) -> dict[str, Any]:  # type: ignore[override]
        self._fill()
        return dict(super().items())

    def __eq__(self, other: object) -> bool:
        self._fill()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        self._fill()
        return super().__repr__()

    def __reduce__(self) -> Any:
        return (dict, (self.copy(),))


class ReAttentionBase(WrapperChecks):
    """Fields, engine plumbing and streaming shared by the LangChain LLM and chat model.

    A subclass says how an answer's text becomes a chunk (:meth:`_delta_chunk`) and what the last
    chunk carries (:meth:`_last_chunk`); :meth:`_chunks` and :meth:`_achunks` do the rest.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: Any = Field(default_factory=_env_model)
    """Hub id or local folder; None (default) is the embedded SmolLM2-135M-Instruct
    (or ``$REATTN_LLM_MODEL`` when set); or a transformers model you loaded (with ``tokenizer``),
    used on its device and dtype and patched in place on the first call."""
    tokenizer: Any = None
    """The tokenizer of a ``model`` you loaded (required then; unused for a model named by id)."""
    model_kwargs: dict[str, Any] | None = None
    """Extra ``from_pretrained`` arguments for a model named by id: ``revision``,
    ``quantization_config``, ``token``, ``trust_remote_code``... (``dtype`` here is the ``dtype`` field)."""
    device: str = "auto"
    """``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``..."""
    dtype: str = "auto"
    """``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"bfloat16"``, ``"float16"``, ``"float32"``."""
    device_map: str | dict[str, Any] | None = None
    """Split the layers across several GPUs (accelerate's ``"auto"``, ``"balanced"`` or a dict)."""
    config: ReAttentionConfig | None = None
    """ReAttention sizes (window, local_size, ...); None: the paper's, scaled to the model."""
    max_tokens: int = Field(default=256, ge=1, alias="max_new_tokens")
    """Most tokens to generate (alias ``max_new_tokens``)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 is greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    """0 is off."""
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    """Drop tokens less likely than ``min_p`` times the most likely one (0 is off; sampling only)."""
    typical_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Locally typical sampling mass (1.0 is off; sampling only)."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """transformers' repetition penalty over the prompt and the answer (1.0 is off; also when greedy)."""
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    """Never repeat an n-gram of this size from the prompt or the answer (0 is off; also when greedy)."""
    seed: int | None = None
    """Seed for sampling (temperature > 0); None: not reproducible."""
    stop: list[str] | None = None
    """Stop strings (not included in the answer); a call's ``stop`` replaces them."""
    cite: bool = False
    """Attach the pages / character ranges the answer drew on most to the result's metadata."""
    progress: bool = True
    """Show a prefill progress bar for long prompts (set by the first wrapper of an engine)."""
    input_cap: int | None = Field(default=None, ge=1, alias="max_input_tokens")
    """Refuse prompts longer than this many tokens (``ContextTooLongError``, before any prefill);
    set as ``max_input_tokens=``. None: the capacity of this device is the only limit."""

    _engines: dict[str | None, Engine] = PrivateAttr(default_factory=dict)

    # -- engine ----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model's name as reported on results."""
        return model_name(self)

    @property
    def engine(self) -> Engine:
        """The shared engine of this model (created on first use; weights load on first call)."""
        return self._engine_for(None)

    def _engine_for(self, model: str | None) -> Engine:
        """The wrapper's own engine (``model`` None) or that of a model named in a call."""
        engine = self._engines.get(model)
        if engine is None:
            engine = self._engines[model] = wrapper_engine(self, model)
        return engine

    def capacity(self) -> Capacity:
        """How many tokens (prompt + answer) this model holds on this device (no weights are loaded)."""
        return self.engine.capacity()

    @property
    def max_input_tokens(self) -> int:
        """The capacity in tokens, or the ``max_input_tokens=`` cap when lower: a longer input raises
        ContextTooLongError before any prefill."""
        capacity = self.capacity().max_tokens
        return capacity if self.input_cap is None else min(capacity, self.input_cap)

    def _input_cap(self, max_new_tokens: int) -> tuple[int | None, str]:
        """The most prompt tokens a call may send, and the setting that says so."""
        return self.input_cap, "max_input_tokens"

    def _profile(self) -> LazyProfile:
        """Capabilities, with ``max_input_tokens`` = this model's capacity on this device (computed
        on first read, without loading weights)."""
        static = {
            "name": self.model_name,
            "open_weights": True,
            "text_inputs": True,
            "image_inputs": False,
            "image_url_inputs": False,
            "pdf_inputs": False,
            "audio_inputs": False,
            "video_inputs": False,
            "text_outputs": True,
            "image_outputs": False,
            "audio_outputs": False,
            "video_outputs": False,
            "tool_calling": False,
            "tool_choice": False,
            "structured_output": False,
            "reasoning_output": False,
            "temperature": True,
        }
        return LazyProfile(static, lambda: self.max_input_tokens)

    # -- tokens ----------------------------------------------------------------------------------
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` under the model's own tokenizer (no chat template)."""
        return list(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model's own tokenizer (no chat template)."""
        return self.engine.count_tokens(text)

    # -- one call: one stream --------------------------------------------------------------------
    def _start(
        self, prompt: Prompt, stop: list[str] | None, kwargs: dict[str, Any], *, chat: bool
    ) -> tuple[Stream, bool]:
        """The engine stream of one call and its citation switch (call kwargs win over fields); the
        prompt is tokenized and checked now (:func:`start_stream`). The async entry points call
        this in a worker thread."""
        kwargs = {k: v for k, v in kwargs.items() if k != "stream"}
        check_call_kwargs(type(self).__name__, kwargs, SAMPLING_KWARGS | {"model", "stop"})
        params, cite = call_params(self, kwargs, stop)
        engine = self._engine_for(kwargs.get("model"))
        return start_stream(engine, prompt, params, chat=chat, cite=cite), cite

    def _delta_chunk(self, delta: str) -> Any:
        raise NotImplementedError

    def _last_chunk(self, completion: Completion, cite: bool) -> Any:
        raise NotImplementedError

    def _chunks(
        self, stream: Stream, cite: bool, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[Any]:
        """One chunk per text delta, then the last chunk with usage and metadata."""
        with stream:
            for delta in stream:
                chunk = self._delta_chunk(delta)
                if run_manager is not None:
                    run_manager.on_llm_new_token(delta, chunk=chunk)  # type: ignore[arg-type]
                yield chunk
        assert stream.completion is not None
        yield self._last_chunk(stream.completion, cite)

    async def _achunks(
        self, stream: Stream, cite: bool, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncIterator[Any]:
        """:meth:`_chunks` in a coroutine (the model runs in a worker thread)."""
        try:
            async for delta in stream:
                chunk = self._delta_chunk(delta)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(delta, chunk=chunk)  # type: ignore[arg-type]
                yield chunk
        finally:
            stream.close()
        assert stream.completion is not None
        yield self._last_chunk(stream.completion, cite)

    # -- reported parameters ---------------------------------------------------------------------
    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "device": self.device,
            "dtype": self.dtype,
            "config": config_dict(self.config),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "typical_p": self.typical_p,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "max_input_tokens": self.input_cap,
            "seed": self.seed,
            "cite": self.cite,
        }

    def _ls_params(self, kind: str, stop: list[str] | None, kwargs: dict[str, Any]) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="reattn_llm",
            ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name,
            ls_model_type=kind,  # type: ignore[typeddict-item]
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens)),
        )
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params
