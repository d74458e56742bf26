"""Packaging: the version comes from the distribution's metadata, the wheel ships ``py.typed`` and
the license, and the metadata carries the license expression and classifiers."""

from __future__ import annotations

import email
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import reattn_llm

REPO = Path(__file__).resolve().parents[1]


def test_version_is_the_installed_metadata_version():
    assert reattn_llm.__version__ == importlib.metadata.version("reattn-llm")
    with (REPO / "pyproject.toml").open("rb") as f:
        assert reattn_llm.__version__ == tomllib.load(f)["project"]["version"]


def test_uninstalled_source_tree_reads_the_version_from_pyproject(monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with (REPO / "pyproject.toml").open("rb") as f:
        assert reattn_llm._read_version() == tomllib.load(f)["project"]["version"]


def test_license_file_is_apache_2_and_matches_pyproject():
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the source tree (the working tree stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "reattn_llm", src / "reattn_llm", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*cmd, "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = out.glob("reattn_llm-*.whl")
    return built


def test_wheel_ships_py_typed_license_and_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "reattn_llm/py.typed" in names
    assert "reattn_llm/data/pride_and_prejudice_1-3.txt" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names


def test_wheel_metadata_has_version_license_and_classifiers(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta_name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(z.read(meta_name))
    assert meta["Name"] == "reattn-llm"
    assert meta["Version"] == reattn_llm.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # superseded by the expression
