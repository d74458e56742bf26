"""Small helpers shared by the Triton kernels (no kernels here)."""

from __future__ import annotations

import functools
import os

import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: The widest row the RMSNorm kernel normalises in registers (a model's hidden size or a head's dims);
#: here, not in ``triton_norm``, so callers check it without importing triton.
MAX_NORM_WIDTH = 16384

#: log2(e): the kernels' softmax runs in exp2, scores scaled by ``scaling * LOG2E``.
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``): CPU tensors are allowed."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device`` (4 under the interpreter / on CPU, to exercise split paths)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tiles_per_split(tiles: int, base: int, cfg: dict) -> int:
    """Key tiles one program walks: ``tiles`` split over programs (flash-decoding) until ``base``
    programs (row blocks x batch x KV heads) times the splits reach ``cfg["target"]``, each split
    ``cfg["min_tiles"]`` or more; ``cfg["splits"]``, when given, fixes the count."""
    splits = cfg.get("splits")
    if splits is None:
        splits = max(1, min(cdiv(cfg["target"], base), cdiv(tiles, cfg["min_tiles"])))
    return cdiv(tiles, splits)


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """All tensors on one device; CUDA unless the interpreter runs."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"{name}: all tensors must be on one device, got {dev} and {t.device}")
    if dev.type != "cuda" and not interpreting():
        raise ValueError(
            f"{name}: the Triton kernels need CUDA tensors (got {dev}); use backend='torch' on CPU"
        )


def check_float(name: str, what: str, t: torch.Tensor) -> None:
    if t.dtype not in _DTYPES:
        raise ValueError(f"{name}: {what} must be float16, bfloat16 or float32, got {t.dtype}")
