"""One answer as it is generated: a :class:`Stream` of text deltas that ends with a :class:`Completion`.

Every front end builds on the one stream :meth:`~reattn_llm.runtime.engine.Engine.generate`
returns: ``for delta in stream`` to show text as it comes, :meth:`Stream.complete` for the whole
answer, and ``async for`` / :meth:`Stream.acomplete` in a coroutine (the model then runs in a
worker thread and the event loop never blocks).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from .citations import Citation
from .fifo import Cancelled, Turn


@dataclass
class Completion:
    """One answer and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    prefill_seconds: float
    decode_seconds: float
    model_name: str
    citations: list[Citation] = field(default_factory=list)
    max_position: int = -1


class Stream:
    """The answer to one request, as it is generated.

    Iterating yields the answer's text deltas; once they are exhausted, :attr:`completion` holds
    the :class:`Completion` (the whole text, token counts, timings, citations). Nothing runs until
    the first delta is asked for. Between deltas the stream holds no lock: another request may use
    the engine meanwhile (a suspended stream never blocks one). :meth:`close` (or the end of a
    ``with`` block) abandons the request and frees its cache.

    Args:
        deltas: the engine's generator of text deltas, returning the :class:`Completion`.
        turn: the request's :class:`~reattn_llm.runtime.fifo.Turn` on the engine.
    """

    def __init__(self, deltas: Generator[str, None, Completion], turn: Turn) -> None:
        self._deltas = deltas
        self._turn = turn
        self._worker: threading.Thread | None = None
        self.completion: Completion | None = None

    # -- synchronous -------------------------------------------------------------------------------
    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._deltas)
        except StopIteration as end:
            if self.completion is None:
                self.completion = end.value
            raise

    def complete(self, on_delta: Callable[[str], Any] | None = None) -> Completion:
        """Run to the end and return the :class:`Completion`, calling ``on_delta`` with each delta.

        The request keeps the engine from its first unit of work to its last (nothing else is run
        in between), so requests completed this way are served whole, in arrival order.
        """
        with self._turn, closing(self):
            for delta in self:
                if on_delta is not None:
                    on_delta(delta)
        assert self.completion is not None
        return self.completion

    def close(self) -> None:
        """Abandon the request if it is unfinished: its cache is freed and the engine goes on (an
        async run stops at its next prefill chunk or token)."""
        self._turn.cancel()
        if self._worker is not None:  # an async run's worker ends the generator itself
            return
        try:
            self._deltas.close()
        except ValueError:  # running in another thread: it stops at its next unit (Cancelled)
            pass

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- asynchronous ------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[str]:
        return self._from_worker()

    async def _from_worker(self) -> AsyncIterator[str]:
        """The deltas of :meth:`complete` run in a worker thread, handed over through an asyncio
        queue. If the consumer goes away (``break``, ``aclose()``, task cancellation), the worker
        abandons the request at its next prefill chunk or token. No timeout: a long prefill just
        takes long."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self._turn.cancel()

        def work() -> None:
            try:
                put("done", self.complete(on_delta=lambda delta: put("delta", delta)))
            except Cancelled:
                pass
            except BaseException as error:  # handed to the awaiting coroutine, raised there
                put("error", error)

        self._worker = threading.Thread(target=work, name="reattn-generate", daemon=True)
        self._worker.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    yield value
                elif kind == "done":
                    return
                else:
                    raise value
        finally:
            self._turn.cancel()

    async def acomplete(self, on_delta: Callable[[str], Any] | None = None) -> Completion:
        """Async :meth:`complete` that never blocks the event loop (``on_delta`` may be async)."""
        deltas = self._from_worker()
        try:
            async for delta in deltas:
                if on_delta is not None:
                    result = on_delta(delta)
                    if asyncio.iscoroutine(result):
                        await result
        finally:
            await deltas.aclose()
        assert self.completion is not None
        return self.completion
