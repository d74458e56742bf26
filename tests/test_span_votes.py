"""``vote_pooling="span"``: a centre is worth the hits its whole span covers (rank_spans), checked
against a brute-force reading of the rule at awkward sizes, and on the case it exists for."""

from __future__ import annotations

import pytest
import torch

from reattn_llm import ReAttentionConfig
from reattn_llm.errors import ConfigError
from reattn_llm.method.selection import expand_spans, rank_centres, rank_spans


def _brute(hits: list[int], m: int, keep: int, span: int) -> tuple[list[int], list[int]]:
    half = span // 2
    own = [hits.count(c) for c in range(m)]
    covered = [sum(own[max(c - half, 0) : min(c - half + span, m)]) for c in range(m)]
    order = {c: (covered[c], own[c], -c) for c in range(m)}
    peaks = [
        c for c in range(m)
        if covered[c] > 0 and all(order[c] >= order[j] for j in range(max(0, c - span + 1), min(m, c + span)))
    ]  # fmt: skip
    if m <= keep * span:  # the whole middle fits: tiles of it instead of peaks
        peaks = sorted({min(c + half, m - 1) for c in range(0, m, span)})
    peaks = sorted(peaks, key=lambda c: order[c], reverse=True)[:keep]
    pad = min(keep, m) - len(peaks)
    return peaks + [m] * pad, [covered[c] for c in peaks] + [0] * pad


def test_rank_spans_equals_the_rule_at_awkward_sizes():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        m = int(torch.randint(1, 70, (1,), generator=g))
        span = int(torch.randint(1, 12, (1,), generator=g))
        keep = int(torch.randint(1, 9, (1,), generator=g))
        hits = torch.randint(0, m, (2, int(torch.randint(1, 30, (1,), generator=g))), generator=g)
        centres, votes = rank_spans(hits, m, keep, span)
        for b in range(2):
            want = _brute(hits[b].tolist(), m, keep, span)
            assert (centres[b].tolist(), votes[b].tolist()) == want, (m, span, keep, hits[b].tolist())
        chosen = [c for c in centres[0].tolist() if c < m]
        if m <= keep * span:  # tiled: every middle token is in some span
            sel, valid = expand_spans(centres[:1].sort(dim=1).values, m, span)
            assert sel[valid].tolist() == list(range(m))
        else:  # peaks: spans never overlap
            assert all(abs(a - c) >= span for a in chosen for c in chosen if a != c) or span == 1


def test_rank_spans_equals_the_rule_with_clustered_hits_at_real_span_sizes():
    """The sparse search (candidates from the hits only) against the rule read at every position:
    hits piled on a few positions (many copies), near both ends, spans of the GPU default (32)."""
    g = torch.Generator().manual_seed(1)
    for i in range(25):
        m = int(torch.randint(70, 1500, (1,), generator=g))
        span = [2, 31, 32, 33][i % 4]
        keep = int(torch.randint(1, 12, (1,), generator=g))
        spots = torch.cat([torch.tensor([0, m - 1]), torch.randint(0, m, (6,), generator=g)])
        pick = torch.randint(
            0, spots.numel(), (3, int(torch.randint(5, 120, (1,), generator=g))), generator=g
        )
        hits = (spots[pick] + torch.randint(-3, 4, pick.shape, generator=g)).clamp(0, m - 1)
        centres, votes = rank_spans(hits, m, keep, span)
        for b in range(3):
            want = _brute(hits[b].tolist(), m, keep, span)
            assert (centres[b].tolist(), votes[b].tolist()) == want, (m, span, keep, hits[b].tolist())


def test_a_sentence_hit_at_many_tokens_outvotes_one_frequent_token():
    """Five queries hit five tokens of one sentence once each; three hit the same full stop. Per hit
    (the paper), the full stop wins the only span; per span, the sentence does, centred on its hits."""
    m, span = 200, 8
    sentence = [100, 101, 103, 104, 106]
    hits = torch.tensor([[*sentence, 40, 40, 40]])
    assert rank_centres(hits, m, 1)[0].tolist() == [[40]]
    centres, votes = rank_spans(hits, m, 1, span)
    c = centres.item()
    assert votes.item() == 5 and all(c - span // 2 <= s < c - span // 2 + span for s in sentence)


def test_vote_pooling_choices_name_the_fix():
    assert ReAttentionConfig().vote_pooling == "span"
    assert ReAttentionConfig(vote_pooling="hit").vote_pooling == "hit"
    with pytest.raises(ConfigError, match="vote_pooling"):
        ReAttentionConfig(vote_pooling="spans")  # type: ignore[arg-type]


def test_prompt_top_k_is_for_prompt_chunks_only_and_checked():
    cfg = ReAttentionConfig(prompt_top_k=16)
    assert (cfg.hits_for(1), cfg.hits_for(2), cfg.hits_for(512)) == (4, 16, 16)
    assert ReAttentionConfig().hits_for(512) == 4  # unset: top_k everywhere
    with pytest.raises(ConfigError, match="prompt_top_k=33 is above 32"):
        ReAttentionConfig(prompt_top_k=33)
    with pytest.raises(ConfigError, match="prompt_top_k=0: must be a positive integer"):
        ReAttentionConfig(prompt_top_k=0)


def _span_run(span_kernels: tuple[str, ...], decode_spans: str) -> tuple[torch.Tensor, list]:
    """Logits of a patched tiny llama (fp64; prompt chunks rank spans by span votes) over a prompt
    and 8 decode steps, and each layer's remembered centres; ``span_kernels``: the backends whose
    prompt chunks take the kernels' path (``planning.SPAN_KERNELS``, here their torch twins)."""
    from tiny_models import distinct_ids, prompt_then_steps, tiny_model

    from reattn_llm.method import planning

    model = tiny_model("llama", heads=6, kv_heads=2, head_dim=16, layers=2, window=128, seed=5).double()
    cfg = ReAttentionConfig(
        global_size=4,
        local_size=32,
        span_size=4,
        max_spans=5,
        top_k=2,
        chunk_size=16,
        decode_spans=decode_spans,
    )
    assert cfg.vote_pooling == "span"
    saved = planning.SPAN_KERNELS
    planning.SPAN_KERNELS = span_kernels
    try:
        return prompt_then_steps(model, cfg, distinct_ids(1, 168, seed=7), 160)
    finally:
        planning.SPAN_KERNELS = saved


@pytest.mark.parametrize("decode_spans", ["union", "question"])
def test_span_kernels_path_gives_the_method_path_bit_for_bit(decode_spans):
    """Prompt chunks through rank_spans + scope_from_centres (the Triton path's plumbing, with the
    torch twins standing in) give the logits of method.selection's ops and remember the same centres."""
    want, want_pins = _span_run((), decode_spans)
    got, got_pins = _span_run(("torch",), decode_spans)
    assert torch.equal(got, want), (got - want).abs().max()
    for p, q in zip(got_pins, want_pins, strict=True):
        assert torch.equal(p, q)
