"""The scope trace (reattn_llm.lab.trace): which watched rows each layer's scope holds, and the
attention they get, checked against what the selection must give; observing changes nothing."""

from __future__ import annotations

import pytest
import torch
from tiny_models import distinct_ids, tiny_model

from reattn_llm import ReAttentionCache, ReAttentionConfig, patch
from reattn_llm.lab.trace import RowTrace, patch_state, text_rows, traced

CFG = dict(global_size=4, local_size=32, span_size=4, max_spans=4, top_k=2, chunk_size=16)


def _run(model, ids, prompt_len: int, trace: RowTrace | None) -> torch.Tensor:
    cache = ReAttentionCache(2)
    with torch.no_grad():
        out = [model(ids[:, :prompt_len], past_key_values=cache).logits[:, -1:]]
        for t in range(prompt_len, ids.shape[1]):
            out.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
    return torch.cat(out, 1)


def test_trace_within_the_window_sees_every_row_and_all_the_mass():
    model = tiny_model("llama", layers=2, window=128, seed=1)
    handle = patch(model, ReAttentionConfig(**CFG))
    try:
        ids = distinct_ids(1, 30, seed=2)  # 30 <= G + L: stock attention, every row in scope
        trace = RowTrace(range(30))
        with traced(model, trace):
            _run(model, ids, 28, trace)
        assert not patch_state(model).observers  # taken back after the block
    finally:
        handle.unpatch()
    fwd = trace.summary()
    assert [f["queries"] for f in fwd] == [28, 1, 1]
    assert all(f["layers"] == 2 for f in fwd)
    # the prefill's last query sees 28 rows, each decode step one more: all of them watched
    assert [e.in_scope for e in trace.entries] == [28, 28, 29, 29, 30, 30]
    assert all(abs(e.mass - 1.0) < 1e-5 and abs(e.top_mass - 1.0) < 1e-5 for e in trace.entries)


def test_trace_counts_middle_rows_only_when_selected_and_leaves_logits_alone():
    model = tiny_model("llama", layers=2, window=128, seed=3)
    ids = distinct_ids(1, 120, seed=4)
    middle = list(range(20, 60))  # far behind the 32-token local window of every query
    handle = patch(model, ReAttentionConfig(**CFG))
    try:
        want = _run(model, ids, 110, None)
        trace = RowTrace(middle)
        with traced(model, trace):
            got = _run(model, ids, 110, trace)
        cfg = patch_state(model).config
        bound = cfg.decode_sizes(pinned=True)[1] * cfg.span_size
    finally:
        handle.unpatch()
    assert torch.equal(got, want)
    # a decode step's scope holds at most its spans' tokens of the middle, and some steps hold some
    steps = [e for e in trace.entries if e.queries == 1]
    assert len(steps) == 2 * 10
    assert all(0 <= e.in_scope <= bound for e in steps)
    assert any(e.in_scope > 0 for e in steps)
    assert all(0.0 <= e.mass <= e.top_mass <= 1.0 + 1e-6 for e in trace.entries)
    assert [e.mass for e in trace.entries if e.in_scope == 0] == [0.0] * sum(
        e.in_scope == 0 for e in trace.entries
    )

    streaming = patch(model, ReAttentionConfig(**{**CFG, "max_spans": 0}))
    try:
        trace = RowTrace(middle)
        with traced(model, trace):
            _run(model, ids, 110, trace)
    finally:
        streaming.unpatch()
    summary = trace.summary()  # each forward's last chunk: no middle at all
    assert all(f["full"] == 0 and f["any"] == 0 and f["mass"] == 0.0 for f in summary)


def test_text_rows_are_the_tokens_of_the_needle(smollm2):
    _, tok = smollm2
    text = "It rained all day. One of the special magic numbers for fair-yogurt is: 9375710. The end."
    rows = text_rows(tok, text, ["9375710"])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode([ids[i] for i in rows]).strip() == "9375710"
    assert rows == list(range(rows[0], rows[0] + len(rows)))  # contiguous
    assert text_rows(tok, text, ["not there"]) == []


def test_trace_refusals():
    with pytest.raises(ValueError, match="at least one row"):
        RowTrace([])
    with pytest.raises(ValueError, match="not patched"):
        patch_state(tiny_model("llama", layers=1, window=64))


def test_every_scope_the_core_builds_keeps_its_chunk_tail_promise():
    """``Scope.chunk_tail`` lets the prefill kernel skip masking work: the scope's last Q keys are
    the chunk's own, in query order, and every earlier key is visible to every query (padding
    aside). Checked on every scope of a prefill over several chunks and of union decode steps;
    a static step's scope (:func:`mask_unwritten`) does not promise it."""
    from reattn_llm.method.selection import Scope, mask_unwritten

    model = tiny_model("llama", layers=2, window=128, seed=1)
    handle = patch(model, ReAttentionConfig(**CFG))
    seen = {"prefill": 0, "decode": 0}

    def check(layer, qc, k_src, idx, scope, cos, sin, scale):
        q = qc.shape[2]
        assert scope.chunk_tail
        kpos, qpos = scope.key_pos, scope.q_pos
        assert torch.equal(kpos[:, kpos.shape[1] - q :], qpos)
        assert bool((kpos[:, : kpos.shape[1] - q] < qpos[:, :1]).all())
        seen["prefill" if q > 1 else "decode"] += 1

    state = patch_state(model)
    state.observers.append(check)
    try:
        ids = distinct_ids(1, 140, seed=3)
        _run(model, ids, 130, None)  # 130 > G + L: span selection in every chunk past the first
    finally:
        state.observers.remove(check)
        handle.unpatch()
    assert seen["prefill"] >= 2 * 8 and seen["decode"] == 2 * 10
    idx = torch.arange(10)[None]
    assert not mask_unwritten(Scope(idx, idx, idx[:, -1:]), torch.tensor([8])).chunk_tail
