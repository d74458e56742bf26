"""Reusable document caches: a prefilled prompt prefix kept in memory and saved to disk.

A second question over the same document only prefills its own tokens: the engine keeps the
K/V of the last prompt and reuses the longest common token prefix with the next one. Reuse stops
at a chunk boundary of the regular prefill grid, so the reused K/V are exactly those a fresh
prefill would compute (each chunk's selection is voted by that chunk's queries only).

On disk a prefix is one safetensors file (no pickle): per-layer un-rotated K/V up to the reusable
length, the token ids, and metadata (format, model, dtype, config, chunk) with a checksum of
every tensor, verified on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ReAttentionError
from ..kv.cache import ReAttentionCache

FORMAT = "reattn-llm/prefix-cache/1"


class CacheFileError(ReAttentionError, ValueError):
    """A saved document cache that is corrupt, truncated, or made for another model/config."""


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
    :meth:`keep` s its own prompt's cache when it is done. ``enabled=False`` keeps nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.prefix: Prefix | None = None

    def take(self, ids: list[int], chunk: int) -> tuple[ReAttentionCache | None, int]:
        """The kept cache cropped to the longest reusable prefix of ``ids`` and that prefix's length
        (a multiple of ``chunk``), or ``(None, 0)``; the store is empty afterwards either way."""
        prefix, self.prefix = self.prefix, None
        n = prefix.reuse_length(ids, chunk) if prefix is not None and self.enabled else 0
        if prefix is None or n == 0:
            return None, 0
        for layer in prefix.cache.layers:
            layer.crop(n)  # type: ignore[union-attr]
        return prefix.cache, n

    def keep(self, ids: list[int], cache: ReAttentionCache, reusable: int) -> None:
        """Keep ``cache`` (holding at least ``ids``), of which ``reusable`` tokens are on the chunk grid."""
        if self.enabled:
            self.prefix = Prefix(ids=list(ids), reusable=reusable, cache=cache)

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


def save_prefix(prefix: Prefix, path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Write the reusable part of ``prefix`` to ``path`` (safetensors; atomic replace)."""
    from safetensors.torch import save_file

    n = prefix.reusable
    tensors: dict[str, torch.Tensor] = {"ids": torch.tensor(prefix.ids[:n], dtype=torch.int64)}
    for i, layer in enumerate(prefix.cache.layers):
        k, v = layer.dense(n)  # type: ignore[union-attr]
        tensors[f"k.{i}"], tensors[f"v.{i}"] = k.contiguous().cpu(), v.contiguous().cpu()
    sums = {name: fingerprint(t) for name, t in tensors.items()}
    header = {
        "format": FORMAT,
        "tokens": str(n),
        "checksums": json.dumps(sums),
        **{k: str(v) for k, v in meta.items()},
    }
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    os.replace(tmp, path)


def load_prefix(
    path: str | os.PathLike[str], meta: dict[str, Any], device: torch.device, storage: Any = None
) -> Prefix:
    """Read a saved prefix, verifying format, model/config metadata and every checksum; the cache is
    rebuilt with ``storage`` (fp8 / offload, :class:`~reattn_llm.kv.storage.KVStorage`) when given."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise CacheFileError(f"{path}: no such document cache file.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            names = list(f.keys())
            tensors = {name: f.get_tensor(name) for name in names}
    except Exception as e:  # safetensors raises its own errors on truncated/garbled files
        raise CacheFileError(
            f"{path} is not a readable document cache (truncated or corrupt: {e}). "
            "Delete it and prefill the document again."
        ) from e
    if header.get("format") != FORMAT:
        raise CacheFileError(f"{path}: not a reattn-llm document cache (format {header.get('format')!r}).")
    for key, want in meta.items():
        if header.get(key) != str(want):
            raise CacheFileError(
                f"{path} was made with {key}={header.get(key)!r}, but this engine has "
                f"{key}={want!r}: prefill the document again with this model and config."
            )
    try:
        sums = json.loads(header["checksums"])
    except (KeyError, ValueError) as e:
        raise CacheFileError(f"{path}: the checksum table is missing or damaged.") from e
    if set(sums) != set(tensors):
        raise CacheFileError(f"{path}: tensors are missing ({sorted(set(sums) - set(tensors))[:3]}...).")
    layers = len([n for n in names if n.startswith("k.")])

    def verified(name: str) -> torch.Tensor:
        moved = tensors.pop(name).to(device)  # checked on the device, where it is fast
        if fingerprint(moved) != sums[name]:
            raise CacheFileError(
                f"{path}: checksum mismatch in {name!r}: the file is corrupt. "
                "Delete it and prefill the document again."
            )
        return moved

    ids = verified("ids").tolist()
    cache = ReAttentionCache(layers, storage=storage)
    for i in range(layers):  # one layer on the device at a time beside the cache (offloaded rows go on)
        cache.update(verified(f"k.{i}"), verified(f"v.{i}"), i)
    return Prefix(ids=ids, reusable=len(ids), cache=cache)
