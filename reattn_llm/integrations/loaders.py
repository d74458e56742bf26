"""Document loaders for LangChain and LlamaIndex, built on :func:`reattn_llm.load_document`.

* :class:`ReAttentionDocumentLoader` is a LangChain ``BaseLoader``: by default it yields **one**
  document holding the whole file (ReAttention reads whole documents; there is nothing to chunk),
  or one document per page with ``per_page=True``.
* ``ReAttentionReader`` is a LlamaIndex ``BaseReader`` with the same behaviour. llama-index is an
  optional extra, so the class is built on first access (``from ... import ReAttentionReader`` or
  :func:`make_llamaindex_reader`); importing this module never imports llama_index.
  ``SimpleDirectoryReader`` reads a PDF as raw text unless a PDF reader is registered for it:
  pass ``file_extractor=pdf_file_extractor()`` (nothing is registered at import).

Both raise the package's :class:`~reattn_llm.errors.DocumentError` subclasses unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document as LCDocument

from ..documents import DEFAULT_TIMEOUT_S, Document, PageSpan, load_document
from ..errors import UnsupportedDocumentError

# ``ReAttentionReader`` is importable too, but is left out of ``__all__``: it needs llama-index.
__all__ = ["ReAttentionDocumentLoader", "document_parts", "make_llamaindex_reader", "pdf_file_extractor"]

_LLAMAINDEX_HINT = 'pip install "reattn-llm[llamaindex]"'


def _flat_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata that vector stores accept: str/int/float/bool/None values, lists joined by commas."""
    flat: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, (list, tuple)):
            flat[key] = ", ".join(str(item) for item in value)
        elif value is None or isinstance(value, (str, int, float, bool)):
            flat[key] = value
        else:
            flat[key] = str(value)
    return flat


def document_parts(document: Document, *, per_page: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(text, metadata)`` pairs for a loaded document: the whole of it, or one pair per page.

    Per page, the text is the page's own text (without its ``[Page N]`` anchor) and the metadata
    gains ``page`` (1-based) and, for a page of a joined document, ``source`` set to its file.
    Pages without text are skipped.
    """
    base = _flat_metadata(document.metadata)
    if not per_page:
        yield document.text, base
        return
    for span in document.pages:
        text = document.text[span.start : span.end]
        if text.strip():
            yield text, _page_metadata(base, span)


def _page_metadata(base: dict[str, Any], span: PageSpan) -> dict[str, Any]:
    metadata = {**base, "page": span.number}
    if span.source is not None:
        metadata["source"] = span.source
    return metadata


class ReAttentionDocumentLoader(BaseLoader):
    """LangChain loader for a whole PDF or text file (see :func:`reattn_llm.load_document`).

    Yields one ``Document`` with the whole text (``[Page N]`` anchors included) and metadata
    ``source``, ``pages``, ``format`` (and ``title`` when the PDF has one); with ``per_page=True``
    it yields one ``Document`` per non-empty page, whose metadata also has ``page``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        password: str | None = None,
        per_page: bool = False,
        max_pages: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.password = password
        self.per_page = per_page
        self.max_pages = max_pages
        self.timeout_s = timeout_s

    def lazy_load(self) -> Iterator[LCDocument]:
        """Read the file and yield its document(s); raises a ``DocumentError`` if it cannot be read."""
        document = load_document(
            self.path, password=self.password, max_pages=self.max_pages, timeout_s=self.timeout_s
        )
        for text, metadata in document_parts(document, per_page=self.per_page):
            yield LCDocument(page_content=text, metadata=metadata)


@cache
def make_llamaindex_reader() -> type:
    """Build (once) and return the LlamaIndex ``BaseReader`` subclass ``ReAttentionReader``.

    Raises:
        ImportError: llama-index-core is not installed (install the ``llamaindex`` extra).
    """
    try:
        from llama_index.core import Document as LIDocument
        from llama_index.core.readers.base import BaseReader
    except ImportError as error:
        raise ImportError(
            f"ReAttentionReader needs llama-index-core, which is not installed: {_LLAMAINDEX_HINT}"
        ) from error

    class ReAttentionReader(BaseReader):
        """LlamaIndex reader for whole PDFs and text files (see :func:`reattn_llm.load_document`).

        ``load_data(file)`` returns one ``Document`` with the whole text by default, or one per
        non-empty page with ``per_page=True``. Works as a ``SimpleDirectoryReader`` file extractor.
        """

        def __init__(
            self,
            *,
            password: str | None = None,
            per_page: bool = False,
            max_pages: int | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S,
        ) -> None:
            self.password = password
            self.per_page = per_page
            self.max_pages = max_pages
            self.timeout_s = timeout_s

        def lazy_load_data(  # type: ignore[override]
            self,
            file: str | os.PathLike[str],
            extra_info: dict[str, Any] | None = None,
            fs: Any = None,
        ) -> Iterator[LIDocument]:
            """Yield the document(s) of ``file``; ``extra_info`` is merged into their metadata."""
            _check_local(fs, file)
            document = load_document(
                file, password=self.password, max_pages=self.max_pages, timeout_s=self.timeout_s
            )
            for text, metadata in document_parts(document, per_page=self.per_page):
                yield LIDocument(text=text, metadata={**(extra_info or {}), **metadata})

        def load_data(  # type: ignore[override]
            self,
            file: str | os.PathLike[str],
            extra_info: dict[str, Any] | None = None,
            fs: Any = None,
        ) -> list[LIDocument]:
            """The document(s) of ``file`` as a list (see :meth:`lazy_load_data`)."""
            return list(self.lazy_load_data(file, extra_info=extra_info, fs=fs))

    ReAttentionReader.__module__ = __name__
    ReAttentionReader.__qualname__ = "ReAttentionReader"
    return ReAttentionReader


def pdf_file_extractor(**reader_kwargs: Any) -> dict[str, Any]:
    """``{".pdf": ReAttentionReader(**reader_kwargs)}``, for LlamaIndex's ``SimpleDirectoryReader``.

    Without it (and without ``llama-index-readers-file``, whose pypdf pin conflicts with this
    package's) ``SimpleDirectoryReader`` reads a PDF's bytes as text: the model then reads PDF
    syntax. Example::

        from llama_index.core import SimpleDirectoryReader
        from reattn_llm.integrations.loaders import pdf_file_extractor

        docs = SimpleDirectoryReader("papers/", file_extractor=pdf_file_extractor()).load_data()
    """
    return {".pdf": make_llamaindex_reader()(**reader_kwargs)}


def _check_local(fs: Any, file: str | os.PathLike[str]) -> None:
    """Only local files are read; a non-local fsspec filesystem gets a clear error."""
    if fs is None:
        return
    protocol = getattr(fs, "protocol", "file")
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if not {"file", "local"} & set(protocols):
        raise UnsupportedDocumentError(
            f"ReAttentionReader reads local files only; copy {Path(file).name} to disk first "
            f"(got a {protocols[0]!r} filesystem)."
        )


def __getattr__(name: str) -> Any:
    if name == "ReAttentionReader":
        return make_llamaindex_reader()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
