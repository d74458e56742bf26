"""A first-come, first-served lock: requests to one engine run in arrival order."""

from __future__ import annotations

import threading


class FifoLock:
    """Like ``threading.Lock``, but waiters acquire strictly in the order they asked (tickets),
    so no request waits longer than the requests ahead of it."""

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
        """Requests queued or running."""
        with self._cond:
            return self._next_ticket - self._serving
