"""Document slots: the prefilled K/V of the last few documents, kept so that alternating questions
over two or three documents prefill only the questions.

The engine keeps one prefix (the last prompt's K/V, :class:`~reattn_llm.runtime.prefix.PrefixStore`).
:class:`DocumentSlots` is that store with several slots: a least-recently-used list of prefixes
bounded in bytes, put in the engine's place (``engine.prefixes``). Every kept prefix is also
written through to the engine's on-disk :class:`~reattn_llm.runtime.prefix_store.DocumentStore`
(when it has one), so a slot evicted from memory is read back from disk on its next question
instead of being prefilled again. Reuse follows the engine's rule: up to a chunk boundary of the
regular prefill grid, so a reused document is exactly what a fresh prefill computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..kv.cache import ReAttentionCache
from ..runtime.prefix import CacheSpec, Prefix, PrefixStore

__all__ = ["DEFAULT_SLOT_BYTES", "DocumentSlots"]

#: Default bound of the slots kept in memory: 2 GiB.
DEFAULT_SLOT_BYTES = 2 * 1024**3


def prefix_bytes(prefix: Prefix) -> int:
    """Bytes a kept prefix holds (device and host K/V)."""
    cache = prefix.cache
    return int(cache.nbytes()) + int(cache.host_nbytes())


def croppable(cache: ReAttentionCache, n: int) -> bool:
    """Whether every layer of ``cache`` can be cut back to ``n`` tokens exactly (a sliding-window
    layer holds only its last rows, and snapshots of a few earlier lengths)."""
    return all(getattr(layer, "can_crop", lambda _: True)(n) for layer in cache.layers)


class DocumentSlots(PrefixStore):
    """A :class:`PrefixStore` that keeps the prefixes of several documents (most recent last).

    Args:
        max_bytes: the most bytes the slots in memory may hold together (the least recently used go
            first; the newest is always kept, as the engine keeps its one prefix).
        disk: the engine's :class:`~reattn_llm.runtime.prefix_store.DocumentStore`, or None.
        spec: the engine's :class:`CacheSpec` (asked for when the disk is used).
        enabled: False keeps nothing in memory.

    A request :meth:`take` s the slot sharing the longest reusable beginning with its prompt (it then
    owns that cache) and :meth:`keep` s its own prompt's cache when done (:meth:`PrefixStore.keep`:
    written through to disk, then the newest slot, evicting the least recently used beyond
    :attr:`max_bytes`); a kept document supersedes slots whose reusable part it starts with.
    Called under the engine's lock.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_SLOT_BYTES,
        disk: Any = None,
        spec: Callable[[], CacheSpec] | None = None,
        enabled: bool = True,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes={max_bytes!r}: the slots' bound must be a positive number of bytes.")
        self._slots: list[Prefix] = []
        self._guard = threading.Lock()  # stats are read from the server's event loop
        self.max_bytes = max_bytes
        self.hits = {"memory": 0, "disk": 0, "miss": 0}
        super().__init__(enabled=enabled, disk=disk, spec=spec)

    @classmethod
    def replace(cls, engine: Any, max_bytes: int = DEFAULT_SLOT_BYTES) -> DocumentSlots:
        """Put slots in ``engine``'s place (keeping its disk store and its kept prefix); returns them."""
        old: PrefixStore = engine.prefixes
        slots = cls(max_bytes, disk=old.disk, spec=old.spec, enabled=old.enabled)
        if old.prefix is not None:
            slots.prefix = old.prefix
        engine.prefixes = slots
        return slots

    # -- PrefixStore's interface ------------------------------------------------------------------
    @property  # type: ignore[override]
    def prefix(self) -> Prefix | None:
        """The most recently kept slot (what the engine reports, saves and counts as reusable)."""
        with self._guard:
            return self._slots[-1] if self._slots else None

    @prefix.setter
    def prefix(self, value: Prefix | None) -> None:
        if value is not None:  # keep() and Engine.load_prefix: one more slot
            self._add(value)

    def take(self, ids: list[int], chunk: int) -> tuple[ReAttentionCache | None, int]:
        """The cache of the slot (or stored file) sharing the longest reusable beginning with ``ids``,
        cropped to it, and its length (a multiple of ``chunk``); ``(None, 0)`` when none does. A slot
        whose sliding-window layers no longer hold the rows to cut back to stays for other prompts."""
        best, n = None, 0
        with self._guard:
            if self.enabled:
                for slot in self._slots:
                    m = slot.reuse_length(ids, chunk)
                    if m > n and croppable(slot.cache, m):
                        best, n = slot, m
            if best is not None:
                self._slots.remove(best)  # the request owns it now
        where = "memory"
        if self.disk is not None and self.spec is not None:
            found = self.disk.find(self.spec(), ids, chunk, longer_than=n)
            if found is not None:
                if best is not None:
                    self._add(best)  # still good for another prompt
                best, n, where = found, found.reusable, "disk"
        if best is None or n == 0:
            self.hits["miss"] += 1
            return None, 0
        self.hits[where] += 1
        for layer in best.cache.layers:
            layer.crop(n)  # type: ignore[union-attr]
        return best.cache, n

    def forget(self) -> None:
        """Free every slot's K/V (files on disk stay)."""
        with self._guard:
            self._slots.clear()

    # -- slots --------------------------------------------------------------------------------------
    def _add(self, prefix: Prefix) -> None:
        head = prefix.ids[: prefix.reusable]
        with self._guard:
            self._slots = [
                s
                for s in self._slots
                if not (s.reusable <= prefix.reusable and s.ids[: s.reusable] == head[: s.reusable])
            ]
            self._slots.append(prefix)
            while len(self._slots) > 1 and sum(map(prefix_bytes, self._slots)) > self.max_bytes:
                self._slots.pop(0)  # on disk too when the engine has a store: read back from there

    def stats(self) -> dict[str, Any]:
        """Slots in memory (tokens, reusable tokens, bytes; oldest first), their total and the hits."""
        with self._guard:
            slots = [
                {"tokens": len(s.ids), "reusable_tokens": s.reusable, "bytes": prefix_bytes(s)}
                for s in self._slots
            ]
        return {
            "slots": slots,
            "bytes": sum(s["bytes"] for s in slots),
            "max_bytes": self.max_bytes,
            "hits": dict(self.hits),
            "disk": None if self.disk is None else str(self.disk.root),
        }
