"""Reusable document caches: a prefilled prompt prefix kept in memory and saved to disk.

A second question over the same document only prefills its own tokens: the engine keeps the
K/V of the last prompt and reuses the longest common token prefix with the next one. Reuse stops
at a chunk boundary of the regular prefill grid, so the reused K/V are exactly those a fresh
prefill would compute (each chunk's selection is voted by that chunk's queries only).

On disk a prefix is one safetensors file (no pickle): per-layer un-rotated K/V up to the reusable
length, the token ids, and metadata (format, model, dtype, config, chunk) with a checksum of
every tensor. Loading checks the metadata against the engine, the structure against the model
(:class:`CacheLayout`: layers, K/V shapes, row counts, dtypes, token ids) before any tensor is
read, and every checksum. Gemma 3's sliding-window layers are saved as the rows they hold at the
saved length (the last ``sliding_window - 1`` of them, :meth:`~reattn_llm.kv.cache.SlidingLayer.rows_at`)
and restored as such, so a loaded prefix continues exactly as the one that was saved. A cache file is
trusted input: the checksums catch corruption
(truncation, flipped bytes), not forgery; anyone who can write the file can change what the
model reads. :mod:`~reattn_llm.runtime.prefix_store` keeps such files in a bounded folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ReAttentionError
from ..kv.cache import ReAttentionCache, SlidingLayer
from ..kv.storage import KVStorage
from ..method.families import sliding_windows, text_config
from .models import load_config

FORMAT = "reattn-llm/prefix-cache/1"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_AGAIN = "Delete it and prefill the document again."
#: Hex digits of one :func:`fingerprint`.
_SUM_CHARS = 32


class CacheFileError(ReAttentionError, ValueError):
    """A saved document cache that is corrupt, truncated, or made for another model/config."""


@dataclass(frozen=True)
class CacheLayout:
    """What a document cache of one model holds: per layer a K and a V of shape
    ``[1, kv_heads, rows, head_dim]`` in ``dtype`` (the model's compute dtype), and ``T`` token ids
    (int64, each below ``vocab_size``). ``rows`` is ``T``, or for a sliding-window layer (``sliding``:
    per layer its window, or None) the ``min(T, window - 1)`` rows it holds (:meth:`rows`)."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    vocab_size: int | None = None
    sliding: tuple[int | None, ...] | None = None

    @classmethod
    def of(cls, model_config: Any, dtype: torch.dtype) -> CacheLayout:
        """The layout of a transformers ``model_config`` (its text model's) computing in ``dtype``."""
        c = text_config(model_config)
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        vocab = getattr(c, "vocab_size", None)
        windows = sliding_windows(model_config)
        return cls(
            c.num_hidden_layers, kv_heads, head_dim, dtype, vocab, None if windows is None else tuple(windows)
        )

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (None: it keeps every row)."""
        return None if self.sliding is None else self.sliding[layer]

    def rows(self, layer: int, tokens: int) -> int:
        """K/V rows that ``layer`` holds after ``tokens`` tokens."""
        w = self.window(layer)
        return tokens if w is None else min(tokens, w - 1)

    def nbytes(self, tokens: int) -> int:
        """Bytes of the K/V tensors of a cache of ``tokens`` tokens."""
        row = 2 * self.kv_heads * self.head_dim * self.dtype.itemsize
        return sum(self.rows(i, tokens) for i in range(self.layers)) * row

    def tensors(self, tokens: int) -> dict[str, tuple[list[int], torch.dtype]]:
        """Name -> ``(shape, dtype)`` of every tensor of a cache file of ``tokens`` tokens: ``ids``
        ``[T]`` int64, then per layer ``k.i`` and ``v.i`` ``[1, kv_heads, rows(i, T), head_dim]`` in
        ``dtype`` (whatever the engine's storage: fp8 or offloaded rows are saved dequantised). What
        :func:`save_prefix` writes, :func:`load_prefix` accepts and :func:`file_bytes` counts."""
        out: dict[str, tuple[list[int], torch.dtype]] = {"ids": ([tokens], torch.int64)}
        for i in range(self.layers):
            shape = [1, self.kv_heads, self.rows(i, tokens), self.head_dim]
            out[f"k.{i}"], out[f"v.{i}"] = (shape, self.dtype), (list(shape), self.dtype)
        return out


#: ``ReAttentionConfig`` fields, with their defaults, that change how a prefill or a decode step runs
#: but not what the K/V a document's chunks leave in the cache are: how many chunks one forward
#: carries (the same rows bit for bit in the model's dtype, ``tests/test_joined_forwards.py``; with
#: fp8 or offload a joined forward reads more rows exactly, close rows) and whether decode steps
#: replay CUDA graphs.
EXECUTION_FIELDS: dict[str, Any] = {"prefill_forward": None, "cuda_graphs": True}


@dataclass(frozen=True)
class CacheSpec:
    """What a document cache must match to serve an engine: its ``meta`` (model, dtype, config,
    compared with the file's header) and ``layout``; ``device`` and ``storage`` rebuild it."""

    meta: dict[str, str]
    layout: CacheLayout
    device: torch.device
    storage: KVStorage | None = None

    @classmethod
    def of(cls, engine: Any) -> CacheSpec:
        """The spec of an :class:`~reattn_llm.runtime.engine.Engine` (reads its model config only). The
        config is compared without the fields that only say how the work runs
        (:data:`EXECUTION_FIELDS`): a document cache serves an engine whatever they are."""
        config = replace(engine.config, **EXECUTION_FIELDS)
        meta = {"model": engine.model_name, "dtype": str(engine.dtype), "config": repr(config)}
        layout = CacheLayout.of(load_config(engine.model_id), engine.dtype)
        return cls(meta, layout, engine.device, KVStorage.from_config(engine.config))


@dataclass
class Prefix:
    """Token ids whose K/V sit in ``cache``; ``reusable`` of them are on the regular chunk grid."""

    ids: list[int]
    reusable: int
    cache: ReAttentionCache

    def reuse_length(self, ids: list[int], chunk: int) -> int:
        """Tokens of ``ids`` whose K/V can be taken from this prefix (a multiple of ``chunk``)."""
        n = min(len(ids), len(self.ids), self.reusable)
        lcp = 0
        while lcp < n and ids[lcp] == self.ids[lcp]:
            lcp += 1
        return (lcp // chunk) * chunk


class PrefixStore:
    """The one kept prefix of an engine (the last prompt's K/V), handed from request to request.

    A request :meth:`take` s it (it then owns the cache: no two requests ever share one) and
    :meth:`keep` s its own prompt's cache when it is done. ``enabled=False`` keeps nothing in
    memory. With ``disk`` (a :class:`~reattn_llm.runtime.prefix_store.DocumentStore`) and ``spec``
    (the engine's :class:`CacheSpec`, asked for when needed), a prefix longer than the kept one
    is read from disk, and every kept prefix is written there too.
    """

    def __init__(
        self, enabled: bool = True, disk: Any = None, spec: Callable[[], CacheSpec] | None = None
    ) -> None:
        if disk is not None and spec is None:
            raise ValueError("PrefixStore(disk=...) needs spec= (the engine's CacheSpec).")
        self.enabled = enabled
        self.disk = disk
        self.spec = spec
        self.prefix: Prefix | None = None

    def take(self, ids: list[int], chunk: int) -> tuple[ReAttentionCache | None, int]:
        """The kept cache cropped to the longest reusable prefix of ``ids`` and that prefix's length
        (a multiple of ``chunk``), or ``(None, 0)``; the store is empty afterwards either way."""
        prefix, self.prefix = self.prefix, None
        n = prefix.reuse_length(ids, chunk) if prefix is not None and self.enabled else 0
        if self.disk is not None and self.spec is not None:
            found = self.disk.find(self.spec(), ids, chunk, longer_than=n)
            if found is not None:
                prefix, n = found, found.reusable
        if prefix is None or n == 0:
            return None, 0
        if not all(getattr(layer, "can_crop", lambda _: True)(n) for layer in prefix.cache.layers):
            return None, 0  # a sliding-window layer no longer holds the rows before n
        for layer in prefix.cache.layers:
            layer.crop(n)  # type: ignore[union-attr]
        return prefix.cache, n

    def keep(self, ids: list[int], cache: ReAttentionCache, reusable: int) -> None:
        """Keep ``cache`` (holding at least ``ids``), of which ``reusable`` tokens are on the chunk grid."""
        prefix = Prefix(ids=list(ids), reusable=reusable, cache=cache)
        if self.disk is not None and self.spec is not None and reusable > 0 and savable(cache, reusable):
            self.disk.put(self.spec(), prefix)
        if self.enabled:
            self.prefix = prefix

    def forget(self) -> None:
        """Free the kept K/V."""
        self.prefix = None


def fingerprint(t: torch.Tensor) -> str:
    """A position-weighted checksum of a tensor's bytes, computed on its device in blocks."""
    raw = t.detach().contiguous().view(-1).view(torch.uint8)
    pad = (-raw.numel()) % 4
    if pad:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    words = raw.view(torch.int32)
    s1 = s2 = 0
    block = 1 << 24
    for start in range(0, words.numel(), block):
        w = words[start : start + block].to(torch.int64)
        weights = (torch.arange(start, start + w.numel(), device=w.device) % 1021) + 1
        s1 += int(w.sum())
        s2 += int((w * weights).sum())
    return f"{s1 & (2**64 - 1):016x}{s2 & (2**64 - 1):016x}"


def savable(cache: ReAttentionCache, n: int) -> bool:
    """Whether every layer of ``cache`` still holds its rows at ``n`` tokens (a sliding-window layer
    only at the end of one of its last prefill forwards, :meth:`~reattn_llm.kv.cache.SlidingLayer.can_crop`)."""
    return all(layer.can_crop(n) for layer in cache.layers if isinstance(layer, SlidingLayer))


def save_prefix(
    prefix: Prefix, path: str | os.PathLike[str], meta: dict[str, Any], layout: CacheLayout | None = None
) -> None:
    """Write the reusable part of ``prefix`` to ``path`` (safetensors; atomic replace). With ``layout``
    (the engine's), every tensor is checked against :meth:`CacheLayout.tensors` first, so the file
    loads back and takes :func:`file_bytes` bytes at most.

    Raises:
        CacheFileError: a sliding-window layer no longer holds its rows at the reusable length, or a
            tensor does not fit ``layout`` (checked before anything is written)."""
    from safetensors.torch import save_file

    n = prefix.reusable
    if not savable(prefix.cache, n):
        raise CacheFileError(
            f"The kept prefix's sliding-window layers no longer hold their rows at its {n} reusable tokens "
            "(they keep only their window, at the last few prefill forwards' ends): call warm(document) again "
            "and save right after it."
        )
    tensors: dict[str, torch.Tensor] = {"ids": torch.tensor(prefix.ids[:n], dtype=torch.int64)}
    for i, layer in enumerate(prefix.cache.layers):
        k, v = layer.rows_at(n) if isinstance(layer, SlidingLayer) else layer.dense(n)  # type: ignore[union-attr]
        tensors[f"k.{i}"], tensors[f"v.{i}"] = k.contiguous().cpu(), v.contiguous().cpu()
    if layout is not None:
        want = layout.tensors(n)
        got = {name: (list(t.shape), t.dtype) for name, t in tensors.items()}
        if got != want:
            bad = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
            raise CacheFileError(
                f"The kept prefix's tensors {bad[:3]} are {[got.get(k) for k in bad[:3]]}, but this engine's "
                f"cache layout wants {[want.get(k) for k in bad[:3]]}: the file would not load back. "
                "Prefill the document again with this engine."
            )
    sums = {name: fingerprint(t) for name, t in tensors.items()}
    tmp = Path(f"{path}.{os.getpid()}.tmp")  # one per process: two writers never share it
    try:
        save_file(tensors, str(tmp), metadata=_metadata(n, sums, meta))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_bytes(layout: CacheLayout, tokens: int, meta: dict[str, Any]) -> int:
    """The bytes of the file :func:`save_prefix` writes for ``tokens`` tokens of an engine of
    ``layout`` and ``meta``: its tensors exactly (:meth:`CacheLayout.tensors`: a sliding-window layer
    only its window's rows) and its safetensors header (8 bytes of length, then JSON padded to 8
    bytes) counted with every data offset as wide as the largest, so at most a few bytes per tensor
    more than the file takes, never less."""
    tensors = layout.tensors(tokens)
    data = sum(math.prod(shape) * dtype.itemsize for shape, dtype in tensors.values())
    sums = dict.fromkeys(tensors, "0" * _SUM_CHARS)
    header: dict[str, Any] = {"__metadata__": _metadata(tokens, sums, meta)}
    for name, (shape, dtype) in tensors.items():
        header[name] = {"dtype": _SAFETENSORS_DTYPES.get(dtype), "shape": shape, "data_offsets": [data, data]}
    text = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + -(-text // 8) * 8 + data


def _metadata(tokens: int, sums: dict[str, str], meta: dict[str, Any]) -> dict[str, str]:
    """The header of a cache file: format, token count, checksum table and ``meta``."""
    return {
        "format": FORMAT,
        "tokens": str(tokens),
        "checksums": json.dumps(sums),
        **{k: str(v) for k, v in meta.items()},
    }


def load_prefix(path: str | os.PathLike[str], spec: CacheSpec) -> Prefix:
    """Read a saved prefix: the header is checked against ``spec.meta``, the tensors' names, shapes
    and dtypes against ``spec.layout`` (before any is read), then every checksum; the cache is
    rebuilt on ``spec.device`` with ``spec.storage`` (fp8 / offload). Raises :class:`CacheFileError`."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise CacheFileError(f"{path}: no such document cache file.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            _check_header(path, header, spec.meta)
            sums = _check_layout(path, f, header, spec.layout)

            def verified(name: str) -> torch.Tensor:
                moved = f.get_tensor(name).to(spec.device)  # checked on the device, where it is fast
                if fingerprint(moved) != sums[name]:
                    raise CacheFileError(
                        f"{path}: checksum mismatch in {name!r}: the file is corrupt. {_AGAIN}"
                    )
                return moved

            ids = verified("ids")
            if (
                spec.layout.vocab_size is not None
                and len(ids)
                and not 0 <= int(ids.min()) <= int(ids.max()) < spec.layout.vocab_size
            ):
                raise CacheFileError(
                    f"{path}: token ids outside this model's vocabulary (0..{spec.layout.vocab_size - 1}): "
                    f"it was not made by this tokenizer. {_AGAIN}"
                )
            layout = spec.layout
            windows = None if layout.sliding is None else list(layout.sliding)
            cache = ReAttentionCache(layout.layers, storage=spec.storage, sliding_windows=windows)
            for i in range(layout.layers):  # one layer on the device at a time beside the cache
                k, v = verified(f"k.{i}"), verified(f"v.{i}")
                layer = cache.layers[i]
                if isinstance(layer, SlidingLayer):
                    layer.restore(k, v, len(ids))
                else:
                    cache.update(k, v, i)
    except CacheFileError:
        raise
    except Exception as e:  # safetensors raises its own errors on truncated/garbled files
        raise CacheFileError(
            f"{path} is not a readable document cache (truncated or corrupt: {e}). {_AGAIN}"
        ) from e
    return Prefix(ids=ids.tolist(), reusable=len(ids), cache=cache)


def _check_header(path: str | os.PathLike[str], header: dict[str, str], meta: dict[str, str]) -> None:
    if header.get("format") != FORMAT:
        raise CacheFileError(f"{path}: not a reattn-llm document cache (format {header.get('format')!r}).")
    for key, want in meta.items():
        if header.get(key) != str(want):
            raise CacheFileError(
                f"{path} was made with {key}={header.get(key)!r}, but this engine has "
                f"{key}={want!r}: prefill the document again with this model and config."
            )


def _check_layout(
    path: str | os.PathLike[str], f: Any, header: dict[str, str], layout: CacheLayout
) -> dict[str, str]:
    """The checksum table, once the tensors' names, shapes and dtypes match ``layout``."""
    try:
        sums = json.loads(header["checksums"])
        tokens = int(header["tokens"])
    except (KeyError, ValueError) as e:
        raise CacheFileError(f"{path}: the checksum table or token count is missing or damaged.") from e
    names = set(f.keys())
    if set(sums) != names:
        raise CacheFileError(
            f"{path}: tensors and checksum table disagree ({sorted(set(sums) ^ names)[:3]})."
        )
    held = len([n for n in names if n.startswith("k.")])
    expected = layout.tensors(tokens)
    if names != set(expected):
        raise CacheFileError(
            f"{path} holds K/V for {held} layers (tensors {sorted(names ^ set(expected))[:4]} differ), but this "
            f"model has {layout.layers} layers: it was not made for this model. {_AGAIN}"
        )

    def check(name: str, shape: list[int], dtype: torch.dtype, what: str) -> None:
        sl = f.get_slice(name)
        if list(sl.get_shape()) != shape:
            raise CacheFileError(
                f"{path}: {name!r} has shape {list(sl.get_shape())}, expected {shape} ({what}). {_AGAIN}"
            )
        if sl.get_dtype() != _SAFETENSORS_DTYPES.get(dtype):
            raise CacheFileError(
                f"{path}: {name!r} holds {sl.get_dtype()} values, but this engine computes in {dtype} "
                f"({_SAFETENSORS_DTYPES.get(dtype)}). {_AGAIN}"
            )

    check("ids", *expected.pop("ids"), f"the {tokens} token ids its header counts")
    for name, (shape, dtype) in sorted(expected.items()):
        layer = int(name.split(".")[1])
        held = "" if layout.window(layer) is None else f" (a sliding window of {layout.window(layer)})"
        check(
            name,
            shape,
            dtype,
            f"1 x {layout.kv_heads} KV heads x {shape[2]} token rows{held} x head_dim {layout.head_dim}",
        )
    return sums
