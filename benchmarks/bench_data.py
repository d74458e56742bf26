"""Where the benchmarks find their texts: ``$REATTN_DATA``, else ``shared/data`` beside the repository."""

from __future__ import annotations

from pathlib import Path

from reattn_llm.lab.data import data_file, data_folder


def default_text(name: str = "austen_emma.txt") -> str:
    """The path of ``name`` in the data folder; exits with what to set when it is missing."""
    try:
        folder = data_folder(default=Path(__file__).resolve().parents[2] / "shared" / "data")
        return str(data_file(name, folder))
    except FileNotFoundError as error:
        raise SystemExit(f"{error} Or pass --text FILE.") from None
