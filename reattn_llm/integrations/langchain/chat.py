""":class:`ChatReAttention`: a local model that reads whole documents, as a LangChain chat model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, ModelProfile
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
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable

from ...runtime.stream import Completion
from .._common import completion_metadata
from ._base import ReAttentionBase, usage_metadata
from .structured import structured_runnable


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


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
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


class ChatReAttention(ReAttentionBase, BaseChatModel):
    """A local Hugging Face model that reads whole documents, as a LangChain chat model.

    Messages go through the model's own chat template; the answer holds only the new tokens.
    ``usage_metadata`` (input/output/total tokens) and ``response_metadata`` (``model_name``,
    ``finish_reason``, timings and, with ``cite=True``, ``citations`` and ``cited_pages``) are set
    on ``invoke`` results and on the last streamed chunk only. ``profile["max_input_tokens"]`` is
    the capacity of this model on this device, computed on first read without loading weights.
    A call may name another model (``invoke(..., model="path/or/hub-id")``): it gets that model's
    shared engine. :meth:`with_structured_output` decodes under a JSON schema (the
    ``[structured]`` extra). Text only: tool calling and images are not supported.

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
        return self._profile()  # type: ignore[return-value]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("chat", stop, kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: str = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable:
        """This model, returning objects that follow ``schema`` (a pydantic class, a TypedDict or
        a JSON-schema dict): decoding is constrained to JSON matching it (``method="json_schema"``,
        the default, since the model has no tool calling) or to any JSON object
        (``method="json_mode"``), then parsed (a pydantic instance for a pydantic class, a dict
        otherwise). ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``. Keep
        ``max_tokens`` large enough for the whole object (bound string lengths with ``maxLength``):
        an answer cut off by the budget is not valid JSON."""
        return structured_runnable(self, schema, method, include_raw, dict(kwargs))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the messages as the model sees them (chat template and generation prompt included)."""
        if tools:
            raise ValueError("ChatReAttention does not support tools.")
        ids, _ = self.engine.encode(to_chat_messages(messages))
        return len(ids)

    # -- from the engine's stream to LangChain's types ------------------------------------------
    def _delta_chunk(self, delta: str) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(content=delta))

    def _last_chunk(self, completion: Completion, cite: bool) -> ChatGenerationChunk:
        message = AIMessageChunk(
            content="",
            usage_metadata=usage_metadata(completion),
            response_metadata=completion_metadata(completion, cite=cite),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)

    @staticmethod
    def _result(c: Completion, cite: bool) -> ChatResult:
        message = AIMessage(
            content=c.text,
            usage_metadata=usage_metadata(c),
            response_metadata=completion_metadata(c, cite=cite),
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)],
            llm_output={"model_name": c.model_name, "token_usage": dict(usage_metadata(c))},
        )

    # -- LangChain's four entry points, each on one engine stream ---------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stream, cite = self._start(to_chat_messages(messages), stop, kwargs, chat=True)
        return self._result(stream.complete(), cite)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stream, cite = await asyncio.to_thread(
            self._start, to_chat_messages(messages), stop, kwargs, chat=True
        )
        return self._result(await stream.acomplete(), cite)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks(
            *self._start(to_chat_messages(messages), stop, kwargs, chat=True), run_manager
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        stream, cite = await asyncio.to_thread(
            self._start, to_chat_messages(messages), stop, kwargs, chat=True
        )
        async for chunk in self._achunks(stream, cite, run_manager):
            yield chunk
