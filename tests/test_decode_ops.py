"""How many torch ops a ReAttention decode step dispatches per layer (a GPU decode step of a
small batch is bound by kernel launches, one per op that computes): a budget that regressions
break, and the shortcuts that keep the count down giving exactly what they replace.
``benchmarks/decode_ops.py`` prints the full table (stock, torch and Triton backends)."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from tiny_models import distinct_ids, tiny_model

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.method.rope import identity_rope, is_identity_rope, rotate_expected, turned_sin
from reattn_llm.method.selection import Scope
from reattn_llm.method.state import _PENDING_MAX, PatchState

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, BENCHMARKS)
try:
    import decode_ops
finally:  # benchmarks/ holds kernels.py: left on the path it would pass for a top-level ``kernels``
    sys.path.remove(BENCHMARKS)

#: Launching ops (no views, no bare allocations) per layer of a torch-backend decode step of the
#: benchmark's tiny Llama: 140.5 before the identity RoPE was skipped, positions noted lazily and the
#: expected rotation rolled; BUDGET sits a little above what it is now.
BUDGET = 130


def test_decode_step_stays_within_its_launch_budget():
    counts = decode_ops.decode_counts("torch")
    total, launching, views, _ = decode_ops.per_layer(counts)
    assert launching <= BUDGET, (launching, sorted(counts.items(), key=lambda kv: -kv[1])[:20])
    assert total >= launching + views and views > 0  # the count sees the views it leaves out


def test_identity_rope_skips_the_stock_rotation_and_unpatch_restores_it():
    import transformers.models.llama.modeling_llama as modeling

    from reattn_llm.method.rope import _SKIPS

    before = modeling.apply_rotary_pos_emb  # the wrapper already, while another test's model is patched
    entry = _SKIPS.get(modeling.__name__)
    stock = before if entry is None else entry[0]
    a, b = tiny_model("llama", layers=1, seed=1), tiny_model("llama", layers=1, seed=2)
    cfg = ReAttentionConfig(global_size=4, local_size=64, span_size=8, max_spans=8, chunk_size=32)
    ha, hb = patch(a, cfg), patch(b, cfg)
    wrapped = modeling.apply_rotary_pos_emb
    assert wrapped is not stock and wrapped is _SKIPS[modeling.__name__][1]
    q, k = torch.randn(1, 6, 5, 64), torch.randn(1, 2, 5, 64)
    cos, sin = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    one, zero = identity_rope(cos, sin)
    assert is_identity_rope(one, zero) and not is_identity_rope(torch.ones_like(cos), torch.zeros_like(sin))
    qi, ki = wrapped(q, k, one, zero)
    assert qi is q and ki is k  # passed through, not recomputed
    for got, want in zip(wrapped(q, k, cos, sin), stock(q, k, cos, sin), strict=True):
        assert torch.equal(got, want)  # any other tables: the stock rotation
    for got, want in zip(stock(q, k, one, zero), (q, k), strict=True):
        assert torch.equal(got, want)  # the pair broadcasts as the identity where nothing skips it
    with mock.patch.object(modeling, "rotate_half", side_effect=AssertionError("stock RoPE ran")):
        a(distinct_ids(1, 80, seed=4))  # past G + L: the selection runs; no layer rotates
    ha.unpatch()
    assert modeling.apply_rotary_pos_emb is wrapped  # b still patched
    hb.unpatch()
    assert modeling.apply_rotary_pos_emb is before  # stock again unless another model stays patched
    if entry is None:
        assert before is stock


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("rotary", [64, 48])
def test_rotate_expected_is_the_rotate_half_formula_bit_for_bit(dtype, rotary):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 3, 64, generator=g).to(dtype)
    cos, sin = torch.rand(rotary, generator=g), torch.rand(rotary, generator=g) - 0.5
    qf = q.float()
    qr, rest = qf[..., :rotary], qf[..., rotary:]
    half = rotary // 2
    want = qr * cos + torch.cat((-qr[..., half:], qr[..., :half]), dim=-1) * sin
    want = torch.cat((want, rest), dim=-1).to(dtype)
    for got in (rotate_expected(q, cos, sin), rotate_expected(q, cos, sin, turned_sin(sin))):
        assert got.dtype == dtype and torch.equal(got, want)


def test_positions_noted_lazily_give_the_largest():
    from reattn_llm.method.rope import RopeTable

    state = PatchState(ReAttentionConfig().resolve(256), RopeTable.__new__(RopeTable))
    assert state.max_position is None and state.largest_position() == -1
    ids = distinct_ids(1, 512, seed=3)[0]  # distinct positions in any order
    n = _PENDING_MAX + 7  # one fold on the way, the rest on reading
    for i in range(n):
        q_pos = ids[i : i + 1].view(1, 1).expand(2, 1)
        state.note_positions(Scope(q_pos, q_pos, q_pos))
    assert len(state._pending) == n - _PENDING_MAX
    assert state.largest_position() == int(ids[:n].max()) and not state._pending
    state.max_position = None  # forgets the noted positions too
    state.note_positions(Scope(ids[:1].view(1, 1), ids[:1].view(1, 1), ids[:1].view(1, 1)))
    state.max_position = None
    assert state.max_position is None
    state.track_positions = False
    state.note_positions(Scope(ids[:1].view(1, 1), ids[:1].view(1, 1), ids[:1].view(1, 1)))
    assert state.max_position is None
