"""One request's hold on the model while it is answered.

Requests to one engine interleave: each unit of model work (a prefill, a decode step) takes the
engine's lock on its own. What the patched model's attention reads and leaves behind for a
request (its selection recorder for citations, its largest RoPE position) is therefore put in
place for each unit and taken back after it, never left for the next request to find.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from ..errors import OutOfMemoryError
from ..method.state import PatchState, SelectionRecorder
from .fifo import Turn

#: ``on_progress(done, total, elapsed_s)``: prompt tokens prefilled so far, of ``total``.
ProgressFn = Callable[[int, int, float], None]


class PrefillProgress:
    """A prefill's progress, as a context manager: a tqdm bar (tokens, tokens/s, ETA) when ``show``,
    closed on exit, and the caller's ``on_progress`` after each forward (:meth:`update`)."""

    def __init__(self, total: int, show: bool, on_progress: ProgressFn | None) -> None:
        self.total, self.done, self.on_progress, self.t0 = total, 0, on_progress, time.perf_counter()
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, unit="tok", unit_scale=True, desc="prefill", leave=False, dynamic_ncols=True
            )

    def __enter__(self) -> PrefillProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, done: int) -> None:
        """``done`` of the prompt's tokens are prefilled."""
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        if self.on_progress is not None:
            self.on_progress(done, self.total, time.perf_counter() - self.t0)


class Request:
    """``with request:`` around one unit of model work: the request's :class:`~reattn_llm.runtime.fifo.Turn`
    on the engine, and its own attention state in the patched model (``state``) for that unit.

    Args:
        turn: the request's turn on the engine's lock.
        state: the patched model's :class:`~reattn_llm.method.patch.PatchState` (None: unpatched).
    """

    def __init__(self, turn: Turn, state: PatchState | None) -> None:
        self.turn = turn
        self._state = state
        self._saved: tuple[Any, Any] = (None, None)
        self.recorder: SelectionRecorder | None = None
        self.max_position: torch.Tensor | None = None

    def __enter__(self) -> Request:
        self.turn.__enter__()
        if self._state is not None:
            self._saved = (self._state.recorder, self._state.max_position)
            self._state.recorder, self._state.max_position = self.recorder, self.max_position
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state is not None:
            self.max_position = self._state.max_position
            self._state.recorder, self._state.max_position = self._saved
        self.turn.__exit__()

    def record_selections(self) -> None:
        """Count, from now on, how often this request's selections draw on each cache row."""
        self.recorder = SelectionRecorder()

    def selection_counts(self, rows: int) -> torch.Tensor | None:
        """``[rows]`` selections per cache row since :meth:`record_selections` (fp32, on the CPU),
        or None when nothing was recorded."""
        if self.recorder is None or self.recorder.counts is None:
            return None
        return self.recorder.counts[:rows].float().cpu()

    def largest_position(self, default: int) -> int:
        """The largest RoPE position this request's forwards applied (``default`` if untracked)."""
        return default if self.max_position is None else int(self.max_position)


def freed_after_oom(
    error: torch.OutOfMemoryError, prompt_tokens: int, device: torch.device
) -> OutOfMemoryError:
    """The package's :class:`~reattn_llm.errors.OutOfMemoryError` for a request whose cache was just
    dropped: the frames below the handler (which still hold the cache) are cleared and the CUDA
    allocator's cache emptied, so the next request starts with the memory back."""
    if error.__traceback__ is not None and error.__traceback__.tb_next is not None:
        traceback.clear_frames(error.__traceback__.tb_next)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return OutOfMemoryError(
        f"Ran out of memory with {prompt_tokens} prompt tokens on {device}; the request's cache was freed. "
        "Use a shorter document, a smaller local_size/chunk_size, or a device with more memory."
    )
