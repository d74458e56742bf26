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
(``timeout_s``), so no pathological file can hold the caller for long. This module never imports
torch, and imports pypdf only when a PDF is actually read.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import (
    ConfigError,
    CorruptDocumentError,
    DocumentError,
    DocumentNotFoundError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ImageOnlyDocumentError,
    UnsupportedDocumentError,
)

if TYPE_CHECKING:  # pragma: no cover
    from pypdf import PdfReader

_T = TypeVar("_T")

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "SUPPORTED_FORMATS",
    "Document",
    "PageSpan",
    "clean_text",
    "load_document",
    "load_documents",
]

#: Default wall-clock budget for reading one PDF (see ``load_document(timeout_s=...)``).
DEFAULT_TIMEOUT_S = 120.0
#: Human-readable list of what the loader reads, used in error messages.
SUPPORTED_FORMATS = "PDF (.pdf) and plain text (UTF-8, UTF-16, Windows-1252 or Latin-1: .txt, .md, ...)"

_PDF_MAGIC = b"%PDF-"
_MAGIC_WINDOW = 1024
_PASSWORD_HINT = "pass password=... to load_document (or --password on the command line)"
_OCR_HINT = "run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`) and load the result"
# Largest share of control characters a text file may hold before it is taken for binary data.
_MAX_CONTROL_SHARE = 0.01
# Magic numbers of common non-text files, to name what the user actually passed.
_KNOWN_BINARIES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (.docx, .epub, .odt, ... are ZIP files)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office file (.doc, .xls, .ppt)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable"),
)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)

_LINE_BREAKS_RE = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_TRAILING_SPACE_RE = re.compile("[ \t]+(?=\n)|[ \t]+\\Z")
_BLANK_RUN_RE = re.compile("\n{4,}")
_NON_ASCII_RE = re.compile("[^\x00-\x7f\ufffd]")
_C0_CONTROLS = bytes(b for b in range(32) if b not in b"\t\n\r\x0b\x0c") + b"\x7f"


# --------------------------------------------------------------------------- data types


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
    """

    text: str
    pages: list[PageSpan]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

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


# --------------------------------------------------------------------------- public API


def load_document(
    path: str | os.PathLike[str],
    *,
    password: str | None = None,
    max_pages: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
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
        on_page: called as ``on_page(done, total)`` after each PDF page (progress bars).

    Raises:
        DocumentNotFoundError: the path does not exist or is a directory.
        EmptyDocumentError: zero bytes, only whitespace, or a PDF with zero pages.
        CorruptDocumentError: a PDF that cannot be parsed, or reading took longer than ``timeout_s``.
        EncryptedDocumentError: no or wrong password, or no AES backend (``pip install cryptography``).
        ImageOnlyDocumentError: a PDF without a text layer (scanned pages): it needs OCR first.
        UnsupportedDocumentError: binary data that is neither PDF nor text.
        ConfigError: ``max_pages`` or ``timeout_s`` is not positive.

    A PDF page whose text alone cannot be read (while others can) is left empty, listed in
    ``metadata["unreadable_pages"]`` and reported with a :class:`UserWarning`.
    """
    _check_limits(max_pages, timeout_s)
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
    if _is_pdf(data):
        try:
            return _load_pdf(
                data, source, password=password, max_pages=max_pages, timeout_s=timeout_s, on_page=on_page
            )
        except CorruptDocumentError as pdf_error:
            if named_pdf or data.startswith(_PDF_MAGIC):
                raise
            # "%PDF-" a few lines into a file not named .pdf: maybe a text that talks about PDFs.
            try:
                return _load_text(data, source)
            except DocumentError:
                raise pdf_error from pdf_error.__cause__
    if named_pdf:
        raise CorruptDocumentError(
            f"{source} is not a PDF (no %PDF header in its first {_MAGIC_WINDOW} bytes): the file is "
            "damaged or misnamed. Re-download or re-export it; if it is text, rename it to .txt."
        )
    return _load_text(data, source)


def load_documents(paths: Iterable[str | os.PathLike[str]], **kwargs: Any) -> Document:
    """Read several files into one :class:`Document`, each introduced by a ``=== name ===`` line.

    Page numbers stay per file; every :class:`PageSpan` carries its file in ``source`` so a
    citation can say file and page. ``kwargs`` go to :func:`load_document` for every file.
    """
    documents = [load_document(path, **kwargs) for path in paths]
    if not documents:
        raise EmptyDocumentError("load_documents() got no paths: pass at least one file.")
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
    return Document("".join(parts), spans, metadata["source"], metadata)


# --------------------------------------------------------------------------- files and text


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


def _is_pdf(data: bytes) -> bool:
    return _PDF_MAGIC in data[:_MAGIC_WINDOW]


def clean_text(text: str) -> str:
    """Light, deterministic cleanup of extracted text.

    Normalises line endings, replaces lone surrogates, strips NUL and other control characters
    (keeping ``\\n`` and ``\\t``), trailing spaces and surrounding blank lines, and collapses runs of
    more than two blank lines. Hyphenation and everything else is left as it is.
    """
    text = _LINE_BREAKS_RE.sub("\n", text)
    text = _CONTROL_RE.sub("", text)
    text = _SURROGATE_RE.sub("\ufffd", text)
    text = _TRAILING_SPACE_RE.sub("", text)
    text = _BLANK_RUN_RE.sub("\n\n\n", text)
    return text.strip("\n")


def _load_text(data: bytes, source: str) -> Document:
    text, encoding = _decode_text(data, source)
    text = clean_text(text)
    if not text.strip():
        raise EmptyDocumentError(
            f"{source} holds only whitespace and control characters: there is nothing to read."
        )
    metadata = {"source": source, "pages": 1, "format": "text", "encoding": encoding}
    return Document(text, [PageSpan(1, 0, len(text))], source, metadata)


def _decode_text(data: bytes, source: str) -> tuple[str, str]:
    """Decode a text file: UTF-16/32 with a BOM, else UTF-8 (BOM or not), else Windows-1252/Latin-1."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _checked_text(data.decode(encoding), source), encoding
            except UnicodeDecodeError as error:
                raise _binary_error(data, source, f"it starts like {encoding} text but is not") from error
    if b"\x00" in data:
        raise _binary_error(data, source, "it holds binary data (NUL bytes)")
    try:
        return _checked_text(data.decode("utf-8-sig"), source), "utf-8"
    except UnicodeDecodeError:
        pass
    if len(data.translate(None, _C0_CONTROLS)) < len(data) * (1 - _MAX_CONTROL_SHARE):
        raise _binary_error(data, source, "it holds binary data")
    mostly_utf8 = _mostly_utf8(data)
    if mostly_utf8 is not None:
        return mostly_utf8, "utf-8 (invalid bytes replaced)"
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 text with a few damaged bytes, decoded with U+FFFD for them; ``None`` if it is not.

    A legacy 8-bit file has (almost) no valid multi-byte UTF-8 sequences, while a UTF-8 file with a
    stray bad byte has many more valid non-ASCII characters than damaged ones.
    """
    text = data.decode("utf-8-sig", errors="replace")
    damaged = text.count("\ufffd") - data.count("\ufffd".encode())
    valid = len(_NON_ASCII_RE.findall(text))
    return text if valid >= 10 * max(damaged, 1) else None


def _checked_text(text: str, source: str) -> str:
    controls = sum(1 for _ in _CONTROL_RE.finditer(text, 0, 1_000_000))
    if controls > min(len(text), 1_000_000) * _MAX_CONTROL_SHARE:
        raise _binary_error(text.encode("utf-8", "replace")[:16], source, "it holds binary data")
    return text


def _binary_error(data: bytes, source: str, why: str) -> UnsupportedDocumentError:
    kind = next((name for magic, name in _KNOWN_BINARIES if data.startswith(magic)), None)
    what = f"it looks like {kind}" if kind else why
    return UnsupportedDocumentError(
        f"{source} is neither a PDF nor a text file ({what}). Supported formats: {SUPPORTED_FORMATS}. "
        "Convert it to PDF or plain text first."
    )


def _assemble(page_texts: list[str]) -> tuple[str, list[PageSpan]]:
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


# --------------------------------------------------------------------------- PDFs


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
        """``work()`` in a daemon thread; its result or exception, or the timeout error when slower."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = work()
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
    """What the worker thread reads from a PDF."""

    page_texts: list[str]
    unreadable: list[tuple[int, Exception]]
    total_pages: int
    title: str | None
    encrypted: bool


def _load_pdf(
    data: bytes,
    source: str,
    *,
    password: str | None,
    max_pages: int | None,
    timeout_s: float,
    on_page: Callable[[int, int], None] | None = None,
) -> Document:
    deadline = _Deadline(source, timeout_s)
    content = deadline.run(lambda: _read_pdf(data, source, password, max_pages, deadline, on_page))
    _check_has_text(content.page_texts, content.unreadable, source)
    text, spans = _assemble(content.page_texts)
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
    return Document(text, spans, source, metadata)


def _read_pdf(
    data: bytes,
    source: str,
    password: str | None,
    max_pages: int | None,
    deadline: _Deadline,
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
    page_texts, unreadable = _extract_pages(reader, count, source, deadline, on_page)
    return _PdfContent(page_texts, unreadable, total, _pdf_title(reader), reader.is_encrypted)


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
    on_page: Callable[[int, int], None] | None = None,
) -> tuple[list[str], list[tuple[int, Exception]]]:
    """Cleaned text of the first ``count`` pages; a page whose text cannot be read stays empty."""
    texts: list[str] = []
    unreadable: list[tuple[int, Exception]] = []
    for index in range(count):
        deadline.where = f"at page {index + 1} of {count}"
        try:
            raw = reader.pages[index].extract_text(visitor_operand_before=deadline.visit_operator)
        except DocumentError:
            raise
        except Exception as error:
            if _is_dependency_error(error):
                raise _pdf_error(error, source, "cannot be read") from error
            unreadable.append((index + 1, error))
            raw = ""
        texts.append(clean_text(raw if isinstance(raw, str) else ""))
        deadline.check()
        if on_page is not None:
            on_page(index + 1, count)
    return texts, unreadable


def _check_has_text(page_texts: list[str], unreadable: list[tuple[int, Exception]], source: str) -> None:
    """Raise if the PDF has no usable text; warn about single pages that could not be read."""
    if len(unreadable) == len(page_texts):
        number, error = unreadable[0]
        raise CorruptDocumentError(
            f"{source} is damaged: no page's text could be read (page {number}: "
            f"{type(error).__name__}: {error}). Repair it (e.g. `qpdf in.pdf out.pdf`) or re-export it."
        ) from error
    visible = sum(len("".join(page.split())) for page in page_texts)
    if visible < len(page_texts):
        raise ImageOnlyDocumentError(
            f"{source} has {len(page_texts)} page(s) but no text layer (scanned images?): it needs OCR "
            f"first: {_OCR_HINT}."
        )
    if unreadable:
        numbers = ", ".join(str(number) for number, _ in unreadable)
        warnings.warn(
            f"{source}: the text of page(s) {numbers} could not be read (damaged PDF); they are left "
            "empty. Repair the file (e.g. `qpdf in.pdf out.pdf`) to read them.",
            UserWarning,
            stacklevel=4,  # warn -> _check_has_text -> _load_pdf -> load_document -> the caller
        )


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
