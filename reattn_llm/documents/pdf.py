"""PDFs: text of every page through pypdf, under a time and a character budget, with clear errors.

:func:`load_pdf` reads a PDF's bytes in a worker thread (:class:`_Deadline`), page by page; each
page's text is cleaned by :func:`~reattn_llm.documents.text.clean_text` and introduced by a
``[Page N]`` anchor. The text may not pass ``max_chars`` (:class:`~.limits.CharBudget`, checked
before and while a page is read). Whatever pypdf raises is translated into a
:class:`~reattn_llm.errors.DocumentError` that says what to do; a page that fails alone is left
empty and only its error's message is kept (not pypdf's partial parse). pypdf's log records go to
:mod:`~.pypdf_log`; what was lost is said in :attr:`Document.warnings` and a :class:`UserWarning`.
pypdf is imported only when a PDF is actually read.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import (
    CorruptDocumentError,
    DocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ImageOnlyDocumentError,
    UnsupportedDocumentError,
)
from .document import Document, assemble_pages
from .limits import CharBudget
from .pypdf_log import PypdfLog, capture
from .text import clean_text

if TYPE_CHECKING:  # pragma: no cover
    from pypdf import PdfReader

_T = TypeVar("_T")

__all__ = ["DEFAULT_TIMEOUT_S", "load_pdf"]

#: Default wall-clock budget for reading one PDF (see ``load_document(timeout_s=...)``).
DEFAULT_TIMEOUT_S = 120.0

_PASSWORD_HINT = "pass password=... to load_document (or --password on the command line)"
_OCR_HINT = "run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`) and load the result"
_LOGGER = logging.getLogger(__name__)


class _Deadline:
    """The wall-clock budget of one PDF.

    The PDF is read in a worker thread (:meth:`run`) that checks the budget between pages and, through
    pypdf's operator visitor, between the operators of a page; the caller stops waiting when the budget
    is spent, so even one pathological page cannot hold it much past ``timeout_s``.
    """

    def __init__(self, source: str, timeout_s: float) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self.expires = time.monotonic() + timeout_s
        self.where = "opening the file"
        self.cancelled = threading.Event()

    def error(self) -> CorruptDocumentError:
        return CorruptDocumentError(
            f"{self.source}: reading took longer than {self.timeout_s:g} s ({self.where}); the PDF is "
            "pathological or damaged. Pass a larger timeout_s= or max_pages=, or repair it "
            "(e.g. `qpdf in.pdf out.pdf`)."
        )

    def check(self) -> None:
        """Raise the timeout error once the budget is spent (or the caller gave up)."""
        if self.cancelled.is_set() or time.monotonic() > self.expires:
            raise self.error()

    def visit_operator(self, *_: Any) -> None:
        """pypdf ``visitor_operand_before`` hook: the same check, between a page's operators."""
        self.check()

    def run(self, work: Callable[[], _T]) -> _T:
        """``work()`` in a daemon thread; its result or exception, or the timeout error when slower.

        The thread runs in a copy of the caller's context, so that a pypdf configuration the caller
        applied (``pypdf.apply_configuration``) holds there too.
        """
        outcome: dict[str, Any] = {}
        context = contextvars.copy_context()

        def target() -> None:
            try:
                outcome["value"] = context.run(work)
            except BaseException as error:  # handed to the caller's thread below
                outcome["error"] = error

        worker = threading.Thread(target=target, name=f"reattn-pdf:{Path(self.source).name}", daemon=True)
        worker.start()
        try:
            worker.join(max(self.expires - time.monotonic(), 0.0))
        finally:
            if worker.is_alive():  # timed out, or the caller was interrupted: let the worker stop
                self.cancelled.set()
        if worker.is_alive():
            raise self.error()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


@dataclass
class _PdfContent:
    """What the worker thread reads from a PDF.

    ``unreadable`` holds ``(page, "Type: message")`` of the pages whose text failed alone, and
    ``first_error`` the first such exception without its traceback (which would keep pypdf's
    partial parse of that page alive).
    """

    page_texts: list[str]
    unreadable: list[tuple[int, str]]
    first_error: Exception | None
    total_pages: int = 0
    title: str | None = None
    encrypted: bool = False


def load_pdf(
    data: bytes,
    source: str,
    *,
    password: str | None,
    max_pages: int | None,
    timeout_s: float,
    max_chars: int | None,
    on_page: Callable[[int, int], None] | None = None,
) -> Document:
    """The PDF ``data`` (read from ``source``) as a :class:`Document` with one span per page.

    The arguments are those of :func:`~reattn_llm.documents.load_document`, already checked.
    """
    deadline = _Deadline(source, timeout_s)
    log = PypdfLog(source)

    def read() -> _PdfContent:
        with capture(log):
            return _read_pdf(data, source, password, max_pages, max_chars, deadline, log, on_page)

    content = deadline.run(read)
    _check_has_text(content, source)
    notes = _unreadable_notes(content, source) + log.dropped_notes()
    for note in notes:  # text is missing: the caller should know without configuring logging
        warnings.warn(note, UserWarning, stacklevel=3)  # warn -> load_pdf -> load_document -> caller
    repaired = log.repaired_note()
    if repaired is not None:
        _LOGGER.warning("%s", repaired)
        notes.append(repaired)
    text, spans = assemble_pages(content.page_texts)
    metadata: dict[str, Any] = {
        "source": source,
        "pages": len(spans),
        "format": "pdf",
        "total_pages": content.total_pages,
    }
    if content.title:
        metadata["title"] = content.title
    if content.encrypted:
        metadata["encrypted"] = True
    if content.unreadable:
        metadata["unreadable_pages"] = [number for number, _ in content.unreadable]
    if log.total:
        metadata["pdf_warnings"] = log.total
    return Document(text, spans, source, metadata, notes)


def _read_pdf(
    data: bytes,
    source: str,
    password: str | None,
    max_pages: int | None,
    max_chars: int | None,
    deadline: _Deadline,
    log: PypdfLog,
    on_page: Callable[[int, int], None] | None = None,
) -> _PdfContent:
    """Open, unlock and extract the PDF (runs in the worker thread)."""
    reader = _open_pdf(data, source, password)
    deadline.where = "reading the page tree"
    deadline.check()
    total = _page_count(reader, source)
    deadline.check()
    if total == 0:
        raise EmptyDocumentError(f"{source} is a PDF with zero pages: there is nothing to read.")
    count = total if max_pages is None else min(total, max_pages)
    budget = CharBudget(source, max_chars, count)
    content = _extract_pages(reader, count, source, deadline, budget, log, on_page)
    content.total_pages, content.title, content.encrypted = total, _pdf_title(reader), reader.is_encrypted
    return content


def _open_pdf(data: bytes, source: str, password: str | None) -> PdfReader:
    """Parse the PDF and unlock it if it is encrypted."""
    from io import BytesIO

    from pypdf import PdfReader

    try:
        reader = PdfReader(BytesIO(data), strict=False)
    except Exception as error:  # pypdf raises far more than PdfReadError on damaged input
        encrypted = isinstance(error, NotImplementedError) and b"/Encrypt" in data
        raise _pdf_error(error, source, "cannot be parsed", encrypted=encrypted) from error
    if reader.is_encrypted:
        _unlock(reader, source, password)
    return reader


def _unlock(reader: PdfReader, source: str, password: str | None) -> None:
    from pypdf import PasswordType

    try:
        if password is None:
            if reader.decrypt("") == PasswordType.NOT_DECRYPTED:
                raise EncryptedDocumentError(f"{source} is encrypted and needs a password: {_PASSWORD_HINT}.")
        elif reader.decrypt(password) == PasswordType.NOT_DECRYPTED:
            raise EncryptedDocumentError(
                f"{source}: wrong password for this encrypted PDF. Check it and pass the right one "
                "with password=... (or --password)."
            )
    except DocumentError:
        raise
    except Exception as error:
        raise _pdf_error(error, source, "cannot be decrypted", encrypted=True) from error


def _page_count(reader: PdfReader, source: str) -> int:
    """Number of real pages (the flattened page tree, not the declared /Count)."""
    try:
        return len(reader.pages)
    except Exception as error:
        raise _pdf_error(error, source, "has a damaged page tree") from error


def _extract_pages(
    reader: PdfReader,
    count: int,
    source: str,
    deadline: _Deadline,
    budget: CharBudget,
    log: PypdfLog,
    on_page: Callable[[int, int], None] | None = None,
) -> _PdfContent:
    """Cleaned text of the first ``count`` pages; a page whose text cannot be read stays empty."""
    texts: list[str] = []
    unreadable: list[tuple[int, str]] = []
    first_error: Exception | None = None
    for index in range(count):
        deadline.where = f"at page {index + 1} of {count}"
        log.page = index + 1
        raw: object = ""
        try:
            page = reader.pages[index]
            budget.start_page(index + 1, _content_length(page))
            raw = page.extract_text(
                visitor_operand_before=deadline.visit_operator, visitor_text=budget.visit_text
            )
            budget.check()  # pypdf swallows errors raised inside form XObjects
        except (DocumentError, MemoryError):
            raise
        except Exception as error:
            if _is_dependency_error(error):
                raise _pdf_error(error, source, "cannot be read") from error
            unreadable.append((index + 1, f"{type(error).__name__}: {error}"))
            if first_error is None:
                first_error = _without_frames(error)
        texts.append(clean_text(raw if isinstance(raw, str) else ""))
        budget.add_page(len(texts[-1]))
        deadline.check()
        if on_page is not None:
            on_page(index + 1, count)
    log.page = None
    return _PdfContent(texts, unreadable, first_error)


def _content_length(page: Any) -> int | None:
    """Bytes in the page's decoded content stream(s), or None when they cannot be read here
    (extracting the text then reports the damage)."""
    try:
        contents = page.get("/Contents")
        if contents is None:
            return 0
        contents = contents.get_object()
        parts = contents if isinstance(contents, list) else [contents]
        return sum(len(part.get_object().get_data()) for part in parts)
    except Exception:
        return None


def _without_frames(error: Exception) -> Exception:
    """``error`` with the tracebacks of it and of the exceptions it chains dropped (their frames
    hold pypdf's parse of the page)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return error


def _check_has_text(content: _PdfContent, source: str) -> None:
    """Raise if the PDF has no usable text."""
    page_texts, unreadable = content.page_texts, content.unreadable
    if len(unreadable) == len(page_texts):
        number, detail = unreadable[0]
        raise CorruptDocumentError(
            f"{source} is damaged: no page's text could be read (page {number}: {detail}). Repair it "
            "(e.g. `qpdf in.pdf out.pdf`) or re-export it."
        ) from content.first_error
    visible = sum(len("".join(page.split())) for page in page_texts)
    if visible < len(page_texts):
        raise ImageOnlyDocumentError(
            f"{source} has {len(page_texts)} page(s) but no text layer (scanned images?): it needs OCR "
            f"first: {_OCR_HINT}."
        )


def _unreadable_notes(content: _PdfContent, source: str) -> list[str]:
    """The sentence about pages whose text could not be read (empty list when there are none)."""
    if not content.unreadable:
        return []
    numbers = ", ".join(str(number) for number, _ in content.unreadable)
    details = "; ".join(f"page {number}: {detail}" for number, detail in content.unreadable[:3])
    more = "; ..." if len(content.unreadable) > 3 else ""
    return [
        f"{source}: the text of page(s) {numbers} could not be read (damaged PDF); they are left empty "
        f"({details}{more}). Repair the file (e.g. `qpdf in.pdf out.pdf`) to read them."
    ]


def _pdf_title(reader: PdfReader) -> str | None:
    try:
        info = reader.metadata
        title = info.title if info is not None else None
    except Exception:  # a damaged /Info dictionary costs the title, not the document
        return None
    if not isinstance(title, str):
        return None
    title = " ".join(clean_text(title).split())
    return title or None


def _is_dependency_error(error: Exception) -> bool:
    from pypdf.errors import DependencyError

    return isinstance(error, DependencyError)


def _pdf_error(error: Exception, source: str, what: str, *, encrypted: bool = False) -> DocumentError:
    """Translate whatever pypdf raised into the matching :class:`DocumentError`."""
    from pypdf.errors import FileNotDecryptedError

    detail = f"{type(error).__name__}: {error}"
    if _is_dependency_error(error):
        if "cryptography" in str(error) or "AES" in str(error):
            return EncryptedDocumentError(
                f"{source} is encrypted with AES, which needs a crypto backend that is not installed: "
                "run `pip install cryptography` and try again."
            )
        return UnsupportedDocumentError(f"{source} needs an optional dependency to be read: {error}")
    if isinstance(error, FileNotDecryptedError):
        return EncryptedDocumentError(f"{source} is encrypted and needs a password: {_PASSWORD_HINT}.")
    if encrypted and isinstance(error, NotImplementedError):
        return EncryptedDocumentError(
            f"{source} uses an encryption scheme that cannot be opened here ({detail}). Decrypt it "
            "first, e.g. `qpdf --decrypt --password=... in.pdf out.pdf`."
        )
    return CorruptDocumentError(
        f"{source} is a damaged PDF: it {what} ({detail}). Repair it (e.g. `qpdf in.pdf out.pdf`) "
        "or re-export it from its source."
    )
