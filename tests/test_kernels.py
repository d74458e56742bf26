"""Triton kernels vs their torch twins and an fp64 reference, under Triton's CPU interpreter.

The interpreter must be switched on before triton is first imported, and other tests of this
pytest process may already have imported it, so the cases (``tests/kernel_cases.py``) run in one
subprocess with ``TRITON_INTERPRET=1`` (two, each running every other case, when the machine has
two cores or more: the interpreter is single-threaded); each case here asserts its reported result.
"""

from __future__ import annotations

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
    return sorted(set(kernel_cases.all_cases()) - set(kernel_cases.GUARDED))


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    import kernel_cases

    return kernel_cases.interpret(CASES, _case_names())


def _assert_case(results: dict[str, dict], name: str, died: str) -> None:
    """Case ``name`` reported and passed; ``died`` says what its silence would mean."""
    r = results.get(name)
    assert r is not None, f"case {name} did not report: {died}"
    assert r["ok"], f"{r['error']}\n{r.get('trace', '')}"


@pytest.mark.parametrize("name", _case_names())
def test_kernel_case(results: dict[str, dict], name: str) -> None:
    _assert_case(results, name, "the subprocess died?")


def test_kernels_load_nothing_past_their_tensors() -> None:
    """The guarded cases (``kernel_cases.GUARDED``) put an input right before an unreadable page: a
    kernel that reads past it dies with SIGSEGV, so they run in processes of their own."""
    import kernel_cases

    out = kernel_cases.interpret(CASES, sorted(kernel_cases.GUARDED), timeout=300)
    for name in kernel_cases.GUARDED:
        _assert_case(out, name, "its process died (a load past the tensor?)")
