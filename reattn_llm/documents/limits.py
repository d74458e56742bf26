"""How much text one read may produce: ``max_chars``, checked as the text grows, never after.

A document's text is refused (:class:`DocumentTooLargeError`) as soon as it passes ``max_chars``
characters: before a PDF page's content stream is parsed when that stream alone is longer, while
a page is extracted, and before a text file is decoded when its bytes cannot fit. Nothing is
accumulated, tokenized or sent to a model first.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, DocumentError

__all__ = ["DEFAULT_MAX_CHARS", "CharBudget", "DocumentTooLargeError", "check_max_chars", "text_too_large"]

#: Default ``max_chars`` of :func:`~reattn_llm.documents.load_document`: 20 million characters,
#: about five million tokens, several times what the largest context measured here holds.
DEFAULT_MAX_CHARS = 20_000_000

_HINT = "Pass a larger max_chars= (max_chars=None for no limit)"


class DocumentTooLargeError(DocumentError):
    """The document holds more text than ``max_chars`` allows; nothing was tokenized."""


def check_max_chars(max_chars: Any) -> None:
    """Raise :class:`ConfigError` unless ``max_chars`` is ``None`` or a positive integer."""
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ConfigError(
            f"max_chars must be a positive integer or None (no limit), got {max_chars!r}; "
            f"the default is {DEFAULT_MAX_CHARS:,}."
        )


def text_too_large(source: str, *, chars: int | None = None, data: int | None = None, limit: int) -> None:
    """Refuse a text file of ``data`` bytes (before decoding) or ``chars`` characters (after)."""
    if data is not None and data > 4 * limit:  # no encoding read here spends more than 4 bytes a character
        raise DocumentTooLargeError(
            f"{source} holds {data:,} bytes, more than 4 x max_chars={limit:,} characters can take. "
            f"{_HINT}, or split the file."
        )
    if chars is not None and chars > limit:
        raise DocumentTooLargeError(
            f"{source} holds {chars:,} characters, more than max_chars={limit:,}. {_HINT}, or split the file."
        )


class CharBudget:
    """The characters one PDF read may still produce.

    :meth:`check_content` refuses a page whose content stream alone is longer than the limit
    (pypdf's parse of a content stream takes about 40 bytes of memory per byte); :meth:`visit_text`
    (pypdf's ``visitor_text`` hook) counts a page's text as it is extracted, and :meth:`add_page`
    counts the cleaned text of each finished page.
    """

    def __init__(self, source: str, limit: int | None, pages: int) -> None:
        self.source = source
        self.limit = limit
        self.pages = pages
        self.used = 0
        self.page = 0
        self._pending = 0
        self.exceeded = False

    def start_page(self, number: int, content_length: int | None) -> None:
        """Begin page ``number`` (1-based), whose content stream holds ``content_length`` bytes."""
        self.page, self._pending = number, 0
        if self.limit is not None and content_length is not None and content_length > self.limit:
            self.exceeded = True
            raise DocumentTooLargeError(
                f"{self.source}: the content stream of page {number} holds {content_length:,} characters, "
                f"more than max_chars={self.limit:,}. {_HINT}, or read fewer pages with max_pages=."
            )

    def visit_text(self, text: str, *_: Any) -> None:
        """pypdf ``visitor_text`` hook: refuse once the text so far passes the limit."""
        self._pending += len(text)
        self.check()

    def check(self) -> None:
        """Raise once the limit is passed (again on every later call: pypdf swallows some errors)."""
        if self.limit is None:
            return
        if self.exceeded or self.used + self._pending > self.limit:
            self.exceeded = True
            raise DocumentTooLargeError(
                f"{self.source}: its text passes max_chars={self.limit:,} characters at page {self.page} of "
                f"{self.pages}. {_HINT}, or read fewer pages with max_pages=."
            )

    def add_page(self, chars: int) -> None:
        """Count a finished page's ``chars`` characters."""
        self.used += chars
        self._pending = 0
        self.check()
