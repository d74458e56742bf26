"""Text files: decoding bytes of an unknown encoding, telling text from binary data, cleanup.

:func:`load_text` turns a text file's bytes into a one-page :class:`Document`. The encoding is
found from a BOM (UTF-16/32), else UTF-8 is tried, else the bytes are read as Windows-1252 (which
reads Latin-1 text the same). Bytes that cannot be decoded become U+FFFD, and the document says
which ones (:attr:`Document.warnings`, and a warning logged on ``reattn_llm.documents``).
:func:`clean_text` is the light cleanup every extracted text goes through (PDF pages too).
"""

from __future__ import annotations

import logging
import re

from ..errors import EmptyDocumentError, UnsupportedDocumentError
from .document import Document, PageSpan
from .limits import text_too_large

__all__ = ["SUPPORTED_FORMATS", "clean_text", "decode_text", "load_text"]

#: Human-readable list of what the loader reads, used in error messages.
SUPPORTED_FORMATS = "PDF (.pdf) and plain text (UTF-8, UTF-16, Windows-1252 or Latin-1: .txt, .md, ...)"

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
# The five bytes Windows-1252 leaves undefined.
_CP1252_UNDEFINED_RE = re.compile(b"[\x81\x8d\x8f\x90\x9d]")
# How many replaced bytes a warning names (with their offsets) before it says "...".
_SHOWN = 3
_LOGGER = logging.getLogger(__name__)


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


def load_text(data: bytes, source: str, max_chars: int | None = None) -> Document:
    """A text file's bytes as a one-page :class:`Document` (``metadata["encoding"]`` says how).

    Refused with :class:`~.limits.DocumentTooLargeError` when it holds more than ``max_chars``
    characters (checked on the bytes before decoding, and on the text after).
    """
    if max_chars is not None:
        text_too_large(source, data=len(data), limit=max_chars)
    text, encoding, notes = decode_text(data, source)
    text = clean_text(text)
    if not text.strip():
        raise EmptyDocumentError(
            f"{source} holds only whitespace and control characters: there is nothing to read."
        )
    if max_chars is not None:
        text_too_large(source, chars=len(text), limit=max_chars)
    for note in notes:
        _LOGGER.warning("%s", note)
    metadata = {"source": source, "pages": 1, "format": "text", "encoding": encoding}
    return Document(text, [PageSpan(1, 0, len(text))], source, metadata, notes)


def decode_text(data: bytes, source: str) -> tuple[str, str, list[str]]:
    """Decode a text file: UTF-16/32 with a BOM, else UTF-8 (BOM or not), else Windows-1252.

    Returns the text, the encoding (with what was replaced, if anything) and one sentence per kind
    of replacement (the bytes and their offsets), for :attr:`Document.warnings`.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _checked_text(data.decode(encoding), source), encoding, []
            except UnicodeDecodeError as error:
                raise _binary_error(data, source, f"it starts like {encoding} text but is not") from error
    if b"\x00" in data:
        raise _binary_error(data, source, "it holds binary data (NUL bytes)")
    try:
        return _checked_text(data.decode("utf-8-sig"), source), "utf-8", []
    except UnicodeDecodeError:
        pass
    if len(data.translate(None, _C0_CONTROLS)) < len(data) * (1 - _MAX_CONTROL_SHARE):
        raise _binary_error(data, source, "it holds binary data")
    mostly_utf8 = _mostly_utf8(data)
    if mostly_utf8 is not None:
        return mostly_utf8, "utf-8 (invalid bytes replaced)", [_utf8_note(data, mostly_utf8, source)]
    # Windows-1252 reads Latin-1 text the same, and gives the curly quotes, dashes and euro sign of
    # 0x80-0x9f (C1 controls in Latin-1, never text). Its five undefined bytes become U+FFFD.
    text = data.decode("cp1252", errors="replace")
    undefined = list(_CP1252_UNDEFINED_RE.finditer(data))
    if not undefined:
        return text, "cp1252", []
    n = len(undefined)
    shown = ", ".join(f"0x{m.group()[0]:02x} at byte {m.start()}" for m in undefined[:_SHOWN])
    more = ", ..." if n > _SHOWN else ""
    bytes_were = "1 byte undefined in Windows-1252" if n == 1 else f"{n:,} bytes undefined in Windows-1252"
    verb = "was" if n == 1 else "were"
    note = f"{source}: {bytes_were} ({shown}{more}) {verb} replaced with U+FFFD."
    return text, f"cp1252 ({n:,} undefined byte{'s' if n > 1 else ''} replaced)", [note]


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 text with a few damaged bytes, decoded with U+FFFD for them; ``None`` if it is not.

    A legacy 8-bit file has (almost) no valid multi-byte UTF-8 sequences, while a UTF-8 file with a
    stray bad byte has many more valid non-ASCII characters than damaged ones.
    """
    text = data.decode("utf-8-sig", errors="replace")
    damaged = text.count("\ufffd") - data.count("\ufffd".encode())
    valid = len(_NON_ASCII_RE.findall(text))
    return text if valid >= 10 * max(damaged, 1) else None


def _utf8_note(data: bytes, text: str, source: str) -> str:
    """The sentence saying which invalid UTF-8 sequences were replaced (the first few, with offsets)."""
    n = text.count("\ufffd") - data.count("\ufffd".encode())
    shown: list[str] = []
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while len(shown) < _SHOWN:
        try:
            data[start:].decode("utf-8")
            break
        except UnicodeDecodeError as error:
            bad = data[start + error.start : start + error.end]
            shown.append(f"{' '.join(f'0x{b:02x}' for b in bad)} at byte {start + error.start}")
            start += error.end
    more = ", ..." if n > len(shown) else ""
    if n == 1:
        return f"{source}: 1 invalid UTF-8 sequence ({shown[0]}) was replaced with U+FFFD."
    return f"{source}: {n:,} invalid UTF-8 sequences ({', '.join(shown)}{more}) were replaced with U+FFFD."


def _checked_text(text: str, source: str) -> str:
    controls = sum(1 for _ in _CONTROL_RE.finditer(text, 0, 1_000_000))
    if controls > min(len(text), 1_000_000) * _MAX_CONTROL_SHARE:
        raise _binary_error(text.encode("utf-8", "replace")[:16], source, "it holds binary data")
    return text


def _binary_error(data: bytes, source: str, why: str) -> UnsupportedDocumentError:
    """The error for bytes that are neither PDF nor text, naming the file type when it is a known one."""
    kind = next((name for magic, name in _KNOWN_BINARIES if data.startswith(magic)), None)
    what = f"it looks like {kind}" if kind else why
    return UnsupportedDocumentError(
        f"{source} is neither a PDF nor a text file ({what}). Supported formats: {SUPPORTED_FORMATS}. "
        "Convert it to PDF or plain text first."
    )
