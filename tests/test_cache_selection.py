"""The growing un-rotated cache and the sync-free span selection, against literal versions."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from reference import literal_selection

from reattn_llm import ReAttentionCache
from reattn_llm.kv.dense import DenseLayer
from reattn_llm.method.selection import build_scope, select_spans


def test_layer_grows_geometrically_and_returns_views():
    layer = DenseLayer()
    chunks = [torch.randn(1, 2, n, 8) for n in (100, 200, 5, 1, 1, 300)]
    caps = []
    for c in chunks:
        k, v = layer.update(c, -c)
        caps.append(layer.capacity)
    full = torch.cat(chunks, dim=2)
    assert torch.equal(k, full) and torch.equal(v, -full)
    assert layer.get_seq_length() == full.shape[2]
    # few reallocations: capacity changes only a handful of times (not every step)
    assert len(set(caps)) <= 4
    assert k.data_ptr() == layer._k.data_ptr()  # a view of the buffer, not a copy


def test_reserve_allocates_once():
    cache = ReAttentionCache(num_layers=2, reserve=1000)
    ptrs = set()
    for _ in range(10):
        cache.update(torch.randn(1, 1, 100, 4), torch.randn(1, 1, 100, 4), 0)
        ptrs.add(cache.layers[0]._k.data_ptr())
    assert len(ptrs) == 1 and cache.get_seq_length() == 1000


def test_crop_and_reset():
    layer = DenseLayer()
    x = torch.randn(1, 1, 50, 4)
    layer.update(x, x)
    layer.crop(-10)
    assert layer.get_seq_length() == 40 and torch.equal(layer.keys, x[:, :, :40])
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.keys is None


def test_rewind_keeps_the_question_pins_that_crop_forgets():
    layer = DenseLayer()
    x = torch.randn(1, 1, 50, 4)
    layer.update(x, x)
    pins = torch.tensor([[3, 17]]), torch.tensor([[5, 2]])
    layer.pinned, layer.pinned_votes = pins
    layer.update(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))  # a decoded token
    layer.rewind(50)
    assert layer.get_seq_length() == 50 and torch.equal(layer.keys, x)
    assert layer.pinned is pins[0] and layer.pinned_votes is pins[1]
    layer.crop(40)
    assert layer.get_seq_length() == 40 and layer.pinned is None and layer.pinned_votes is None


def _literal_from_hits(hits: torch.Tensor, m: int, max_spans: int, span: int) -> list[int]:
    votes: dict[int, int] = {}
    for c in hits.flatten().tolist():
        votes[c] = votes.get(c, 0) + 1
    kept = sorted(votes, key=lambda c: (-votes[c], c))[:max_spans]
    chosen = set()
    for c in kept:
        chosen.update(range(max(0, c - span // 2), min(m, c - span // 2 + span)))
    return sorted(chosen)


def test_select_spans_matches_literal_on_random_hits():
    rng = random.Random(0)
    for _ in range(300):
        m = rng.randint(1, 200)
        max_spans, span = rng.randint(1, 12), rng.randint(1, 17)
        hits = torch.randint(0, m, (1, rng.randint(1, 4), rng.randint(1, 9), rng.randint(1, 4)))
        sel, valid = select_spans(hits, m, max_spans, span)
        assert sel[0][valid[0]].tolist() == _literal_from_hits(hits, m, max_spans, span)
        assert sel.shape[1] == min(max_spans, m) * span


def test_pinned_centres_come_before_voted_hits():
    """Decode steps keep the question's centres: pinned ones are kept whatever the votes, the rest of
    the slots go to the most voted hits, and pinned entries >= M (empty slots) are ignored."""
    rng = random.Random(1)

    for _ in range(200):
        m = rng.randint(2, 150)
        max_spans, span = rng.randint(1, 8), rng.randint(1, 9)
        hits = torch.randint(0, m, (1, 2, rng.randint(1, 5), 2))
        n_pin = rng.randint(0, max_spans)
        pinned = sorted(rng.sample(range(m), min(n_pin, m)))
        pin_t = torch.tensor([pinned + [m] * (max_spans - len(pinned))])
        sel, valid = select_spans(hits, m, max_spans, span, pinned=pin_t)
        votes = Counter(hits.flatten().tolist())
        ranked = [c for c in sorted(votes, key=lambda c: (-votes[c], c)) if c not in pinned]
        kept = (pinned + ranked)[: min(max_spans, m)]
        chosen = set()
        for c in kept:
            chosen.update(range(max(0, c - span // 2), min(m, c - span // 2 + span)))
        assert sel[0][valid[0]].tolist() == sorted(chosen)


def test_vote_ties_go_to_the_earlier_position():
    hits = torch.tensor([[50, 10, 30, 50, 10, 30]])  # three hits, two votes each
    sel, valid = select_spans(hits, 100, 2, 1)
    assert sel[0][valid[0]].tolist() == [10, 30]


def test_selection_against_scoring_reference():
    torch.manual_seed(0)
    from reattn_llm.kernels import score_topk_torch

    for m in (1, 7, 97, 1025):
        q, k = torch.randn(1, 6, 5, 16), torch.randn(1, 2, m, 16)
        sel, valid = select_spans(score_topk_torch(q, k, 4), m, 5, 8)
        assert sel[0][valid[0]].tolist() == literal_selection(q[0], k[0], 4, 5, 8)[0]


@pytest.mark.parametrize("batch", [1, 3])
def test_build_scope_positions_are_contiguous(batch):
    sel = torch.tensor([[0, 1, 2, 7]] * batch)
    valid = torch.tensor([[True, True, False, True]] * batch)
    scope = build_scope(
        sel, valid, total=40, q_len=3, global_size=2, local_size=5, batch=batch, device=torch.device("cpu")
    )
    assert scope.gather_idx[0].tolist() == [0, 1, 2, 3, 4, 9, 35, 36, 37, 38, 39]
    assert scope.key_pos[0].tolist() == [0, 1, 2, 3, -1, 4, 5, 6, 7, 8, 9]
    assert scope.q_pos[0].tolist() == [7, 8, 9]
