"""A folder of prefilled documents shared by every process: the CLI, the wrappers, a server.

:class:`DocumentStore` keeps each prefilled document (the K/V of a prompt's beginning, up to a
chunk boundary) as one safetensors file of :mod:`~reattn_llm.runtime.prefix` (checksummed, checked
against the model before use), named by a SHA-256 of the model, dtype and config
(:attr:`CacheSpec.meta`) and the token ids it holds. A later prompt over the same document, in any
engine of the same model and config, finds the longest stored beginning of its own ids and
prefills only the rest (the question, and less than one chunk of the document).

The folder is bounded in bytes: the least recently used files go first (a hit refreshes a file's
modification time), and a document larger than the whole bound is not stored. A document counts
the bytes its file will take (:func:`~reattn_llm.runtime.prefix.file_bytes`, known before it is
written: Gemma 3's sliding-window layers only their window's rows, fp8 or offloaded rows in the
model's dtype, as saved). A damaged file is ignored with a warning, deleted, and the document
prefilled again. The default folder is
``$REATTN_LLM_PREFIX_DIR`` or ``prefixes/`` under ``$REATTN_LLM_CACHE`` (``~/.cache/reattn-llm``);
``REATTN_LLM_PREFIX_BYTES`` sets the bound and ``REATTN_LLM_NO_CACHE=1`` turns the store off.
Files are trusted input (see :mod:`~reattn_llm.runtime.prefix`): keep the folder private.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from array import array
from pathlib import Path

from ..errors import ConfigError
from .models import cache_dir
from .prefix import FORMAT, CacheFileError, CacheSpec, Prefix, file_bytes, load_prefix, save_prefix

__all__ = ["DEFAULT_MAX_BYTES", "DocumentStore"]

#: Default bound of the store: 8 GiB (about 180K tokens of the default model in fp32 on a CPU).
DEFAULT_MAX_BYTES = 8 * 1024**3
ENV_DIR, ENV_BYTES, ENV_OFF = "REATTN_LLM_PREFIX_DIR", "REATTN_LLM_PREFIX_BYTES", "REATTN_LLM_NO_CACHE"
_SUFFIX = ".safetensors"


class DocumentStore:
    """Prefilled documents on disk, keyed by model, config and token ids, bounded to ``max_bytes``.

    Args:
        root: the folder (created on first write).
        max_bytes: the most bytes its files may take together (least recently used go first).
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigError(
                f"max_bytes={max_bytes!r}: the store's bound must be a positive number of bytes."
            )
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes

    @classmethod
    def default(cls) -> DocumentStore | None:
        """The store of this user (see the module's docs), or None when ``REATTN_LLM_NO_CACHE`` is set."""
        if os.environ.get(ENV_OFF, "").strip().lower() not in ("", "0", "false", "no"):
            return None
        root = os.environ.get(ENV_DIR) or cache_dir() / "prefixes"
        raw = os.environ.get(ENV_BYTES)
        try:
            limit = int(float(raw)) if raw else DEFAULT_MAX_BYTES
        except (ValueError, OverflowError) as e:  # OverflowError: inf
            raise ConfigError(f"{ENV_BYTES}={raw!r}: give a number of bytes, such as 4e9.") from e
        return cls(root, limit)

    def __repr__(self) -> str:
        return f"DocumentStore({str(self.root)!r}, max_bytes={self.max_bytes:,})"

    # -- lookup --------------------------------------------------------------------------------
    def _keys(self, spec: CacheSpec, ids: list[int], lengths: list[int]) -> dict[int, str]:
        """The file key of ``ids[:n]`` for each ``n`` of ``lengths`` (ascending), hashed incrementally."""
        h = hashlib.sha256(json.dumps([FORMAT, spec.meta], sort_keys=True).encode())
        raw = array("q", ids[: lengths[-1]] if lengths else []).tobytes()
        keys, done = {}, 0
        for n in lengths:
            h.update(raw[8 * done : 8 * n])
            keys[n], done = h.copy().hexdigest(), n
        return keys

    def path(self, spec: CacheSpec, ids: list[int]) -> Path:
        """Where the prefilled ``ids`` of an engine of ``spec`` are (or would be) stored."""
        return self.root / f"{self._keys(spec, ids, [len(ids)])[len(ids)]}{_SUFFIX}"

    def find(self, spec: CacheSpec, ids: list[int], chunk: int, longer_than: int = 0) -> Prefix | None:
        """The longest stored beginning of ``ids`` on the ``chunk`` grid (longer than ``longer_than``
        tokens, shorter than ``ids``), loaded for ``spec``; None when there is none."""
        stored = {p.name.removesuffix(_SUFFIX) for p in self._files()}
        if not stored:
            return None
        lengths = list(range(chunk, len(ids), chunk))
        keys = self._keys(spec, ids, lengths)
        for n in reversed(lengths):
            if n <= longer_than:
                break
            if keys[n] not in stored:
                continue
            path = self.root / f"{keys[n]}{_SUFFIX}"
            try:
                prefix = load_prefix(path, spec)
                if prefix.ids != ids[:n]:
                    raise CacheFileError(f"{path}: its token ids are not the ones its name hashes.")
            except CacheFileError as e:
                if path.is_file():  # another process may have evicted it meanwhile: no warning then
                    warnings.warn(
                        f"Ignoring a damaged prefilled document ({e}); it is deleted and recomputed.",
                        stacklevel=2,
                    )
                    path.unlink(missing_ok=True)
                continue
            _touch(path)
            return prefix
        return None

    # -- storing -------------------------------------------------------------------------------
    def put(self, spec: CacheSpec, prefix: Prefix) -> Path | None:
        """Store the reusable part of ``prefix`` (unless there already), then evict down to the bound;
        returns its file, or None when it is larger than the whole bound or cannot be written."""
        n = prefix.reusable
        if n <= 0:
            return None
        path = self.path(spec, prefix.ids[:n])
        if path.is_file():
            _touch(path)
            return path
        size = file_bytes(spec.layout, n, spec.meta)  # the file's own size: sliding layers hold their window
        if size > self.max_bytes:
            warnings.warn(
                f"This document's prefill ({size / 1e9:.2f} GB for {n:,} tokens) is larger than the whole "
                f"document store ({self.max_bytes / 1e9:.2f} GB): not kept on disk. Raise {ENV_BYTES} to keep it.",
                stacklevel=2,
            )
            return None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._evict(self.max_bytes - size)
            save_prefix(prefix, path, spec.meta, spec.layout)
        except (OSError, CacheFileError) as e:
            warnings.warn(f"Could not keep the prefilled document in {self.root} ({e}).", stacklevel=2)
            return None
        return path

    def size(self) -> int:
        """Bytes its files take."""
        return sum(_stat_size(p) for p in self._files())

    def clear(self) -> None:
        """Delete every stored document."""
        for p in self._files():
            p.unlink(missing_ok=True)

    def _files(self) -> list[Path]:
        return sorted(self.root.glob(f"*{_SUFFIX}")) if self.root.is_dir() else []

    def _evict(self, budget: int) -> None:
        """Delete the least recently used files until the others take at most ``budget`` bytes."""
        entries = []
        for p in self._files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, p))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, p in entries:
            if total <= budget:
                break
            p.unlink(missing_ok=True)
            total -= size


def _touch(path: Path) -> None:
    try:
        os.utime(path)  # the least recently used go first
    except OSError:
        pass


def _stat_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
