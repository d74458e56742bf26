"""A model's calibration on disk: the effective window ``reattn calibrate`` measured, the
fingerprint of the model it was measured on, and the checks that keep a damaged or stale file
from sizing the scope.

The record is one small JSON object (:mod:`reattn_llm.calibration.calibrate` writes it): beside the
converted embedded model (``<cache>/SmolLM2-135M-Instruct/reattn-calibration.json``), else
``<cache>/calibration/<model id, / as -->.json`` (:func:`~reattn_llm.runtime.models.calibration_path`).
Reading never raises: a file that cannot be used is ignored with a ``UserWarning`` that says why,
and the scope keeps its default.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "reattn-calibration.json"
#: The smallest effective window a stored record may give (smaller ones are refused as damaged).
MIN_EFFECTIVE_WINDOW = 64
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(
    folder: Path, revision: str | None = None, gguf: Path | None = None, hash_gguf: bool = False
) -> dict[str, Any]:
    """What identifies the model in ``folder``: its ``config.json``'s sha256, its weight files' names
    and sizes (mtimes kept for the record only: a copy changes them), the Hub ``revision`` (the
    snapshot's commit) when known, and the source ``gguf`` (its sha256 with ``hash_gguf``)."""
    config = folder / "config.json"
    weights = []
    for f in sorted(folder.iterdir()):
        if f.suffix in _WEIGHT_SUFFIXES and f.is_file():
            st = f.stat()
            weights.append({"name": f.name, "size": st.st_size, "mtime": int(st.st_mtime)})
    out: dict[str, Any] = {
        "config_sha256": sha256_of(config) if config.is_file() else None,
        "weights": weights,
        "revision": revision,
    }
    if gguf is not None and gguf.is_file():
        out["gguf"] = {"name": gguf.name, "size": gguf.stat().st_size}
        if hash_gguf:
            out["gguf"]["sha256"] = sha256_of(gguf)
    return out


def differs(stored: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Why the model ``stored`` was measured on is not the one ``now`` describes, or None."""
    if (
        stored.get("config_sha256")
        and now.get("config_sha256")
        and stored["config_sha256"] != now["config_sha256"]
    ):
        return "its config.json changed"
    sizes = {w["name"]: w["size"] for w in stored.get("weights") or []}
    now_sizes = {w["name"]: w["size"] for w in now.get("weights") or []}
    if sizes and now_sizes and sizes != now_sizes:
        return "its weight files changed"
    if stored.get("revision") and now.get("revision") and stored["revision"] != now["revision"]:
        return f"it is now revision {now['revision'][:12]}, not {stored['revision'][:12]}"
    return None


def trained_window(folder: Path | None) -> int | None:
    """``max_position_embeddings`` from ``folder/config.json`` (or its ``text_config``), if readable."""
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for c in (config, config.get("text_config") or {}):
        value = c.get("max_position_embeddings") if isinstance(c, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def read_effective_window(path: Path, now: dict[str, Any] | None, window: int | None) -> int | None:
    """The effective window stored at ``path``, checked: an integer of at least
    :data:`MIN_EFFECTIVE_WINDOW` tokens and at most the trained ``window`` (else the record's own),
    measured on the model ``now`` fingerprints. None (with a warning) for a file that fails a check,
    None (silently) when there is no file."""
    if not path.is_file():
        return None
    again = f"run `reattn calibrate` again, or delete {path}"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        value = record["effective_window"]
        window = window or record.get("window")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(
            f"Ignored the calibration file {path}: unreadable ({e!r}); {again}.", UserWarning, stacklevel=3
        )
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_EFFECTIVE_WINDOW:
        problem = f"effective_window={value!r} is not an integer of at least {MIN_EFFECTIVE_WINDOW} tokens"
    elif isinstance(window, int) and value > window:
        problem = f"effective_window={value} is past the model's trained window of {window} tokens"
    elif now is not None and isinstance(record.get("fingerprint"), dict):
        reason = differs(record["fingerprint"], now)
        problem = None if reason is None else f"it was measured on another version of the model ({reason})"
    else:
        problem = None
    if problem is not None:
        warnings.warn(f"Ignored the calibration file {path}: {problem}; {again}.", UserWarning, stacklevel=3)
        return None
    return value


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
