""":class:`WholeDocumentQueryEngine`: a question over a whole document, answered in one LLM call."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import Response
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import Document as LlamaDocument
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ConfigDict, Field, field_validator

from ...documents import Document, load_document, load_documents
from ...runtime.citations import Citation
from ...runtime.stream import Completion
from .._common import warn_if_raw_pdf
from .llm import ReAttentionLlamaLLM

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
        page = doc.metadata.get("page", doc.metadata.get("page_label"))  # ours, or a per-page PDF reader's
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
        warn_if_raw_pdf(value, "The document text")
        return value

    # -- the one call ----------------------------------------------------------------------------
    def _prompt(self, query_str: str) -> tuple[str, int]:
        """The user prompt for ``query_str``, and the character where the question starts in it."""
        pieces, question = [], 0
        for i, piece in enumerate(_PLACEHOLDER.split(self.prompt_template)):  # text, name, text, ...
            if i % 2:
                question = sum(map(len, pieces)) if piece == "query" else question
                piece = query_str if piece == "query" else self.text
            pieces.append(piece)
        return "".join(pieces), question

    def messages(self, query_str: str) -> list[ChatMessage]:
        """The chat messages of the single LLM call for ``query_str``."""
        messages = [ChatMessage(role=MessageRole.USER, content=self._prompt(query_str)[0])]
        if self.system_prompt:
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt))
        return messages

    def _call_kwargs(self, query_str: str) -> dict[str, Any]:
        """The call's citation switch, and where its question starts: the question (from ``{query}``
        to the end of the prompt) is prefilled as a chunk of its own, whatever the template puts
        after it (:mod:`~reattn_llm.runtime.prompts`)."""
        question = self._prompt(query_str)[1]
        kwargs: dict[str, Any] = {"question_start": question if question > 0 else "auto"}
        return kwargs if self.cite is None else {**kwargs, "cite": self.cite}

    def custom_query(self, query_str: str) -> Response:
        """One prompt with the whole document and the question, one LLM call."""
        messages = self.messages(query_str)
        return self._response(messages, self.llm.chat(messages, **self._call_kwargs(query_str)))

    async def acustom_query(self, query_str: str) -> Response:
        """Async :meth:`custom_query` (the model runs in a worker thread)."""
        messages = self.messages(query_str)
        return self._response(messages, await self.llm.achat(messages, **self._call_kwargs(query_str)))

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
