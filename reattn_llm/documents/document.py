"""The document types: :class:`Document` (one string with page layout) and :class:`PageSpan`."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Document", "PageSpan", "assemble_pages", "join_documents"]


@dataclass(frozen=True)
class PageSpan:
    """Where one page's text sits inside :attr:`Document.text`.

    ``start``/``end`` are character offsets (``text[start:end]`` is the page's text, without its
    ``[Page N]`` anchor line). ``number`` is 1-based and counts physical pages of its own file;
    ``source`` names that file in a document joined by :func:`load_documents` (else ``None``).
    """

    number: int
    start: int
    end: int
    source: str | None = None


@dataclass(repr=False)
class Document:
    """A whole document as one string, with the page layout needed to cite pages.

    ``str(doc)`` is ``doc.text``, so ``f"{doc}\\n\\nQuestion?"`` builds a prompt. For PDFs each page
    is preceded by an anchor line ``[Page N]``; plain-text files have no anchors and one span.
    ``warnings`` holds one sentence for each thing reading lost or changed (pages that could not be
    read, text the PDF library dropped or repaired, bytes replaced while decoding a text file);
    it is empty when the text is complete.
    """

    text: str
    pages: list[PageSpan]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        return (
            f"Document(source={self.source!r}, pages={len(self.pages)}, chars={len(self.text)}, "
            f"format={self.metadata.get('format')!r})"
        )

    def span_at(self, char_offset: int) -> PageSpan | None:
        """The page span owning ``char_offset``, or ``None`` outside ``text``.

        A page owns its text and the anchor (and file header) lines just before it.
        """
        index = self._index_at(char_offset)
        return None if index is None else self.pages[index]

    def page_at(self, char_offset: int) -> int | None:
        """The page number containing ``char_offset`` (binary search), or ``None`` outside ``text``."""
        span = self.span_at(char_offset)
        return None if span is None else span.number

    def spans_for_range(self, start: int, end: int) -> list[PageSpan]:
        """The page spans that the character range ``[start, end)`` touches, in document order."""
        start, end = max(start, 0), min(end, len(self.text))
        if end <= start or not self.pages:
            return []
        first, last = self._index_at(start), self._index_at(end - 1)
        if first is None or last is None:
            return []
        return self.pages[first : last + 1]

    def pages_for_range(self, start: int, end: int) -> list[int]:
        """The page numbers that ``[start, end)`` touches, in document order.

        In a document joined from several files the same number can come back once per file; use
        :meth:`spans_for_range` to get each page's ``source`` as well.
        """
        return [span.number for span in self.spans_for_range(start, end)]

    def _index_at(self, char_offset: int) -> int | None:
        if not self.pages or not 0 <= char_offset < len(self.text):
            return None
        index = bisect.bisect_right(self.pages, char_offset, key=lambda span: span.end)
        return min(index, len(self.pages) - 1)


def assemble_pages(page_texts: list[str]) -> tuple[str, list[PageSpan]]:
    """Join page texts, each behind a ``[Page N]`` anchor line, and record their spans."""
    parts: list[str] = []
    spans: list[PageSpan] = []
    offset = 0
    for number, page_text in enumerate(page_texts, start=1):
        anchor = f"[Page {number}]\n" if number == 1 else f"\n\n[Page {number}]\n"
        start = offset + len(anchor)
        parts += [anchor, page_text]
        spans.append(PageSpan(number, start, start + len(page_text)))
        offset = start + len(page_text)
    return "".join(parts), spans


def join_documents(documents: list[Document]) -> Document:
    """One :class:`Document` of several, each introduced by a ``=== name ===`` header line.

    Page numbers stay per file and every span carries its file in ``source``; the warnings of all
    of them are kept (each names its file).
    """
    parts: list[str] = []
    spans: list[PageSpan] = []
    offset = 0
    for document in documents:
        if parts:
            parts.append("\n\n")
            offset += 2
        header = f"=== {Path(document.source).name} ===\n"
        parts += [header, document.text]
        offset += len(header)
        spans += [
            PageSpan(span.number, span.start + offset, span.end + offset, document.source)
            for span in document.pages
        ]
        offset += len(document.text)
    formats = {document.metadata["format"] for document in documents}
    metadata: dict[str, Any] = {
        "source": ", ".join(document.source for document in documents),
        "sources": [document.source for document in documents],
        "pages": len(spans),
        "format": formats.pop() if len(formats) == 1 else "mixed",
        "documents": len(documents),
    }
    notes = [note for document in documents for note in document.warnings]
    return Document("".join(parts), spans, metadata["source"], metadata, notes)
