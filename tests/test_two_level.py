"""Two-level selection: the block bound, exactness when every block is a candidate, the cache's
incremental summaries, and passkey retrieval with the real default model."""

from __future__ import annotations

import pytest
import torch
from tiny_models import distinct_ids, tiny_model

from reattn_llm import ConfigError, ReAttentionCache, ReAttentionConfig, patch
from reattn_llm.kernels import rank_blocks_torch, score_topk_torch
from reattn_llm.kv.dense import DenseLayer, TensorKV
from reattn_llm.kv.layer import KVReader
from reattn_llm.kv.summaries import BOUND_WEIGHT, KeySummaries, block_summaries
from reattn_llm.method.config import chunk_bounds
from reattn_llm.method.two_level import block_scores, two_level_topk


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``[B, H, Q, M]`` raw q.k in fp64, query head h reading KV head h // g."""
    g = q.shape[1] // k.shape[1]
    return torch.einsum("bhqd,bhmd->bhqm", q.double(), k.double().repeat_interleave(g, dim=1))


def _same_hits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a.sort(-1).values == b.sort(-1).values).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bs", [1, 7, 32])
def test_bound_is_an_upper_bound_of_every_key_in_its_block(dtype, bs):
    g = torch.Generator().manual_seed(bs)
    q = torch.randn(2, 6, 9, 64, generator=g, dtype=dtype) * 3
    k = torch.randn(2, 2, 20 * bs + bs // 2, 64, generator=g, dtype=dtype)
    k[..., 5] += 40  # an outlier channel, as real keys have
    bounds = block_scores(q, block_summaries(k, bs, 1.0))  # weight 1: Quest's bound, [B, H, Q, 20]
    assert bounds.shape == (2, 6, 9, 20)
    s = _scores(q, k)[..., : 20 * bs].reshape(2, 6, 9, 20, bs)
    # fp32 sums round: allow the summation error bound 2·D·eps·sum|q_d||k_d|
    mag = torch.einsum("bhqd,bhmd->bhqm", q.double().abs(), k.double().abs().repeat_interleave(3, dim=1))
    tol = 2 * 64 * torch.finfo(dtype).eps * mag[..., : 20 * bs].reshape(2, 6, 9, 20, bs).amax(-1)
    assert (s.amax(-1) <= bounds.double() + tol).all()
    if bs == 1:  # a block of one key: the bound is the score itself
        assert torch.allclose(bounds.double(), s[..., 0], rtol=1e-4, atol=1e-3)


def test_summaries_match_a_literal_min_max_mean():
    k = torch.randn(1, 3, 50, 8, dtype=torch.float64)
    s = block_summaries(k, 16, 0.3)
    assert s.shape == (1, 3, 3, 16)
    for j in range(3):
        blk = k[:, :, 16 * j : 16 * j + 16]
        hi, lo, mean = blk.max(dim=2).values, blk.min(dim=2).values, blk.mean(dim=2)
        assert torch.allclose(s[:, :, j, :8], 0.3 * (hi + lo) / 2 + 0.7 * mean)
        assert torch.allclose(s[:, :, j, 8:], 0.3 * (hi - lo) / 2)
    with pytest.raises(ValueError, match="weight must be in"):
        block_summaries(k, 16, 1.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_two_dots_are_the_three_part_blend(dtype):
    """``q·centre + |q|·radius`` is ``w·(relu(q)·max + min(q, 0)·min) + (1 - w)·q·mean``: the same
    score within the rounding of the stored summary."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 5, 32, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 12 * 16, 32, generator=g, dtype=torch.float64).to(dtype)
    blk = k.double().reshape(1, 2, 12, 16, 32)
    hi, lo, mean = blk.amax(3), blk.amin(3), blk.mean(3)
    qg = q.reshape(1, 2, 10, 32)
    three = (
        BOUND_WEIGHT * (qg.clamp(min=0) @ hi.mT + qg.clamp(max=0) @ lo.mT) + (1 - BOUND_WEIGHT) * qg @ mean.mT
    )
    two = block_scores(q.to(dtype), block_summaries(k, 16)).double().reshape(1, 2, 10, 12)
    tol = 1e-12 if dtype == torch.float64 else 2**-8 * 32 * qg.abs().max().item() * blk.abs().max().item()
    assert (two - three).abs().max().item() <= tol


@pytest.mark.parametrize("m,bs,c", [(200, 8, 25), (203, 8, 25), (203, 8, 40), (64, 16, 4)])
def test_all_blocks_candidates_is_exact_selection(m, bs, c):
    g = torch.Generator().manual_seed(m + c)
    q = torch.randn(2, 6, 5, 16, generator=g)
    k = torch.randn(2, 2, m, 16, generator=g)
    assert c * bs >= m - bs + 1  # every full block fits the budget
    assert torch.equal(two_level_topk(q, k, 4, c, bs), score_topk_torch(q, k, 4))


def test_level_two_finds_planted_hits_in_candidate_blocks_and_the_partial_tail():
    """Keys are small noise except planted strong keys; level 1 must find their blocks and level 2
    must map gathered indices back to the right middle positions (GQA, batch 2, partial tail)."""
    gen = torch.Generator().manual_seed(0)
    b, hkv, grp, nq, d, bs, m = 2, 2, 3, 4, 32, 8, 8 * 40 + 5
    u = torch.nn.functional.normalize(torch.randn(b, hkv, d, generator=gen), dim=-1)  # per KV head
    q = (
        0.3 * torch.randn(b, hkv * grp, nq, d, generator=gen)
        + 2 * u.repeat_interleave(grp, dim=1)[:, :, None]
    )
    k = 0.05 * torch.randn(b, hkv, m, d, generator=gen)
    # strongest first; rows >= 320 lie in the partial tail block, which has no summary
    planted = {
        (0, 0): [17, 90, 91, 250],
        (0, 1): [321, 3, 160],
        (1, 0): [44, 322, 200],
        (1, 1): [8, 9, 10, 300],
    }
    for (bi, hi), rows in planted.items():
        for j, r in enumerate(rows):
            k[bi, hi, r] = (4.0 - 0.5 * j) * u[bi, hi]
    exact = score_topk_torch(q, k, 2)
    two = two_level_topk(q, k, 2, candidate_blocks=6, block_size=bs)
    assert _same_hits(two, exact)
    for (bi, hi), rows in planted.items():  # the hits are the two strongest planted rows
        assert set(two[bi, hi * grp : (hi + 1) * grp].flatten().tolist()) == set(rows[:2])


def test_two_level_reduces_to_top_k_of_its_candidates():
    """Whatever level 1 picks, every returned hit scores at least as high as any other key of the
    KV head's candidate blocks (checked against a literal per-row search)."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 6, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 8 * 30 + 3, 16, generator=gen, dtype=torch.float64)
    hits = two_level_topk(q, k, 3, candidate_blocks=5, block_size=8)
    s = _scores(q, k)
    for h in range(4):
        cand = {int(p) // 8 for hq in range(2 * (h // 2), 2 * (h // 2) + 2) for p in hits[0, hq].flatten()}
        allowed = [r for r in range(k.shape[2]) if r // 8 in cand or r >= 240]
        for i in range(6):
            got = s[0, h, i, hits[0, h, i]].sort(descending=True).values
            best = s[0, h, i, allowed].sort(descending=True).values[:3]
            assert torch.equal(got, best)


@pytest.mark.parametrize("stride", [1, 3, 50])
def test_level1_from_every_sth_query_and_level2_for_every_query(stride):
    """``level1_stride=s``: the candidates are those of the queries ``q[:, :, ::s]`` alone (a literal
    rank and top-C of their rows), and every query's hits are its own top-k inside them (and the
    partial tail); a batch of one sequence's chunks (``grow``) selects each chunk as if alone."""
    from reattn_llm.kernels import top_blocks_torch

    gen = torch.Generator().manual_seed(stride)
    q = torch.randn(2, 4, 12, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 8 * 30 + 3, 16, generator=gen, dtype=torch.float64)
    hits = two_level_topk(
        q, k.expand(2, -1, -1, -1), 3, candidate_blocks=5, block_size=8, level1_stride=stride
    )
    blocks = top_blocks_torch(
        rank_blocks_torch(q[:, :, ::stride], block_summaries(k, 8).expand(2, -1, -1, -1)), 5
    )
    s = _scores(q, k.expand(2, -1, -1, -1))
    for b in range(2):
        for h in range(4):
            cand = set(blocks[b, h // 2].tolist())
            allowed = [r for r in range(k.shape[2]) if r // 8 in cand or r >= 240]
            for i in range(12):
                got = s[b, h, i, hits[b, h, i]].sort(descending=True).values
                assert torch.equal(got, s[b, h, i, allowed].sort(descending=True).values[:3])
    # two chunks of 8 queries, the second's middle 16 keys (two blocks) longer: each as if alone
    kv = DenseLayer()
    kv.update(k, k)
    both = two_level_topk(q[:, :, :8], kv, 3, 5, 8, lo=3, grow=16, level1_stride=stride)
    for b, hi in enumerate((k.shape[2] - 16, k.shape[2])):
        alone = two_level_topk(q[b : b + 1, :, :8], kv, 3, 5, 8, lo=3, hi=hi, level1_stride=stride)
        assert _same_hits(both[b : b + 1], alone)


def test_a_batch_straddling_the_candidate_budget_selects_in_two_batched_calls(monkeypatch):
    """A forward's chunks whose first middles the candidates cover (they score exactly) and whose
    later ones they do not: each chunk's hits are the ones it gets alone, from one exact call for
    the first chunks and one two-level call (one level 1) for the rest, not one call a chunk."""
    import reattn_llm.method.two_level as tl

    calls = {"exact": 0, "level1": 0}

    def counted(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)

        return wrapper

    gen = torch.Generator().manual_seed(7)
    q = torch.randn(4, 4, 8, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 80, 16, generator=gen, dtype=torch.float64)
    kv = DenseLayer()
    kv.update(k, k)
    # middles [3, end): 24, 40, 56, 72 keys = 3, 5, 7, 9 full blocks of 8 against 5 candidates
    ends = (27, 43, 59, 75)
    alone = [two_level_topk(q[b : b + 1], kv, 3, 5, 8, lo=3, hi=e) for b, e in enumerate(ends)]
    monkeypatch.setattr(tl, "exact_topk", counted("exact", tl.exact_topk))
    monkeypatch.setattr(tl, "level1_candidates", counted("level1", tl.level1_candidates))
    both = two_level_topk(q, kv, 3, 5, 8, lo=3, hi=75, grow=16)
    assert calls == {"exact": 1, "level1": 1}
    for b in range(4):
        assert _same_hits(both[b : b + 1], alone[b])


def test_rank_is_sliced_over_rows_without_changing_it(monkeypatch):
    import reattn_llm.kernels.torch_ops as ops

    q = torch.randn(2, 6, 50, 16, dtype=torch.float64)
    summ = block_summaries(torch.randn(2, 2, 8 * 30, 16, dtype=torch.float64), 8)
    whole = rank_blocks_torch(q, summ)
    monkeypatch.setitem(ops._SCORE_BLOCK_ELEMS, "cpu", 2 * 2 * 30 * 7)  # 7 rows per slice
    # fp64 so that a BLAS blocking that differs with the slice's row count stays far below 1e-12
    assert torch.allclose(rank_blocks_torch(q, summ), whole, rtol=0, atol=1e-12)
    # a block's rank is its best row-normalised score: 0 for the best block of some row
    assert torch.allclose(whole.amax(-1), torch.zeros(2, 2, dtype=torch.float64))


def test_many_blocks_take_the_twins_candidates_ties_to_the_lower_block():
    """Past ``MAX_TOP_BLOCKS`` blocks the GPU path ranks with torch's ``topk`` over keys that order
    ties to the lower block: its candidates are the twin's (stable sort), heavy ties, ``-0.0``, ``-inf``
    and all but a few blocks kept included. The path is plain torch, so it runs here."""
    from reattn_llm.kernels import top_blocks, top_blocks_torch
    from reattn_llm.kernels.triton_blocks import MAX_TOP_BLOCKS

    g = torch.Generator().manual_seed(0)
    for n, c in (
        (MAX_TOP_BLOCKS + 1, 508),
        (4 * MAX_TOP_BLOCKS, 508),
        (MAX_TOP_BLOCKS + 100, MAX_TOP_BLOCKS),
    ):
        rank = torch.randint(-3, 2, (2, 3, n), generator=g).float()  # every value tied thousands of times
        rank[0, 0, 5], rank[0, 0, 7], rank[1, 2, :4] = -0.0, 0.0, float("-inf")
        assert torch.equal(top_blocks(rank, c, "triton"), top_blocks_torch(rank, c)), (n, c)


def test_cache_keeps_summaries_incrementally_and_forgets_cropped_rows():
    layer = DenseLayer()
    ks = [torch.randn(1, 2, n, 8) for n in (5, 30, 1, 40)]
    origin, bs = 4, 8
    for piece in ks:
        keys, _ = layer.update(piece, piece)
        n = (keys.shape[2] - origin) // bs
        got = layer.block_summaries(origin, bs, n)
        assert torch.equal(got, block_summaries(keys[:, :, origin:], bs)[:, :, :n])
    assert layer.summaries.done == (76 - origin) // bs
    layer.crop(-20)  # 56 rows left: blocks reaching past row 56 are forgotten
    assert layer.summaries.done == (56 - origin) // bs
    new = torch.randn(1, 2, 24, 8)
    keys, _ = layer.update(new, new)
    assert torch.equal(
        layer.block_summaries(origin, bs, 9), block_summaries(keys[:, :, origin:], bs)[:, :, :9]
    )
    layer.reset()
    assert layer.summaries.done == 0
    # a different block size or origin starts over
    s = KeySummaries()
    kk = torch.randn(1, 1, 64, 4)
    read = TensorKV(kk).read_keys
    s.get(read, 0, 8, 8)
    assert torch.equal(s.get(read, 0, 16, 4), block_summaries(kk, 16))
    # read in steps of whole blocks (here three blocks of 8 at a time): the same summaries
    s = KeySummaries()
    assert torch.equal(s.get(read, 3, 8, 7, step=20), block_summaries(kk[:, :, 3:], 8))


def test_config_fields_and_errors():
    c = ReAttentionConfig(selection="two_level").resolve(8192)
    assert c.candidates == 4 * 127 and c.summary_block == 32
    c = ReAttentionConfig(selection="two_level", candidate_blocks=9, block_size=64).resolve(8192)
    assert c.candidates == 9 and c.summary_block == 64
    with pytest.raises(ConfigError, match="selection="):
        ReAttentionConfig(selection="approx")  # type: ignore[arg-type]
    assert c.level1_stride == 8 and c.query_stride == 1
    assert (c.strides_for(1024), c.strides_for(1023), c.strides_for(1)) == ((1, 8), (1, 1), (1, 1))
    # as the engine says: a document's short remainder keeps its strides, the answer's chunk takes every query
    assert (c.strides_for(1000, answer=False), c.strides_for(1024, answer=True)) == ((1, 8), (1, 1))
    c = ReAttentionConfig(query_stride=2, level1_stride=4, chunk_size=64)
    assert (c.strides_for(64), c.strides_for(16)) == ((2, 4), (1, 1))
    none = ReAttentionConfig(level1_stride=None, query_stride=None, chunk_size=64)  # type: ignore[arg-type]
    assert none.strides_for(64) == (1, 8)
    for name in ("candidate_blocks", "block_size", "level1_stride", "query_stride"):
        with pytest.raises(ConfigError, match=name):
            ReAttentionConfig(**{name: 0})


def _prefill_logits(model, ids, chunk):
    cache = ReAttentionCache(model.config.num_hidden_layers)
    with torch.no_grad():
        out = [
            model(ids[:, s : s + chunk], past_key_values=cache).logits for s in range(0, ids.shape[1], chunk)
        ]
    return torch.cat(out, 1), cache


def test_patched_model_equals_exact_when_candidates_cover_the_middle_and_runs_when_they_do_not():
    model = tiny_model("llama", heads=6, kv_heads=2, head_dim=64, window=128).double()
    base = dict(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)
    ids = distinct_ids(1, 200, seed=1)
    with patch(model, ReAttentionConfig(**base)):
        exact, _ = _prefill_logits(model, ids, 40)
    with patch(model, ReAttentionConfig(**base, selection="two_level", candidate_blocks=40)):
        two, _ = _prefill_logits(model, ids, 40)  # 40 blocks of 8 >= the middle (< 200 keys)
    assert torch.equal(two, exact)
    with patch(model, ReAttentionConfig(**base, selection="two_level", candidate_blocks=3)) as h:
        approx, cache = _prefill_logits(model, ids, 40)
        assert h.state.largest_position() < 128
    assert torch.isfinite(approx).all()
    assert cache.layers[0].summaries.done == (200 - 4 - 48) // 8  # the cache summarised the middle's blocks


def test_two_level_finds_the_passkey_at_every_depth_beyond_3x_window(smollm2):
    """The small-window passkey test of test_passkey.py with two-level selection everywhere (the
    answer forwards too: ``exact_answer="none"``), candidates cut to 8 blocks of 16 keys (at most ~10%
    of the ~1,340 middle keys). With the default (exact answer forwards over the two-level document)
    this toy setting misses depth 0.3 (BENCHMARKS.md, "Two-level selection"), while on RULER's
    natural-prose needles the default keeps exact selection's score and two-level answers do not."""
    from test_passkey import DEPTHS, KEYS, LENGTH, SMALL

    from reattn_llm.lab.evaluation import passkey_trial

    model, tok = smollm2
    cfg = ReAttentionConfig(**SMALL, selection="two_level", candidate_blocks=8, exact_answer="none")
    with patch(model, cfg) as handle:
        results = [
            passkey_trial(model, tok, LENGTH, d, k, chunk=128) for d, k in zip(DEPTHS, KEYS, strict=True)
        ]
        largest = handle.state.largest_position()
    assert [r.found for r in results] == [True] * 5, [r.answer for r in results]
    assert largest < SMALL["window"]


def test_level2_in_place_equals_level2_on_gathered_keys():
    """Level 2 reads device keys in place through a block table (the full candidate blocks, then the
    partial block at the end of the middle); it must name the rows the gathering path names."""
    torch.manual_seed(5)
    k = torch.randn(2, 2, 211, 32)
    q = torch.randn(2, 6, 3, 32)
    kv = TensorKV(k)
    lo, hi, bs = 3, 200, 8  # 197 middle rows: 24 full blocks and 5 rows
    blocks = torch.rand(2, 2, 24).topk(7, dim=2).indices.sort(dim=2).values
    in_place = kv.score_blocks(q, lo, hi, blocks, bs, 4, "torch")
    gathered = KVReader.score_blocks(kv, q, lo, hi, blocks, bs, 4, "torch")
    assert in_place.shape == (2, 6, 3, 4)
    assert torch.equal(in_place, gathered)
    rows = torch.cat(
        [(blocks[..., None] * bs + torch.arange(bs)).flatten(2), torch.arange(192, 197).expand(2, 2, 5)], 2
    )
    allowed = rows.repeat_interleave(3, dim=1)  # [B, H, 61]: the rows each query head may name
    assert bool((in_place[..., None] == allowed[:, :, None, None]).any(-1).all())


def _doc_then_answer(model, doc_cfg, answer_cfg, ids, doc, question):
    """``ids[:, :doc]`` in full chunks under ``doc_cfg``, then the question ``ids[:, doc:doc+question]``
    and the rest one token at a time under ``answer_cfg``, into one cache: the logits after the doc."""
    cache = ReAttentionCache(model.config.num_hidden_layers)
    with torch.no_grad():
        with patch(model, doc_cfg):
            for s in range(0, doc, doc_cfg.chunk_size):
                model(ids[:, s : s + doc_cfg.chunk_size], past_key_values=cache)
        with patch(model, answer_cfg):
            out = [model(ids[:, doc : doc + question], past_key_values=cache).logits]
            out += [
                model(ids[:, t : t + 1], past_key_values=cache).logits
                for t in range(doc + question, ids.shape[1])
            ]
    return torch.cat(out, 1)


def test_exact_answer_scores_the_question_and_decode_steps_exactly(monkeypatch):
    """With ``exact_answer`` (the default) a two-level prefill's question forward (shorter than a chunk)
    and decode steps select as exact selection does over the same cache: the answer's logits equal
    those of exact selection after the same two-level document, bit for bit; the document's full
    chunks stay two-level. ``exact_answer="none"`` selects the answer two-level too, ``"question"`` its
    decode steps."""
    from reattn_llm.method import planning

    model = tiny_model("llama", heads=6, kv_heads=2, head_dim=64, window=128).double()
    base = dict(global_size=4, local_size=48, span_size=8, max_spans=6, top_k=3, chunk_size=16)
    ids = distinct_ids(1, 240, seed=3)
    two = ReAttentionConfig(**base, selection="two_level", candidate_blocks=3)
    calls: list[int] = []
    real = planning.two_level_topk
    monkeypatch.setattr(
        planning, "two_level_topk", lambda q, *a, **k: calls.append(q.shape[2]) or real(q, *a, **k)
    )
    hybrid = _doc_then_answer(model, two, two, ids, 224, 11)
    assert set(calls) == {16}  # only the document's full chunks
    exact_after = _doc_then_answer(model, two, ReAttentionConfig(**base), ids, 224, 11)
    assert torch.equal(hybrid, exact_after)
    calls.clear()
    approx = _doc_then_answer(model, two, ReAttentionConfig(**base, selection="two_level", candidate_blocks=3,
                                                            exact_answer="none"), ids, 224, 11)  # fmt: skip
    assert {11, 1} <= set(calls)
    assert torch.isfinite(approx).all()
    calls.clear()  # "question": the question exact (the same logits), the decode steps two-level
    q_only = _doc_then_answer(model, two, ReAttentionConfig(**base, selection="two_level", candidate_blocks=3,
                                                            exact_answer="question"), ids, 224, 11)  # fmt: skip
    assert 1 in calls and 11 not in calls and torch.equal(q_only[:, :11], hybrid[:, :11])
    # one long forward: its short body remainder is two-level, only its last (tail) chunk is exact
    calls.clear()
    with (
        torch.no_grad(),
        patch(model, ReAttentionConfig(**base, selection="two_level", candidate_blocks=3, tail_size=8)),
    ):
        model(ids[:, :235], past_key_values=ReAttentionCache(model.config.num_hidden_layers))
    bounds = chunk_bounds(235, 16, 8)
    per_layer = [e - s for s, e in bounds[:-1] if e > 4 + 48]  # past G + L: selecting
    assert bounds[-1] == (227, 235) and per_layer[-1] == 3 and calls == per_layer * 2


def test_exact_answer_config():
    """Which chunks select two-level: ``two_level_for(queries, answer)``."""
    c = ReAttentionConfig(selection="two_level").resolve(8192)  # "all": question and decode steps exact
    assert (c.two_level_for(1), c.two_level_for(11), c.two_level_for(11, answer=False)) == (
        False,
        False,
        True,
    )
    assert c.two_level_for(c.chunk_size)  # not said: a full chunk is taken for the document's
    assert not c.two_level_for(c.chunk_size, answer=True)  # the engine's answer chunk, whatever its size
    c = ReAttentionConfig(selection="two_level", exact_answer="none").resolve(8192)
    assert c.two_level_for(1) and c.two_level_for(11)
    c = ReAttentionConfig(selection="two_level", exact_answer="question").resolve(8192)
    assert c.two_level_for(1) and not c.two_level_for(11)
    kv = ReAttentionConfig(selection="two_level", offload="keys_values").resolve(8192)
    assert kv.two_level_for(1) and not kv.two_level_for(11)  # K from host: once per question, not per token
    assert not ReAttentionConfig().resolve(8192).two_level_for(1024)
    with pytest.raises(ConfigError, match="exact_answer='question'"):
        ReAttentionConfig(selection="two_level", offload="keys_values", exact_answer="all")
    with pytest.raises(ConfigError, match="exact_answer="):
        ReAttentionConfig(exact_answer=True)  # type: ignore[arg-type]
