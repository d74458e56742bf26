""":class:`ReAttentionLlamaLLM`: a local model that reads whole documents, as a LlamaIndex LLM."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import default_completion_to_prompt
from pydantic import ConfigDict, Field, PrivateAttr

from ...errors import ContextTooLongError
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
    completion_metadata,
    model_name,
    start_stream,
    token_usage,
    wrapper_engine,
)


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages -> ``[{"role", "content"}]`` for the model's chat template (text only)."""
    out = []
    for m in messages:
        parts = []
        for block in m.blocks:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, CachePoint | ThinkingBlock):
                continue
            else:
                raise ValueError(
                    f"ReAttentionLlamaLLM reads text only, but a {m.role.value} message holds a "
                    f"{type(block).__name__}; turn documents into text first (reattn_llm.load_document)."
                )
        out.append({"role": m.role.value, "content": "\n".join(parts)})
    if not out:
        raise ValueError("No messages: give the model something to read.")
    return out


class ReAttentionLlamaLLM(CustomLLM, WrapperChecks):
    """A local Hugging Face model that reads whole documents, as a LlamaIndex LLM.

    Shares its engine (and weights, loaded lazily on the first call) with every other wrapper
    of the same model, device, dtype and config. ``complete`` sends the prompt through the model's
    chat template as one user message (``chat_template=False``, a custom ``completion_to_prompt``
    or ``formatted=True`` send it as is); ``chat`` applies the template to the messages. Streaming
    responses carry the cumulative ``text`` and the ``delta``; the last one (empty delta) carries
    the usage and, with ``cite=True``, ``citations`` and ``cited_pages`` in ``additional_kwargs``.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: Any = Field(
        default=None,
        description="Hub id or local folder; None: the default; or a transformers model you loaded (with tokenizer=).",
    )
    tokenizer: Any = Field(default=None, description="The tokenizer of a model you loaded.")
    model_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="Extra from_pretrained arguments (revision, quantization_config, token, ...).",
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field(default="auto", description="'auto' (bf16 on CUDA, fp32 on CPU) or a dtype name.")
    device_map: str | dict[str, Any] | None = Field(
        default=None, description="Split the layers across GPUs: accelerate's 'auto', 'balanced' or a dict."
    )
    config: ReAttentionConfig | None = Field(default=None, description="ReAttention sizes; None: defaults.")
    max_tokens: int = Field(default=256, ge=1, alias="max_new_tokens", description="Most tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 is off.")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0, description="0 is off (sampling only).")
    typical_p: float = Field(default=1.0, gt=0.0, le=1.0, description="1.0 is off (sampling only).")
    repetition_penalty: float = Field(default=1.0, gt=0.0, description="1.0 is off; prompt and answer.")
    no_repeat_ngram_size: int = Field(default=0, ge=0, description="0 is off; prompt and answer.")
    seed: int | None = Field(default=None, description="Seed for sampling (temperature > 0).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the answer).")
    cite: bool = Field(default=False, description="Attach the pages the answer drew on most.")
    progress: bool = Field(default=True, description="Prefill progress bar for long prompts.")
    chat_template: bool = Field(default=True, description="complete(): wrap the prompt in the chat template.")
    context_window: int | None = Field(
        default=None,
        ge=1,
        description="Cap on prompt + answer tokens (metadata.context_window reports it); None: the capacity.",
    )

    _engine: Engine | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "ReAttentionLlamaLLM"

    # -- engine and sizes ------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The shared engine of this model (weights load on the first call)."""
        if self._engine is None:
            self._engine = wrapper_engine(self)
        return self._engine

    @property
    def model_name(self) -> str:
        return model_name(self)

    def capacity(self) -> Capacity:
        """How many tokens (prompt + answer) this model holds on this device (no weights loaded)."""
        return self.engine.capacity()

    @property
    def metadata(self) -> LLMMetadata:
        """``context_window`` is the capacity on this device (never clamped to the trained window),
        or the ``context_window=`` cap when lower."""
        capacity = self.capacity().max_tokens
        return LLMMetadata(
            context_window=capacity if self.context_window is None else min(capacity, self.context_window),
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    def _input_cap(self, max_new_tokens: int) -> tuple[int | None, str]:
        """The most prompt tokens a call may send: ``context_window`` less the answer's budget
        (LlamaIndex's meaning of a context window), and the setting that says so."""
        if self.context_window is None:
            return None, "context_window"
        room = self.context_window - max_new_tokens
        if room < 1:
            raise ContextTooLongError(
                f"context_window={self.context_window} leaves no room for a prompt beside max_tokens="
                f"{max_new_tokens}: raise context_window or lower max_tokens."
            )
        return room, f"context_window (less max_tokens={max_new_tokens})"

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model's own tokenizer (no chat template)."""
        return self.engine.count_tokens(text)

    # -- one call: one stream --------------------------------------------------------------------
    def _start(self, prompt: Prompt, chat: bool, kwargs: dict[str, Any]) -> tuple[Stream, bool]:
        """The engine stream of one call and its citation switch (call kwargs win over fields;
        ``question_start``: where the question begins, see :meth:`Engine.generate`); the prompt is
        tokenized and checked now (:func:`start_stream`), in a worker thread for the async calls."""
        check_call_kwargs("ReAttentionLlamaLLM", kwargs, SAMPLING_KWARGS | {"stop", "question_start"})
        params, cite = call_params(self, kwargs, kwargs.get("stop") or None)
        question = kwargs.get("question_start", "auto")
        return start_stream(self.engine, prompt, params, chat=chat, cite=cite, question_start=question), cite

    def _completion_prompt(self, prompt: str, formatted: bool) -> tuple[Prompt, bool]:
        """What the engine reads for ``complete(prompt)``, and whether to apply the chat template."""
        if formatted:
            return prompt, False
        if self.completion_to_prompt not in (None, default_completion_to_prompt):
            return self.completion_to_prompt(prompt), False
        if not self.chat_template:
            return prompt, False
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages, True

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        return message_dicts(self._extend_messages(list(messages)))

    @staticmethod
    def _final(c: Completion, cite: bool, delta: str | None = None) -> CompletionResponse:
        """The finished answer: its text, the :class:`Completion` as ``raw``, and in
        ``additional_kwargs`` its usage, model, finish reason, timings and citations."""
        info = {**completion_metadata(c, cite=cite), **token_usage(c)}
        return CompletionResponse(text=c.text, delta=delta, raw=c, additional_kwargs=info)

    def _responses(self, stream: Stream, cite: bool) -> CompletionResponseGen:
        """One response per text delta (cumulative ``text``), then the finished answer."""
        text = ""
        with stream:
            for delta in stream:
                text += delta
                yield CompletionResponse(text=text, delta=delta)
        assert stream.completion is not None
        yield self._final(stream.completion, cite, delta="")

    async def _aresponses(self, stream: Stream, cite: bool) -> CompletionResponseAsyncGen:
        """:meth:`_responses` in a coroutine (the model runs in a worker thread)."""
        text = ""
        try:
            async for delta in stream:
                text += delta
                yield CompletionResponse(text=text, delta=delta)
        finally:
            stream.close()
        assert stream.completion is not None
        yield self._final(stream.completion, cite, delta="")

    @staticmethod
    def _to_chat(response: CompletionResponse) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
            delta=response.delta,
            raw=response.raw,
            additional_kwargs=response.additional_kwargs,
        )

    # -- completion ------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        stream, cite = self._start(*self._completion_prompt(prompt, formatted), kwargs)
        return self._final(stream.complete(), cite)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._responses(*self._start(*self._completion_prompt(prompt, formatted), kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        stream, cite = await asyncio.to_thread(
            self._start, *self._completion_prompt(prompt, formatted), kwargs
        )
        return self._final(await stream.acomplete(), cite)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        start = await asyncio.to_thread(self._start, *self._completion_prompt(prompt, formatted), kwargs)
        return self._aresponses(*start)

    # -- chat ------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        stream, cite = self._start(self._chat_prompt(messages), True, kwargs)
        return self._to_chat(self._final(stream.complete(), cite))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        responses = self._responses(*self._start(self._chat_prompt(messages), True, kwargs))
        return (self._to_chat(r) for r in responses)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        stream, cite = await asyncio.to_thread(self._start, self._chat_prompt(messages), True, kwargs)
        return self._to_chat(self._final(await stream.acomplete(), cite))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        start = await asyncio.to_thread(self._start, self._chat_prompt(messages), True, kwargs)
        responses = self._aresponses(*start)

        async def gen() -> ChatResponseAsyncGen:
            try:
                async for r in responses:
                    yield self._to_chat(r)
            finally:
                await responses.aclose()

        return gen()

    # -- structured output: LlamaIndex's text-completion program, decoding under the schema -------
    def structured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """LlamaIndex's ``structured_predict`` (its ``LLMTextCompletionProgram``, which also puts
        the schema in the prompt), decoding constrained to ``output_cls``'s JSON schema
        (:mod:`~reattn_llm.runtime.structured`). ``as_structured_llm`` goes through here too."""
        return super().structured_predict(
            output_cls, prompt, constrained(output_cls, llm_kwargs), **prompt_args
        )

    async def astructured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        """:meth:`structured_predict`, async."""
        kw = constrained(output_cls, llm_kwargs)
        return await super().astructured_predict(output_cls, prompt, kw, **prompt_args)

    def _structured_stream_call(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        kw = constrained(output_cls, llm_kwargs)
        return super()._structured_stream_call(output_cls, prompt, kw, **prompt_args)

    async def _structured_astream_call(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        kw = constrained(output_cls, llm_kwargs)
        return await super()._structured_astream_call(output_cls, prompt, kw, **prompt_args)


def constrained(output_cls: Any, llm_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``llm_kwargs`` with a ``response_format`` for ``output_cls`` (a pydantic class), unless the
    caller gave one."""
    kw = dict(llm_kwargs or {})
    kw.setdefault(
        "response_format",
        {
            "type": "json_schema",
            "json_schema": {"name": output_cls.__name__, "schema": output_cls.model_json_schema()},
        },
    )
    return kw
