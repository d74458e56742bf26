"""``vote_heads="retrieval"``: span votes weighted per query head (rank_spans' reference path: a
head's hits counted w times equal its hits repeated w times), the weights from measured hit rates,
and the measurement itself on the default model."""

from __future__ import annotations

import pytest
import torch

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.calibration.heads import ABOVE_CHANCE, head_votes, measure_hit_rates
from reattn_llm.errors import ConfigError
from reattn_llm.method.selection import rank_spans


def test_weighted_votes_equal_repeated_hits_at_awkward_sizes():
    g = torch.Generator().manual_seed(3)
    for _ in range(60):
        m = int(torch.randint(5, 400, (1,), generator=g))
        span = int(torch.randint(1, 34, (1,), generator=g))
        keep = int(torch.randint(1, 9, (1,), generator=g))
        h, q, k = 5, int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        hits = torch.randint(0, m, (2, h, q, k), generator=g)
        w = torch.tensor([0, 3, 1, 0, 1])  # sums to H
        got = rank_spans(hits, m, keep, span, w)
        repeated = torch.cat([hits[:, i].repeat(1, int(w[i]), 1) for i in range(h) if w[i]], dim=1)
        assert all(torch.equal(a, b) for a, b in zip(got, rank_spans(repeated, m, keep, span), strict=True))
        ones = rank_spans(hits, m, keep, span, torch.ones(h, dtype=torch.int64))
        assert all(torch.equal(a, b) for a, b in zip(ones, rank_spans(hits, m, keep, span), strict=True))


def test_a_retrieval_head_outvotes_many_heads_of_decoys():
    """Head 0 hits the fact's tokens; heads 1-4 pile onto one decoy. All heads voting, the decoy
    wins the one span; with head 0's votes, the fact does."""
    m, span = 300, 8
    hits = torch.full((1, 5, 4, 1), 50)
    hits[0, 0, :, 0] = torch.tensor([200, 201, 203, 204])
    assert rank_spans(hits, m, 1, span)[0].item() in range(46, 55)
    centre = rank_spans(hits, m, 1, span, torch.tensor([5, 0, 0, 0, 0]))[0].item()
    assert centre - span // 2 <= 200 and 204 < centre - span // 2 + span


def test_head_votes_from_rates():
    rates = torch.zeros(4, 6)
    rates[0] = torch.tensor([0.30, 0.10, 0.0, 0.0, 0.0, 0.0])  # two heads above chance, 3:1
    rates[2, 3] = 0.001  # above a median of 0, but thin: one vote
    rates[3] = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    votes = head_votes(rates)
    assert votes[0].tolist() == [4, 1, 0, 0, 0, 0]
    assert votes[1].tolist() == [1] * 6  # no head above chance: the layer votes as before
    assert votes[3].tolist() == [1] * 6
    assert (votes.sum(dim=1) <= 6).all()
    assert ABOVE_CHANCE > 1
    with pytest.raises(ValueError, match="layers, heads"):
        head_votes(torch.zeros(3))


def test_vote_heads_choices_name_the_fix():
    with pytest.raises(ConfigError, match="vote_heads"):
        ReAttentionConfig(vote_heads="some")


def test_retrieval_votes_need_measured_heads(smollm2):
    model, _ = smollm2
    ids = torch.randint(0, 1000, (1, 700))
    with patch(model, ReAttentionConfig(window=256, vote_heads="retrieval")):
        with pytest.raises(ValueError, match="reattn calibrate"):
            model(input_ids=ids)


def test_measured_rates_single_out_a_few_heads_on_the_default_model(smollm2):
    """The package's own needles at 8x a window of 128: a few heads put many of their hits on the fact,
    most almost none (the default model's retrieval heads sit in its upper-middle layers)."""
    model, tok = smollm2
    from reattn_llm.calibration.calibrate import haystack

    text, _ = haystack()
    rates = measure_hit_rates(model, tok, text, 1000, 2, config=ReAttentionConfig(window=128))
    assert rates.shape == (30, 9)
    assert model.config._attn_implementation != "reattention"  # unpatched after measuring
    top = rates.flatten().sort(descending=True).values
    assert top[0] > 0.1 and top[9] > 10 * rates.median()
    votes = head_votes(rates)
    assert (votes.sum(dim=1) <= 9).all() and (votes != 1).any()
    assert rates[12:25].sum() > rates[:12].sum()
