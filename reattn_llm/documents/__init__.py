"""Whole documents in, one string out: PDFs and text files with page anchors and clear errors.

:func:`load_document` reads a PDF (through pypdf) or a plain-text file and returns a
:class:`Document` whose ``text`` holds the whole document, each PDF page introduced by an anchor
line such as ``[Page 12]``, so a model reading it can cite pages. :class:`PageSpan` records where
each page's text sits inside ``text``; :meth:`Document.page_at` maps a character offset back to its
page. :func:`load_documents` joins several files into one :class:`Document`, each introduced by a
``=== name.pdf ===`` header line.

Every failure is one of the :class:`~reattn_llm.errors.DocumentError` subclasses, raised before any
model work, with a message that says what to do. The format is detected by content (the ``%PDF-``
magic), not by the file name alone. A PDF is read in a worker thread under a wall-clock budget
(``timeout_s``), so no pathological file can hold the caller for long, and its text may not pass
``max_chars`` characters, checked as it grows, so no small file can fill the memory. What reading
lost or changed is listed in :attr:`Document.warnings`. This package never imports torch, and
imports pypdf only when a PDF is actually read.

Modules: :mod:`.document` (the types), :mod:`.text` (decoding and cleanup of text files),
:mod:`.pdf` (the PDF reader), :mod:`.limits` (``max_chars``), :mod:`.pypdf_log` (pypdf's log).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import (
    ConfigError,
    CorruptDocumentError,
    DocumentError,
    DocumentNotFoundError,
    EmptyDocumentError,
)
from .document import Document, PageSpan, join_documents
from .limits import DEFAULT_MAX_CHARS, DocumentTooLargeError, check_max_chars
from .pdf import DEFAULT_TIMEOUT_S, load_pdf
from .text import SUPPORTED_FORMATS, clean_text, load_text

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_TIMEOUT_S",
    "SUPPORTED_FORMATS",
    "Document",
    "DocumentTooLargeError",
    "PageSpan",
    "clean_text",
    "load_document",
    "load_documents",
]

_PDF_MAGIC = b"%PDF-"
_MAGIC_WINDOW = 1024


def load_document(
    path: str | os.PathLike[str],
    *,
    password: str | None = None,
    max_pages: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    on_page: Callable[[int, int], None] | None = None,
) -> Document:
    """Read a whole PDF or text file into a :class:`Document`.

    Args:
        path: the file. Its format is detected from its content (``%PDF-`` magic), not its name.
        password: for an encrypted PDF. PDFs that only have an owner password open without one.
        max_pages: read only the first ``max_pages`` pages of a PDF (ignored for text files).
        timeout_s: wall-clock budget for reading a PDF; past it the call raises
            :class:`CorruptDocumentError` instead of waiting (the check runs between pages and
            between the operators of a page).
        max_chars: the most characters of text the document may hold (``None``: no limit). It is
            checked as the text grows: a PDF page whose content stream alone is longer is refused
            before it is parsed, and a text file before it is decoded.
        on_page: called as ``on_page(done, total)`` after each PDF page (progress bars).

    Raises:
        DocumentNotFoundError: the path does not exist or is a directory.
        EmptyDocumentError: zero bytes, only whitespace, or a PDF with zero pages.
        CorruptDocumentError: a PDF that cannot be parsed, or reading took longer than ``timeout_s``.
        EncryptedDocumentError: no or wrong password, or no AES backend (``pip install cryptography``).
        ImageOnlyDocumentError: a PDF without a text layer (scanned pages): it needs OCR first.
        UnsupportedDocumentError: binary data that is neither PDF nor text.
        DocumentTooLargeError: the text passes ``max_chars`` characters.
        ConfigError: ``max_pages``, ``timeout_s`` or ``max_chars`` is not positive.

    A PDF page whose text alone cannot be read (while others can) is left empty, listed in
    ``metadata["unreadable_pages"]`` and reported with a :class:`UserWarning`, as is text that pypdf
    dropped (e.g. past its limit of form XObject invocations). What pypdf repaired as it read is
    counted in ``metadata["pdf_warnings"]`` and summed up in one logged warning; pypdf's own log
    records go, at DEBUG level, to the ``reattn_llm.documents`` logger and never to stderr. Every
    such sentence is also in :attr:`Document.warnings`.
    """
    _check_limits(max_pages, timeout_s)
    check_max_chars(max_chars)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"load_document() takes a file path (str or pathlib.Path), not {type(path).__name__}; "
            "text you already have can go straight into the prompt."
        )
    source = os.fspath(path)
    data = _read_bytes(source)
    if not data.strip():
        what = "is empty (0 bytes)" if not data else "holds only whitespace"
        raise EmptyDocumentError(f"{source} {what}: there is nothing to read. Is it the right file?")
    named_pdf = Path(source).suffix.lower() == ".pdf"
    if _PDF_MAGIC in data[:_MAGIC_WINDOW]:
        try:
            return load_pdf(
                data,
                source,
                password=password,
                max_pages=max_pages,
                timeout_s=timeout_s,
                max_chars=max_chars,
                on_page=on_page,
            )
        except CorruptDocumentError as pdf_error:
            if named_pdf or data.startswith(_PDF_MAGIC):
                raise
            # "%PDF-" a few lines into a file not named .pdf: maybe a text that talks about PDFs.
            try:
                return load_text(data, source, max_chars)
            except DocumentError:
                raise pdf_error from pdf_error.__cause__
    if named_pdf:
        raise CorruptDocumentError(
            f"{source} is not a PDF (no %PDF header in its first {_MAGIC_WINDOW} bytes): the file is "
            "damaged or misnamed. Re-download or re-export it; if it is text, rename it to .txt."
        )
    return load_text(data, source, max_chars)


def load_documents(paths: Iterable[str | os.PathLike[str]], **kwargs: Any) -> Document:
    """Read several files into one :class:`Document`, each introduced by a ``=== name ===`` line.

    Page numbers stay per file; every :class:`PageSpan` carries its file in ``source`` so a
    citation can say file and page. ``kwargs`` go to :func:`load_document` for every file.
    """
    documents = [load_document(path, **kwargs) for path in paths]
    if not documents:
        raise EmptyDocumentError("load_documents() got no paths: pass at least one file.")
    return join_documents(documents)


def _check_limits(max_pages: int | None, timeout_s: float) -> None:
    if max_pages is not None and (not isinstance(max_pages, int) or max_pages < 1):
        raise ConfigError(f"max_pages must be a positive integer or None, got {max_pages!r}.")
    if not timeout_s > 0:
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}.")


def _read_bytes(source: str) -> bytes:
    """The file's bytes, or a :class:`DocumentError` saying why they cannot be read."""
    path = Path(source).expanduser()
    try:
        is_dir = path.is_dir()
        data = None if is_dir else path.read_bytes()
    except FileNotFoundError as error:
        where = "" if path.is_absolute() else f" (relative paths start from {os.getcwd()})"
        raise DocumentNotFoundError(f"{source}: no such file. Check the path{where}.") from error
    except PermissionError as error:
        raise DocumentError(f"{source}: permission denied; check the file's permissions.") from error
    except OSError as error:
        raise DocumentNotFoundError(
            f"{_shorten(source)}: cannot open it ({error.strerror or error}). load_document() takes a "
            "path; text you already have can go straight into the prompt."
        ) from error
    if data is None:
        raise DocumentNotFoundError(
            f"{source} is a directory, not a file: pass one file (or several with load_documents([...]))."
        )
    return data


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
