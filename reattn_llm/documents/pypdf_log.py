"""pypdf's log records while a PDF is read: counted, kept at DEBUG level, never on stderr.

pypdf reports what it repaired or skipped through the ``logging`` loggers under ``pypdf``. With no
logging configured, Python prints every one of them on stderr (16,505 lines for one damaged file).
While a PDF is read, :func:`capture` takes the records of the reading thread off pypdf's loggers:
each is re-logged at DEBUG level on ``reattn_llm.documents`` and counted in a :class:`PypdfLog`,
which sorts out the records that mean text was dropped. Records of other threads go on as if
nothing were installed, and pypdf's logger is restored when the last read ends.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PypdfLog", "capture"]

_LOGGER = logging.getLogger("reattn_llm.documents")
#: pypdf messages (their templates) that mean text of the page was not extracted.
_DROPPED = (
    "further form content is skipped",
    "Impossible to decode XFormObject",
    "Page contents are not a stream or an array",
)


class PypdfLog:
    """pypdf's records during the read of one PDF (filled in the reading thread)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.page: int | None = None  # the page being read, set by the reader
        self.total = 0
        self.repaired: Counter[str] = Counter()
        self.dropped: dict[str, list[int]] = {}

    def add(self, record: logging.LogRecord) -> None:
        """Count one record and re-log it at DEBUG level on ``reattn_llm.documents``."""
        message = record.getMessage()
        self.total += 1
        where = f"page {self.page}: " if self.page is not None else ""
        _LOGGER.debug("%s: %spypdf: %s", self.source, where, message)
        if any(marker in str(record.msg) for marker in _DROPPED):
            pages = self.dropped.setdefault(message, [])
            if self.page is not None and self.page not in pages:
                pages.append(self.page)
        else:
            self.repaired[message] += 1

    def dropped_notes(self) -> list[str]:
        """One sentence per kind of text pypdf dropped, naming the pages."""
        notes = []
        for message, pages in self.dropped.items():
            where = f" of page(s) {', '.join(map(str, pages))}" if pages else ""
            hint = ""
            if "form XObject invocations" in message:
                hint = (
                    " To read it, raise pypdf's limit around the call: `with pypdf.apply_configuration("
                    "xform_maximum_invocations_per_extraction=...): load_document(...)`."
                )
            notes.append(f"{self.source}: pypdf dropped text{where}: {message}{hint}")
        return notes

    def repaired_note(self) -> str | None:
        """One sentence for everything else pypdf reported (it repaired it and read on), or None."""
        count = sum(self.repaired.values())
        if not count:
            return None
        common = "; ".join(f"{n:,} x {message}" for message, n in self.repaired.most_common(2))
        more = "; ..." if len(self.repaired) > 2 else ""
        problems = "problem" if count == 1 else "problems"
        return (
            f"{self.source}: pypdf reported {count:,} {problems} while reading it, repaired as it went "
            f"({common}{more}); set logging to DEBUG for 'reattn_llm.documents' to see each."
        )


class _Router(logging.Handler):
    """On the ``pypdf`` logger while any PDF is read: a reading thread's records go to its log."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.logs: dict[int, PypdfLog] = {}

    def emit(self, record: logging.LogRecord) -> None:
        log = self.logs.get(record.thread) if record.thread is not None else None
        if log is not None:
            log.add(record)
        else:  # another thread's record: on to the handlers above ``pypdf``, as it would have gone
            logging.getLogger().callHandlers(record)


_LOCK = threading.Lock()
_ROUTER: list[_Router] = []  # created on the first read (no logging objects at import time)
_SAVED_PROPAGATE: list[bool] = []


@contextmanager
def capture(log: PypdfLog) -> Iterator[PypdfLog]:
    """Route pypdf's records of the calling thread to ``log`` until the block ends."""
    pypdf_logger = logging.getLogger("pypdf")
    ident = threading.get_ident()
    with _LOCK:
        if not _ROUTER:
            _ROUTER.append(_Router())
        router = _ROUTER[0]
        if not router.logs:
            _SAVED_PROPAGATE.append(pypdf_logger.propagate)
            pypdf_logger.addHandler(router)
            pypdf_logger.propagate = False
        router.logs[ident] = log
    try:
        yield log
    finally:
        with _LOCK:
            del router.logs[ident]
            if not router.logs:
                pypdf_logger.removeHandler(router)
                pypdf_logger.propagate = _SAVED_PROPAGATE.pop()
