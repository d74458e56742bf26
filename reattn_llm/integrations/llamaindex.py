"""LlamaIndex integration (optional extra): an LLM adapter and a whole-document query engine.

* :class:`ReAttentionLlamaLLM` is a LlamaIndex ``CustomLLM`` over the same shared
  :class:`~reattn_llm.engine.Engine` as the LangChain wrappers (one model in memory). Its
  ``metadata.context_window`` is the model's capacity on this device (KV bytes per token against
  free memory), not the trained window: ReAttention reads far past it.
* :class:`WholeDocumentQueryEngine` answers a question over a whole document in exactly one LLM
  call: no node splitting, no retrieval, no refine loop, and no silent truncation (a document
  that does not fit raises :class:`~reattn_llm.errors.ContextTooLongError` before any prefill).

This module imports llama-index at its top; ``reattn_llm.integrations`` never imports it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
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
    from llama_index.core.base.response.schema import Response
    from llama_index.core.llms import CustomLLM
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.llm import default_completion_to_prompt
    from llama_index.core.query_engine import CustomQueryEngine
    from llama_index.core.schema import Document as LlamaDocument
    from llama_index.core.schema import NodeWithScore, TextNode
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'The LlamaIndex integration needs llama-index-core: pip install "reattn-llm[llamaindex]"'
    ) from error

from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from ..documents import Document, load_document, load_documents
from ..method.config import ReAttentionConfig
from ..runtime.capacity import Capacity
from ..runtime.citations import Citation
from ..runtime.engine import Completion, Engine, SamplingParams
from ..runtime.models import DEFAULT_MODEL, is_default
from .langchain import _acomplete, _aiter_engine, _coerce_config, _completion_metadata, _drain

__all__ = ["DEFAULT_QA_TEMPLATE", "ReAttentionLlamaLLM", "WholeDocumentQueryEngine"]

Prompt = str | list[dict[str, str]]


def _message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
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


def _response_kwargs(c: Completion, cite: bool) -> dict[str, Any]:
    """``additional_kwargs`` of a finished answer: usage, model, finish reason, timings, citations."""
    return {
        **_completion_metadata(c, cite=cite),
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


class ReAttentionLlamaLLM(CustomLLM):
    """A local Hugging Face model that reads whole documents, as a LlamaIndex LLM.

    Shares its engine (and weights, loaded lazily on the first call) with every other wrapper
    of the same model, device, dtype and config. ``complete`` sends the prompt through the model's
    chat template as one user message (``chat_template=False``, a custom ``completion_to_prompt``
    or ``formatted=True`` send it as is); ``chat`` applies the template to the messages. Streaming
    responses carry the cumulative ``text`` and the ``delta``; the last one (empty delta) carries
    the usage and, with ``cite=True``, ``citations`` and ``cited_pages`` in ``additional_kwargs``.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str | None = Field(default=None, description="Hub id or local folder; None: the default.")
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
    seed: int | None = Field(default=None, description="Seed for sampling (temperature > 0).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the answer).")
    cite: bool = Field(default=False, description="Attach the pages the answer drew on most.")
    progress: bool = Field(default=True, description="Prefill progress bar for long prompts.")
    chat_template: bool = Field(default=True, description="complete(): wrap the prompt in the chat template.")

    _engine: Engine | None = PrivateAttr(default=None)

    @field_validator("config", mode="before")
    @classmethod
    def _check_config(cls, value: Any) -> ReAttentionConfig | None:
        return _coerce_config(value)

    @classmethod
    def class_name(cls) -> str:
        return "ReAttentionLlamaLLM"

    # -- engine and sizes ------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The shared engine of this model (weights load on the first call)."""
        if self._engine is None:
            self._engine = Engine.shared_for(self.model, self)
        return self._engine

    @property
    def model_name(self) -> str:
        return DEFAULT_MODEL if is_default(self.model) else str(self.model)

    def capacity(self) -> Capacity:
        """How many tokens (prompt + answer) this model holds on this device (no weights loaded)."""
        return self.engine.capacity()

    @property
    def metadata(self) -> LLMMetadata:
        """``context_window`` is the capacity on this device, never clamped to the trained window."""
        return LLMMetadata(
            context_window=self.capacity().max_tokens,
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model's own tokenizer (no chat template)."""
        return self.engine.count_tokens(text)

    # -- per call --------------------------------------------------------------------------------
    def _params(self, kwargs: dict[str, Any]) -> tuple[SamplingParams, bool]:
        allowed = {"max_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "cite"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(
                f"ReAttentionLlamaLLM got unexpected keyword argument(s) {sorted(unknown)}; "
                f"it accepts {sorted(allowed)}."
            )
        params = SamplingParams(
            max_new_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens)),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            top_k=kwargs.get("top_k", self.top_k),
            seed=kwargs.get("seed", self.seed),
            stop=list(kwargs.get("stop") or self.stop),
        )
        return params, bool(kwargs.get("cite", self.cite))

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
        return _message_dicts(self._extend_messages(list(messages)))

    def _stream_completion(self, prompt: Prompt, chat: bool, kwargs: dict[str, Any]) -> CompletionResponseGen:
        params, cite = self._params(kwargs)
        gen = self.engine.generate(prompt, params, chat=chat, cite_sources=cite)
        text = ""
        try:
            while True:
                try:
                    delta = next(gen)
                except StopIteration as done:
                    completion: Completion = done.value
                    break
                text += delta
                yield CompletionResponse(text=text, delta=delta)
        finally:
            gen.close()
        yield CompletionResponse(
            text=completion.text,
            delta="",
            raw=completion,
            additional_kwargs=_response_kwargs(completion, cite),
        )

    async def _astream_completion(
        self, prompt: Prompt, chat: bool, kwargs: dict[str, Any]
    ) -> CompletionResponseAsyncGen:
        params, cite = self._params(kwargs)
        stream = _aiter_engine(self.engine, prompt, params, chat=chat, cite=cite)
        text = ""
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    yield CompletionResponse(
                        text=item.text, delta="", raw=item, additional_kwargs=_response_kwargs(item, cite)
                    )
                    return
                text += item
                yield CompletionResponse(text=text, delta=item)
        finally:
            await stream.aclose()

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
        engine_prompt, chat = self._completion_prompt(prompt, formatted)
        params, cite = self._params(kwargs)
        c = _drain(self.engine.generate(engine_prompt, params, chat=chat, cite_sources=cite))
        return CompletionResponse(text=c.text, raw=c, additional_kwargs=_response_kwargs(c, cite))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        engine_prompt, chat = self._completion_prompt(prompt, formatted)
        return self._stream_completion(engine_prompt, chat, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        engine_prompt, chat = self._completion_prompt(prompt, formatted)
        params, cite = self._params(kwargs)
        c = await _acomplete(self.engine, engine_prompt, params, chat=chat, cite=cite)
        return CompletionResponse(text=c.text, raw=c, additional_kwargs=_response_kwargs(c, cite))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        engine_prompt, chat = self._completion_prompt(prompt, formatted)
        return self._astream_completion(engine_prompt, chat, kwargs)

    # -- chat ------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        params, cite = self._params(kwargs)
        c = _drain(self.engine.generate(self._chat_prompt(messages), params, chat=True, cite_sources=cite))
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=c.text),
            raw=c,
            additional_kwargs=_response_kwargs(c, cite),
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        stream = self._stream_completion(self._chat_prompt(messages), True, kwargs)
        return (self._to_chat(r) for r in stream)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        params, cite = self._params(kwargs)
        c = await _acomplete(self.engine, self._chat_prompt(messages), params, chat=True, cite=cite)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=c.text),
            raw=c,
            additional_kwargs=_response_kwargs(c, cite),
        )

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        stream = self._astream_completion(self._chat_prompt(messages), True, kwargs)

        async def gen() -> ChatResponseAsyncGen:
            try:
                async for r in stream:
                    yield self._to_chat(r)
            finally:
                await stream.aclose()

        return gen()


# ---------------------------------------------------------------------------------------------
# Whole-document question answering
# ---------------------------------------------------------------------------------------------

#: The default question-answering prompt: ``{context}`` is the whole document, ``{query}`` the question.
DEFAULT_QA_TEMPLATE = (
    "Read the whole document below and answer the question that follows it.\n\n"
    "{context}\n\n"
    "Question: {query}\n"
    "Answer from the document."
)

_PLACEHOLDER = re.compile(r"\{(context|query)\}")

Documents = (
    str
    | os.PathLike[str]
    | Document
    | LlamaDocument
    | Sequence[str | os.PathLike[str] | Document | LlamaDocument]
)


def _render_llama_documents(docs: Sequence[LlamaDocument]) -> str:
    """Join LlamaIndex documents into one text with ``[Page N]`` anchors and ``=== file ===`` headers.

    A document from :func:`reattn_llm.load_document` (or ``ReAttentionReader``) that holds a whole
    file already has its anchors; per-page documents (``metadata["page"]``) get one each; several
    files get a header line each, as :func:`reattn_llm.load_documents` writes them.
    """
    sources = [str(d.metadata.get("source") or d.metadata.get("file_name") or "") for d in docs]
    several = len({s for s in sources if s}) > 1
    parts: list[str] = []
    current = None
    for doc, source in zip(docs, sources, strict=True):
        if several and source and source != current:
            parts.append(f"=== {Path(source).name} ===")
            current = source
        page = doc.metadata.get("page")
        text = doc.get_content()
        parts.append(f"[Page {page}]\n{text}" if page is not None and "[Page " not in text[:32] else text)
    return "\n\n".join(parts)


def _document_text(documents: Documents) -> tuple[str, str | None]:
    """The whole text to read, and its source name, from paths / loaded documents / LlamaIndex documents."""
    if isinstance(documents, str | os.PathLike):
        doc = load_document(documents)
        return doc.text, doc.source
    if isinstance(documents, Document):
        return documents.text, documents.source
    if isinstance(documents, LlamaDocument):
        documents = [documents]
    items = list(documents)
    if not items:
        raise ValueError("No documents given: pass a path, a loaded Document, or LlamaIndex documents.")
    if all(isinstance(d, str | os.PathLike) for d in items):
        doc = load_documents(items) if len(items) > 1 else load_document(items[0])
        return doc.text, doc.source
    if all(isinstance(d, LlamaDocument) for d in items):
        return _render_llama_documents(items), None
    if all(isinstance(d, Document) for d in items):
        if len(items) == 1:
            return items[0].text, items[0].source
        return "\n\n".join(f"=== {Path(d.source).name} ===\n{d.text}" for d in items), None
    raise TypeError("Pass documents of one kind: paths, reattn_llm Documents, or LlamaIndex Documents.")


class WholeDocumentQueryEngine(CustomQueryEngine):
    """Answer questions over a whole document in one LLM call: no chunks, no retrieval, no refine.

    The document's entire text (with its ``[Page N]`` anchors) and the question go into one prompt
    (``prompt_template`` with ``{context}`` and ``{query}``), read by ReAttention in one pass. A
    document larger than the model's capacity raises
    :class:`~reattn_llm.errors.ContextTooLongError` before any prefill; nothing is ever truncated.
    The :class:`Response` carries ``metadata`` (``model_name``, token counts, ``finish_reason``,
    ``cited_pages``, ``citations``) and, with citations on, one source node per cited range (its
    page, source file and character range within the document).

    Example:
        ```python
        engine = WholeDocumentQueryEngine("book.pdf")             # the default model, citations on
        response = engine.query("Who wrote the foreword?")
        print(response, response.metadata["cited_pages"])
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: ReAttentionLlamaLLM = Field(default_factory=lambda: ReAttentionLlamaLLM(cite=True))
    text: str = Field(description="The whole document text, page anchors included.")
    source: str | None = Field(default=None, description="The document's file, if it came from one.")
    prompt_template: str = Field(default=DEFAULT_QA_TEMPLATE, description="With {context} and {query}.")
    system_prompt: str | None = Field(default=None, description="Optional system message.")
    cite: bool | None = Field(default=None, description="Citations on/off; None: the LLM's own setting.")

    def __init__(
        self,
        documents: Documents | None = None,
        llm: ReAttentionLlamaLLM | None = None,
        **data: Any,
    ) -> None:
        """Args:
        documents: a path (PDF or text), several paths, a :class:`reattn_llm.Document`, or
            LlamaIndex documents (e.g. from ``ReAttentionReader``). Bad files raise their
            :class:`~reattn_llm.errors.DocumentError` here, before any model work.
        llm: the :class:`ReAttentionLlamaLLM` to ask; default: the embedded model with citations on.
        """
        if documents is not None:
            data["text"], data["source"] = _document_text(documents)
        if llm is not None:
            data["llm"] = llm
        super().__init__(**data)

    @field_validator("prompt_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        found = set(_PLACEHOLDER.findall(value))
        if found != {"context", "query"}:
            raise ValueError("prompt_template needs both {context} (the document) and {query} (the question)")
        return value

    @field_validator("text")
    @classmethod
    def _check_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("The document has no text.")
        return value

    # -- the one call ----------------------------------------------------------------------------
    def messages(self, query_str: str) -> list[ChatMessage]:
        """The chat messages of the single LLM call for ``query_str``."""
        fill = {"context": self.text, "query": query_str}
        prompt = _PLACEHOLDER.sub(lambda m: fill[m.group(1)], self.prompt_template)
        messages = [ChatMessage(role=MessageRole.USER, content=prompt)]
        if self.system_prompt:
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt))
        return messages

    def _call_kwargs(self) -> dict[str, Any]:
        return {} if self.cite is None else {"cite": self.cite}

    def custom_query(self, query_str: str) -> Response:
        """One prompt with the whole document and the question, one LLM call."""
        messages = self.messages(query_str)
        return self._response(messages, self.llm.chat(messages, **self._call_kwargs()))

    async def acustom_query(self, query_str: str) -> Response:
        """Async :meth:`custom_query` (the model runs in a worker thread)."""
        messages = self.messages(query_str)
        return self._response(messages, await self.llm.achat(messages, **self._call_kwargs()))

    # -- the response ----------------------------------------------------------------------------
    def _document_offset(self, messages: list[ChatMessage]) -> int | None:
        """Where the document text starts in the prompt the engine read (citations are offsets in it)."""
        tokenizer = self.llm.engine.tokenizer
        prompt_text = tokenizer.apply_chat_template(
            self.llm._chat_prompt(messages), add_generation_prompt=True, tokenize=False
        )
        found = prompt_text.find(self.text)
        return found if found >= 0 else None

    def _source_nodes(self, citations: list[Citation], offset: int | None) -> list[NodeWithScore]:
        nodes = []
        for c in citations:
            start = end = None
            if offset is not None and offset <= c.start < offset + len(self.text):
                start, end = c.start - offset, min(c.end - offset, len(self.text))
            text = self.text[start:end] if start is not None else c.snippet
            metadata = {"page": c.page, "source": c.source or self.source}
            node = TextNode(text=text, metadata=metadata, start_char_idx=start, end_char_idx=end)
            nodes.append(NodeWithScore(node=node, score=c.score))
        return nodes

    def _response(self, messages: list[ChatMessage], chat: ChatResponse) -> Response:
        completion: Completion = chat.raw
        metadata = {**chat.additional_kwargs, "source": self.source}
        nodes = []
        if completion.citations:
            nodes = self._source_nodes(completion.citations, self._document_offset(messages))
        return Response(response=chat.message.content or "", source_nodes=nodes, metadata=metadata)
