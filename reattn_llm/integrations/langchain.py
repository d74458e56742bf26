"""LangChain integration: :class:`ReAttentionLLM` (a runnable LLM) and :class:`ChatReAttention` (chat).

Both wrap one shared :class:`~reattn_llm.engine.Engine` per (model, device, dtype, config): every
wrapper of the same model uses the same weights, loaded lazily on the first call, so
constructing a wrapper is cheap. They stream with no fixed timeout (a prefill of a whole book may
take minutes), honour stop strings, report token usage and the model name on the result (on
exactly one streamed chunk, the last), count tokens with the model's own tokenizer, refuse inputs
larger than the model's capacity before any prefill (:class:`~reattn_llm.errors.ContextTooLongError`)
and, with ``cite=True``, attach the pages the answer drew on most (``citations`` and
``cited_pages`` in ``response_metadata`` / ``generation_info``).

The async methods run the engine in a worker thread and pass text through an asyncio queue, so the
event loop never blocks; cancelling an async call stops the engine at its next prefill chunk or
token and frees it for the next request.

The helpers prefixed with ``_`` are shared with the LlamaIndex adapter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, BaseLLM, LangSmithParams, ModelProfile
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
    LLMResult,
)
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from ..method.config import ReAttentionConfig
from ..runtime.capacity import Capacity
from ..runtime.citations import cited_pages
from ..runtime.engine import Completion, Engine, SamplingParams
from ..runtime.models import DEFAULT_MODEL, is_default

__all__ = ["ChatReAttention", "ReAttentionLLM"]

#: Environment variable naming the model a wrapper uses when ``model`` is not given.
MODEL_ENV = "REATTN_LLM_MODEL"

Prompt = str | list[dict[str, str]]

# Per-call keyword arguments the wrappers accept (``invoke(..., temperature=0.7)``, ``bind(...)``).
_CALL_KWARGS = frozenset(
    {"model", "max_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "cite"}
)


def _env_model() -> str | None:
    return os.environ.get(MODEL_ENV) or None


# ---------------------------------------------------------------------------------------------
# Shared helpers (also used by the LlamaIndex adapter)
# ---------------------------------------------------------------------------------------------


def _coerce_config(value: Any) -> ReAttentionConfig | None:
    """Accept a :class:`ReAttentionConfig`, a dict of its fields (as serialized), or None."""
    if value is None or isinstance(value, ReAttentionConfig):
        return value
    if isinstance(value, Mapping):
        return ReAttentionConfig(**value)
    raise TypeError(f"config must be a ReAttentionConfig or a dict of its fields, not {type(value).__name__}")


def _config_dict(config: ReAttentionConfig | None) -> dict[str, Any] | None:
    """The fields of ``config`` that differ from the defaults (JSON-friendly), or None."""
    if config is None:
        return None
    default = ReAttentionConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def _usage(c: Completion) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=c.prompt_tokens,
        output_tokens=c.completion_tokens,
        total_tokens=c.prompt_tokens + c.completion_tokens,
    )


def _completion_metadata(c: Completion, *, cite: bool) -> dict[str, Any]:
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


def _drain(gen: Iterator[str], on_delta: Callable[[str], None] | None = None) -> Completion:
    """Run an engine generator to its end and return its :class:`Completion` (closing it on error)."""
    try:
        while True:
            try:
                delta = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_delta is not None:
                on_delta(delta)
    finally:
        gen.close()


class _Cancelled(Exception):
    """Raised inside the worker thread to abandon a request whose caller went away."""


async def _aiter_engine(
    engine: Engine, prompt: Prompt, params: SamplingParams, *, chat: bool, cite: bool
) -> AsyncIterator[str | Completion]:
    """Yield the answer's text deltas, then its :class:`Completion`, without blocking the event loop.

    The engine's (synchronous) generator runs in a worker thread; deltas come back through an
    asyncio queue. If the consumer stops early (``break``, ``aclose()``, task cancellation) the
    worker abandons the request at the next prefill chunk or token, which closes the generator
    and frees the engine for the next request. No timeout anywhere: a long prefill just takes long.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    def check_cancel(done: int, total: int, elapsed: float) -> None:
        if cancel.is_set():
            raise _Cancelled

    def work() -> None:
        gen = engine.generate(prompt, params, chat=chat, cite_sources=cite, on_progress=check_cancel)
        try:
            while not cancel.is_set():
                try:
                    delta = next(gen)
                except StopIteration as stop:
                    put("done", stop.value)
                    return
                put("delta", delta)
        except _Cancelled:
            pass
        except BaseException as error:  # handed to the awaiting coroutine, re-raised there
            put("error", error)
        finally:
            gen.close()

    worker = threading.Thread(target=work, name="reattn-generate", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "delta":
                yield value
            elif kind == "done":
                yield value
                return
            else:
                raise value
    finally:
        cancel.set()


async def _acomplete(
    engine: Engine,
    prompt: Prompt,
    params: SamplingParams,
    *,
    chat: bool,
    cite: bool,
    on_delta: Callable[[str], Any] | None = None,
) -> Completion:
    """Async :meth:`Engine.complete` that never blocks the loop (``on_delta`` may be async)."""
    stream = _aiter_engine(engine, prompt, params, chat=chat, cite=cite)
    try:
        async for item in stream:
            if isinstance(item, Completion):
                return item
            if on_delta is not None:
                result = on_delta(item)
                if asyncio.iscoroutine(result):
                    await result
    finally:
        await stream.aclose()
    raise RuntimeError("The engine stopped without a completion.")  # pragma: no cover


def _message_text(message: BaseMessage) -> str:
    """The text of a message; non-text content (images, audio, files) is refused clearly."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("reasoning", "thinking"):
            continue
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(
                f"ChatReAttention reads text only, but a {type(message).__name__} holds a {kind!r} block; "
                "turn documents into text first (reattn_llm.load_document)."
            )
    return "".join(parts)


def _to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> ``[{"role", "content"}]`` for the model's chat template."""
    out = []
    for m in messages:
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, HumanMessage):
            role = "user"
        elif isinstance(m, AIMessage):
            role = "assistant"
        elif isinstance(m, ToolMessage | FunctionMessage):
            role = "tool"
        elif isinstance(m, ChatMessage):
            role = m.role
        else:
            raise ValueError(f"Unsupported message type {type(m).__name__}.")
        out.append({"role": role, "content": _message_text(m)})
    if not out:
        raise ValueError("No messages: give the model something to read.")
    return out


class _LazyProfile(dict):  # type: ignore[type-arg]
    """A :class:`ModelProfile` whose ``max_input_tokens`` is computed on first read.

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


# ---------------------------------------------------------------------------------------------
# The fields and engine access both wrappers share
# ---------------------------------------------------------------------------------------------


class _ReAttentionParams(BaseModel):
    """Fields and engine plumbing shared by :class:`ReAttentionLLM` and :class:`ChatReAttention`."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str | None = Field(default_factory=_env_model)
    """Hub id or local folder; None (default) is the embedded SmolLM2-135M-Instruct
    (or ``$REATTN_LLM_MODEL`` when set)."""
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
    seed: int | None = None
    """Seed for sampling (temperature > 0); None: not reproducible."""
    stop: list[str] | None = None
    """Stop strings (not included in the answer); a call's ``stop`` replaces them."""
    cite: bool = False
    """Attach the pages / character ranges the answer drew on most to the result's metadata."""
    progress: bool = True
    """Show a prefill progress bar for long prompts (set by the first wrapper of an engine)."""

    _engines: dict[str | None, Engine] = PrivateAttr(default_factory=dict)

    @field_validator("config", mode="before")
    @classmethod
    def _check_config(cls, value: Any) -> ReAttentionConfig | None:
        return _coerce_config(value)

    # -- engine ----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model's name as reported on results."""
        return DEFAULT_MODEL if is_default(self.model) else str(self.model)

    @property
    def engine(self) -> Engine:
        """The shared engine of this model (created on first use; weights load on first call)."""
        return self._engine_for(None)

    def _engine_for(self, model: str | None) -> Engine:
        name = self.model if model is None else model
        engine = self._engines.get(name)
        if engine is None:
            engine = Engine.shared_for(name, self)
            self._engines[name] = engine
        return engine

    def capacity(self) -> Capacity:
        """How many tokens (prompt + answer) this model holds on this device (no weights are loaded)."""
        return self.engine.capacity()

    @property
    def max_input_tokens(self) -> int:
        """The capacity in tokens: a longer input raises ContextTooLongError before any prefill."""
        return self.capacity().max_tokens

    def _profile_static(self) -> dict[str, Any]:
        return {
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

    # -- tokens ----------------------------------------------------------------------------------
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` under the model's own tokenizer (no chat template)."""
        return list(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model's own tokenizer (no chat template)."""
        return self.engine.count_tokens(text)

    # -- per call --------------------------------------------------------------------------------
    def _call_setup(
        self, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Engine, SamplingParams, bool]:
        """The engine, sampling parameters and citation switch for one call (call kwargs win)."""
        kwargs = {k: v for k, v in kwargs.items() if k != "stream"}
        unknown = set(kwargs) - _CALL_KWARGS
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s) {sorted(unknown)}; "
                f"it accepts {sorted(_CALL_KWARGS | {'stop'})}."
            )
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            top_k=kwargs.get("top_k", self.top_k),
            seed=kwargs.get("seed", self.seed),
            stop=list(stop if stop is not None else (self.stop or [])),
        )
        return self._engine_for(kwargs.get("model")), params, bool(kwargs.get("cite", self.cite))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "device": self.device,
            "dtype": self.dtype,
            "config": _config_dict(self.config),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
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


# ---------------------------------------------------------------------------------------------
# ReAttentionLLM
# ---------------------------------------------------------------------------------------------


class ReAttentionLLM(_ReAttentionParams, BaseLLM):
    """A local Hugging Face model that reads whole documents, as a LangChain LLM (string in, string out).

    Example:
        ```python
        from reattn_llm import ReAttentionLLM, load_document

        llm = ReAttentionLLM()                      # embedded default model; loads on first call
        doc = load_document("book.pdf")
        print(llm.invoke(f"{doc}\\n\\nWho wrote the foreword?"))
        chain = prompt | llm | StrOutputParser()   # LCEL
        ```

    The prompt is sent as one user message through the model's chat template (``chat_template=False``
    sends it raw, for plain continuation). ``generation_info`` of each generation holds
    ``model_name``, ``finish_reason``, ``usage`` and, with ``cite=True``, ``citations`` and
    ``cited_pages``; ``llm_output["token_usage"]`` sums the usage of a batch.
    """

    chat_template: bool = True
    """Wrap the prompt in the model's chat template as one user message (False: raw text)."""

    @property
    def _llm_type(self) -> str:
        return "reattention"

    @property
    def profile(self) -> ModelProfile:
        """Capabilities, with ``max_input_tokens`` = this model's capacity on this device."""
        return _LazyProfile(self._profile_static(), lambda: self.capacity().max_tokens)  # type: ignore[return-value]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("llm", stop, kwargs)

    def _generation(self, c: Completion, cite: bool) -> Generation:
        info = _completion_metadata(c, cite=cite)
        info["usage"] = dict(_usage(c))
        return Generation(text=c.text, generation_info=info)

    @staticmethod
    def _result(generations: list[Generation], completions: list[Completion]) -> LLMResult:
        usage = {
            "prompt_tokens": sum(c.prompt_tokens for c in completions),
            "completion_tokens": sum(c.completion_tokens for c in completions),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        name = completions[0].model_name if completions else None
        return LLMResult(
            generations=[[g] for g in generations], llm_output={"token_usage": usage, "model_name": name}
        )

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        engine, params, cite = self._call_setup(stop, kwargs)
        completions = [
            _drain(engine.generate(p, params, chat=self.chat_template, cite_sources=cite)) for p in prompts
        ]
        return self._result([self._generation(c, cite) for c in completions], completions)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        engine, params, cite = self._call_setup(stop, kwargs)
        completions = [
            await _acomplete(engine, p, params, chat=self.chat_template, cite=cite) for p in prompts
        ]
        return self._result([self._generation(c, cite) for c in completions], completions)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        engine, params, cite = self._call_setup(stop, kwargs)
        gen = engine.generate(prompt, params, chat=self.chat_template, cite_sources=cite)
        try:
            while True:
                try:
                    delta = next(gen)
                except StopIteration as done:
                    completion: Completion = done.value
                    break
                chunk = GenerationChunk(text=delta)
                if run_manager is not None:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
        finally:
            gen.close()
        final = self._generation(completion, cite)
        yield GenerationChunk(text="", generation_info=final.generation_info)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        engine, params, cite = self._call_setup(stop, kwargs)
        stream = _aiter_engine(engine, prompt, params, chat=self.chat_template, cite=cite)
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    final = self._generation(item, cite)
                    yield GenerationChunk(text="", generation_info=final.generation_info)
                    return
                chunk = GenerationChunk(text=item)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
        finally:
            await stream.aclose()


# ---------------------------------------------------------------------------------------------
# ChatReAttention
# ---------------------------------------------------------------------------------------------


class ChatReAttention(_ReAttentionParams, BaseChatModel):
    """A local Hugging Face model that reads whole documents, as a LangChain chat model.

    Messages go through the model's own chat template; the answer holds only the new tokens.
    ``usage_metadata`` (input/output/total tokens) and ``response_metadata`` (``model_name``,
    ``finish_reason``, timings and, with ``cite=True``, ``citations`` and ``cited_pages``) are set
    on ``invoke`` results and on the last streamed chunk only. ``profile["max_input_tokens"]`` is
    the capacity of this model on this device, computed on first read without loading weights.
    A call may name another model (``invoke(..., model="path/or/hub-id")``): it gets that model's
    shared engine. Text only: tool calling, structured output and images are not supported.

    Example:
        ```python
        from reattn_llm import ChatReAttention, load_document

        chat = ChatReAttention(cite=True)
        doc = load_document("book.pdf")
        answer = chat.invoke([("system", "Answer from the document."), ("human", f"{doc}\\n\\nWho is Emma?")])
        answer.response_metadata["cited_pages"]
        ```
    """

    streaming: bool = False
    """Stream internally on ``invoke`` (for streaming callbacks)."""

    @property
    def _llm_type(self) -> str:
        return "chat-reattention"

    def _resolve_model_profile(self) -> ModelProfile | None:
        return _LazyProfile(self._profile_static(), lambda: self.capacity().max_tokens)  # type: ignore[return-value]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("chat", stop, kwargs)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the messages as the model sees them (chat template and generation prompt included)."""
        if tools:
            raise ValueError("ChatReAttention does not support tools.")
        ids, _ = self.engine.encode(_to_chat_messages(messages))
        return len(ids)

    @staticmethod
    def _message(c: Completion, cite: bool) -> AIMessage:
        return AIMessage(
            content=c.text, usage_metadata=_usage(c), response_metadata=_completion_metadata(c, cite=cite)
        )

    @staticmethod
    def _last_chunk(c: Completion, cite: bool) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(c),
                response_metadata=_completion_metadata(c, cite=cite),
                chunk_position="last",
            )
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        engine, params, cite = self._call_setup(stop, kwargs)
        c = _drain(engine.generate(_to_chat_messages(messages), params, chat=True, cite_sources=cite))
        return ChatResult(
            generations=[ChatGeneration(message=self._message(c, cite))],
            llm_output={"model_name": c.model_name, "token_usage": dict(_usage(c))},
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        engine, params, cite = self._call_setup(stop, kwargs)
        c = await _acomplete(engine, _to_chat_messages(messages), params, chat=True, cite=cite)
        return ChatResult(
            generations=[ChatGeneration(message=self._message(c, cite))],
            llm_output={"model_name": c.model_name, "token_usage": dict(_usage(c))},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        engine, params, cite = self._call_setup(stop, kwargs)
        gen = engine.generate(_to_chat_messages(messages), params, chat=True, cite_sources=cite)
        try:
            while True:
                try:
                    delta = next(gen)
                except StopIteration as done:
                    completion: Completion = done.value
                    break
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager is not None:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
        finally:
            gen.close()
        yield self._last_chunk(completion, cite)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        engine, params, cite = self._call_setup(stop, kwargs)
        stream = _aiter_engine(engine, _to_chat_messages(messages), params, chat=True, cite=cite)
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    yield self._last_chunk(item, cite)
                    return
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
        finally:
            await stream.aclose()
