"""Triton kernels vs their torch twins and an fp64 reference, under Triton's CPU interpreter.

The interpreter must be switched on before triton is first imported, and other tests of this
pytest process may already have imported it, so the cases (``tests/kernel_cases.py``) run in one
subprocess with ``TRITON_INTERPRET=1``; each case here asserts its reported result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
CASES = HERE / "kernel_cases.py"


def _case_names() -> list[str]:
    sys.path.insert(0, str(HERE))
    try:
        import kernel_cases
    finally:
        sys.path.pop(0)
    return sorted(kernel_cases.all_cases())


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, str(CASES)], env=env, capture_output=True, text=True, timeout=900, cwd=HERE.parent
    )
    out: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("CASE "):
            r = json.loads(line[5:])
            out[r["name"]] = r
    if not out:
        raise RuntimeError(f"kernel_cases.py reported nothing (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return out


@pytest.mark.parametrize("name", _case_names())
def test_kernel_case(results: dict[str, dict], name: str) -> None:
    r = results.get(name)
    assert r is not None, f"case {name} did not report (the subprocess died?)"
    assert r["ok"], f"{r['error']}\n{r.get('trace', '')}"
