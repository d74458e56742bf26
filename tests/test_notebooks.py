"""The notebooks run end to end on a CPU at their small size and pass their own checks.

Each notebook is executed by nbclient in a fresh kernel with ``REATTN_NOTEBOOK_SIZE=small`` (one
page of R-intro.pdf, or 768 tokens of Emma, with the window shrunk to 256 tokens); the committed
files are read, never written. Every notebook asserts a real result in a cell (an answer that holds
the expected fact; a perplexity curve that stays flat and a full passkey row), so a failing check
fails here as a ``CellExecutionError``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_langchain_manual_qa.ipynb", "02_llamaindex_query_engine.ipynb", "03_why_it_works.ipynb"]

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
            parts.append(str(out.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_at_small_size(name: str, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reattn_llm.lab.notebooks import execute_notebook

    monkeypatch.setenv("TQDM_DISABLE", "1")
    path = NOTEBOOKS / name
    before = path.read_bytes()
    nb, seconds, error = execute_notebook(path, size="small", data=shared_data, timeout=400)
    assert error is None, f"{name} failed after {seconds:.0f} s:\n{error}"
    assert path.read_bytes() == before  # the committed notebook is untouched
    text = _outputs_text(nb)
    if name.startswith("03"):
        assert any("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))
        assert "ReAttention found" in text
    else:
        assert "73914" in text
    print(f"{name}: {seconds:.1f} s")


def test_data_folder_comes_from_the_caller_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reattn_llm.lab.data import DATA_ENV, data_file, data_folder

    monkeypatch.delenv(DATA_ENV, raising=False)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    assert data_folder(default=tmp_path) == tmp_path
    assert data_file("a.txt", tmp_path) == tmp_path / "texts" / "a.txt"
    with pytest.raises(FileNotFoundError, match=r"set REATTN_DATA"):
        data_folder()  # the library knows no repository: no default, no folder
    with pytest.raises(FileNotFoundError, match=r"does not exist: set REATTN_DATA"):
        data_folder(default=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"b\.txt is not in .*set REATTN_DATA"):
        data_file("b.txt", tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.setenv(DATA_ENV, str(other))
    assert data_folder(default=tmp_path) == other  # the variable wins over the caller's default


def test_lab_holds_no_repository_paths() -> None:
    """The lab modules take their data folder from the caller: no ``__file__``-relative paths."""
    import reattn_llm.lab as lab

    folder = Path(lab.__file__).parent
    for module in sorted(folder.glob("*.py")):
        source = module.read_text(encoding="utf-8")
        assert "__file__" not in source and "shared/data" not in source, module.name
