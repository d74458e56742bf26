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
    return sorted(kernel_cases.all_cases())


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    import kernel_cases

    return kernel_cases.interpret(CASES, _case_names())


@pytest.mark.parametrize("name", _case_names())
def test_kernel_case(results: dict[str, dict], name: str) -> None:
    r = results.get(name)
    assert r is not None, f"case {name} did not report (the subprocess died?)"
    assert r["ok"], f"{r['error']}\n{r.get('trace', '')}"


def _jit_kernels() -> list:
    import importlib
    import pkgutil

    from triton.runtime.jit import JITFunction

    import reattn_llm.kernels as pkg

    out = []
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("triton_"):
            m = importlib.import_module(f"{pkg.__name__}.{mod.name}")
            out += [f for n, f in vars(m).items() if isinstance(f, JITFunction) and n.endswith("_kernel")]
    return out


def test_unspecialised_lengths_name_real_arguments() -> None:
    """Triton specialises an int argument on ``% 16 == 0`` and ``== 1``, and compiles anew when either
    changes: the kernels' length arguments (key counts, splits, rows) are listed in
    ``do_not_specialize``, so a long prompt reuses a short one's compiles. Triton ignores a listed
    name that is not an argument, so a misspelling would bring the compiles back silently."""
    kernels = _jit_kernels()
    assert len(kernels) >= 13
    for f in kernels:
        names = [f.arg_names[x] if isinstance(x, int) else x for x in f.do_not_specialize]
        assert set(names) <= set(f.arg_names), f"{f.__name__}: {sorted(set(names) - set(f.arg_names))}"
    by_name = {f.__name__: f for f in kernels}
    score = by_name["_score_topk_kernel"]
    assert {"M", "Q", "SPLITS", "ROWS", "GROW"} <= set(score.do_not_specialize)
    # strides and pointers stay specialised: their 16-byte alignment keeps the K loads asynchronous
    assert not {"sk_m", "k_ptr", "q_ptr"} & set(score.do_not_specialize)


def test_merge_candidate_width_is_bucketed() -> None:
    """The merge kernel's candidate width (a constexpr) takes few values as the split count grows
    with the middle: one compile serves a 12K warm-up and a 1M prompt's decode alike."""
    from reattn_llm.kernels.triton_topk import _candidate_bucket

    assert {_candidate_bucket(s * 4, 0) for s in range(1, 257)} == {1024}
    assert {_candidate_bucket(s * 4, 4) for s in range(1, 5)} == {16}
    assert _candidate_bucket(1056, 0) == 2048 and _candidate_bucket(4 * 32, 4) == 128
