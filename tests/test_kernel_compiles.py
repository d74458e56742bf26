"""A longer prompt compiles no new Triton kernel (#13: compiles inside a timed prefill).

Triton compiles a kernel once per *specialisation key*: every constexpr value, the launch options,
and for each other argument its type and whether it is ``== 1`` or ``% 16 == 0`` (pointers:
16-byte aligned), unless the kernel lists it in ``do_not_specialize``. A key seen first in a long
prompt is a compile inside its prefill (seconds, in every process whose cache lacks it). Here the
top-k launchers run with recording stand-ins for their kernels (nothing executes, the inputs are
uninitialised): the keys Triton's own specialiser gives each launch, for the Llama-3.1-8B shape on
an H200-sized GPU (132 SMs), must be the same at a 12K prompt's middle as at 32K and 128K.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")

BF16 = torch.bfloat16
#: middle lengths of a 12K (the benchmarks' warm-up), 32K and 128K prompt: divisible by 16 or not
MIDDLES = (8160, 24570, 126944)


def _compile_keys():
    """``benchmarks/compile_keys.py`` (its recorder and kernel listing), ``benchmarks/`` on the path
    only while it loads: its ``kernels.py`` would pass for a top-level ``kernels`` module."""
    sys.path.insert(0, BENCHMARKS)
    try:
        import compile_keys
    finally:
        sys.path.remove(BENCHMARKS)
    return compile_keys


@pytest.fixture
def recorded(monkeypatch):
    """``set`` of ``(kernel, key)``, filled by the top-k module's kernels while the fixture is active
    (``benchmarks/compile_keys.py``'s recorder: the launch's key from Triton's own specialiser)."""
    from reattn_llm.kernels import triton_topk

    ck = _compile_keys()
    try:
        specialize = ck.specialiser()
    except ImportError as e:  # the specialiser is Triton's internal API
        pytest.skip(f"this Triton has no native_specialize_impl: {e}")
    keys: set = set()
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # only so the launchers accept CPU tensors
    monkeypatch.setattr(triton_topk, "sm_count", lambda device: 132)
    for name in ("_score_topk_kernel", "_merge_refine_kernel", "_refine_groups_kernel"):
        rec = ck.Recorder(getattr(triton_topk, name), name, specialize, lambda n, k: keys.add((n, k)))
        monkeypatch.setattr(triton_topk, name, rec)
    return keys


def _middle(m: int, batch: int = 1) -> torch.Tensor:
    """``[batch, 8, m, 128]`` keys: a slice of a cache buffer, one sequence's keys over a batch."""
    return torch.empty(1, 8, m + 64, 128, dtype=BF16)[:, :, 32 : 32 + m].expand(batch, 8, m, 128)


def _keys_per_length(recorded: set, launch) -> list[set]:
    out = []
    for m in MIDDLES:
        recorded.clear()
        launch(m)
        out.append(set(recorded))
    return out


@pytest.mark.parametrize(
    "case",
    ["prompt forward: 8 chunks of 1,024 as one batch", "the prompt's 16-token tail chunk", "a decode step"],
)
def test_score_topk_compiles_once_for_every_length(recorded, case) -> None:
    from reattn_llm.kernels.triton_topk import score_topk_triton

    def launch(m: int) -> None:
        if case.startswith("prompt"):
            q = torch.empty(8, 1024, 32, 128, dtype=BF16).transpose(1, 2)
            score_topk_triton(q, _middle(m, 8), 4, grow=1024)
        else:
            q = torch.empty(1, 32, 16 if "tail" in case else 1, 128, dtype=BF16)
            score_topk_triton(q, _middle(m), 4)

    per_length = _keys_per_length(recorded, launch)
    merge = "_refine_groups_kernel" if case.startswith("prompt") else "_merge_refine_kernel"
    assert {k[0] for k in per_length[0]} == {"_score_topk_kernel", merge}
    for m, keys in zip(MIDDLES[1:], per_length[1:], strict=True):
        new = {k[0] for k in keys - per_length[0]}
        assert not new, (
            f"{case}: a {m}-key middle compiles {sorted(new)} that a {MIDDLES[0]}-key middle did not"
        )


def test_level_two_compiles_once_for_every_length(recorded) -> None:
    """Two-level selection's level 2 (the block table's top-k): the table's length and the partial
    block's start vary with the middle; the compiles must not."""
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton

    def launch(m: int) -> None:
        q = torch.empty(1, 32, 1024, 128, dtype=BF16)
        blocks = torch.arange(0, m // 32, max(1, m // 32 // 508), dtype=torch.int32)[:508]
        score_topk_blocks_triton(q, _middle(m), blocks.expand(1, 8, -1), 32, 4)

    per_length = _keys_per_length(recorded, launch)
    assert per_length[1] == per_length[0] and per_length[2] == per_length[0]


def test_a_specialised_length_would_be_caught(recorded, monkeypatch) -> None:
    """The check has teeth: with the scoring kernel's key count specialised again, 12K and 32K
    middles (8160 divisible by 16, 24570 not) give two keys."""
    from reattn_llm.kernels import triton_topk

    rec = triton_topk._score_topk_kernel
    m_param = next(p for p in rec.fn.params if p.name == "M")
    monkeypatch.setattr(m_param, "do_not_specialize", False)
    monkeypatch.setattr(m_param, "do_not_specialize_on_alignment", False)
    q = torch.empty(1, 32, 1, 128, dtype=BF16)
    per_length = _keys_per_length(recorded, lambda m: triton_topk.score_topk_triton(q, _middle(m), 4))
    assert per_length[0] != per_length[1]


def test_unspecialised_lengths_name_real_arguments() -> None:
    """Triton specialises an int argument on ``% 16 == 0`` and ``== 1``, and compiles anew when either
    changes: the kernels' length arguments (key counts, splits, rows) are listed in
    ``do_not_specialize``, so a long prompt reuses a short one's compiles. Triton ignores a listed
    name that is not an argument, so a misspelling would bring the compiles back silently."""
    compile_keys = _compile_keys()
    kernels = [
        f for m in compile_keys.triton_modules().values() for f in compile_keys.jit_kernels(m).values()
    ]
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
