"""Taking turns on one engine: a first-come, first-served lock, and a request's turn on it."""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """Raised inside a request whose caller went away, at its next unit of model work."""


class FifoLock:
    """Like ``threading.Lock``, but waiters acquire strictly in the order they asked (tickets),
    so no holder waits longer than the holders ahead of it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                self._cond.wait()

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def waiting(self) -> int:
        """Holders queued or running (0: the engine is idle)."""
        with self._cond:
            return self._next_ticket - self._serving


class Turn:
    """One request's claim on an engine's :class:`FifoLock`.

    ``with turn:`` around each unit of model work (a prefill, a decode step) holds the lock for
    that unit only, so a stream suspended between its deltas holds nothing. Holds nest: a caller
    that runs a request to its end without handing control to anyone in between takes the turn once
    around the whole run, keeping its place in the arrival order; the inner holds then cost nothing.
    After :meth:`cancel`, the next ``with turn:`` (or :meth:`check`) raises :class:`Cancelled`.
    A turn belongs to one request, used by one thread at a time.
    """

    def __init__(self, lock: FifoLock) -> None:
        self._lock = lock
        self._depth = 0
        self._cancelled = threading.Event()

    def __enter__(self) -> Turn:
        if self._depth == 0:
            self.check()
            self._lock.acquire()
        self._depth += 1
        if self._cancelled.is_set():
            self.__exit__()
            raise Cancelled("the request was cancelled")
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._lock.release()

    def cancel(self) -> None:
        """Stop the request at its next unit of model work (safe from any thread)."""
        self._cancelled.set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the request was cancelled (called between prefill forwards)."""
        if self._cancelled.is_set():
            raise Cancelled("the request was cancelled")
