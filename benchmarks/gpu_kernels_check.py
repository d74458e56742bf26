"""GPU correctness checks of the Triton kernels at real sizes (bf16 included).

Run on a CUDA machine: ``python benchmarks/gpu_kernels_check.py [--json out.json]``.

* top-k: the returned indices must be an exact top-k of the raw ``q . k`` (ties aside): their
  scores, recomputed in fp64, sorted, must equal the fp32 reference top-k scores (TF32 off)
  within fp32 summation error; no duplicates, all in range. Includes a planted case with two
  true hits in one 128-key block.
* attention: relative error vs an fp64 reference <= 2x the torch twin's error at the same
  precision; every output element written (the output is never pre-zeroed; finite check).
* level-1 block rank (two-level selection): the kernel against fp64 on the same rounded inputs,
  within the fp32 error of its dots; its time beside the torch twin's (which slices the
  ``[rows, blocks]`` scores).
* level 2 of two-level selection: the top-k over candidate blocks read in place (a block table)
  is an exact top-k of those keys and names the rows that gathering them first names; both timed.
* selection: the fused span selection equals, exactly, its torch twin and ``method.selection``'s
  ops (rank_centres, sort, expand_spans, build_scope), decode and prefill chunks, ranked inside
  the kernel and outside it.
* the model's own ops (``method.model_ops``): RMSNorm and the gated activation in one kernel each,
  within one rounding of their twins (the stock modules' ops), both timed.
* a forward's chunks as one batch (``grow``): scoring, span votes and scope, and two-level
  selection's levels, equal each chunk's alone, bit for bit, timed against the chunk-by-chunk chain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import triton.testing

from reattn_llm.kernels.torch_ops import (
    rank_blocks_torch,
    scope_attention_torch,
    score_topk_torch,
    top_blocks_torch,
)
from reattn_llm.kernels.triton_attention import scope_attention_triton
from reattn_llm.kernels.triton_blocks import candidate_blocks_triton, rank_blocks_triton, top_blocks_triton
from reattn_llm.kernels.triton_select import MAX_FUSED, select_scope_triton
from reattn_llm.kernels.triton_topk import score_topk_blocks_triton, score_topk_triton

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEV = "cuda"
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def rope_tables(P, R, base=500000.0, dtype=torch.float32):
    inv = 1.0 / base ** (torch.arange(0, R, 2, dtype=torch.float64, device=DEV) / R)
    f = torch.outer(torch.arange(P, dtype=torch.float64, device=DEV), inv)
    e = torch.cat([f, f], -1)
    return e.cos().to(dtype), e.sin().to(dtype)


def check_topk(q, k, top_k, got):
    B, H, Q, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    g = H // Hkv
    kk = min(top_k, M)
    assert got.shape == (B, H, Q, kk) and got.dtype == torch.int64, (
        f"shape/dtype {tuple(got.shape)} {got.dtype}"
    )
    assert int(got.min()) >= 0 and int(got.max()) < M, "index out of range"
    srt = got.sort(-1).values
    assert bool((srt[..., 1:] != srt[..., :-1]).all()), "duplicate indices"
    ref = score_topk_torch(q.float(), k.float(), top_k)  # fp32, TF32 off

    def scores(idx):  # fp64 q.k of the returned indices and sum |q_d k_d|, each [B, H, Q, kk]
        out = torch.empty(idx.shape, dtype=torch.float64, device=idx.device)
        mag = torch.empty(idx.shape, dtype=torch.float64, device=idx.device)
        for b in range(B):
            for h in range(H):
                rows = k[b, h // g].index_select(0, idx[b, h].reshape(-1)).double().reshape(Q, kk, D)
                out[b, h] = torch.einsum("qd,qkd->qk", q[b, h].double(), rows)
                mag[b, h] = torch.einsum("qd,qkd->qk", q[b, h].double().abs(), rows.abs())
        return out, mag

    gs, gm = scores(got)
    rs, rm = scores(ref)
    gv = gs.sort(-1, descending=True).values
    rv = rs.sort(-1, descending=True).values
    # both sides are fp32 sums of D exact products: each off by at most D * 2^-24 * sum |q_d k_d|
    tol = 2 * D * 2.0**-24 * max(gm.max().item(), rm.max().item())
    err = (gv - rv).abs().max().item()
    assert err <= tol, f"scores of returned top-k differ from the fp32 reference by {err:.3g} (tol {tol:.3g})"
    same = (got.sort(-1).values == ref.sort(-1).values).all(-1).float().mean().item()
    return {"score_gap": err, "tol": tol, "identical_index_sets": same}


def topk_case(B, H, Hkv, Q, M, D, top_k, dtype, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(B, H, Q, D, device=DEV, dtype=dtype)
    buf = torch.randn(B, Hkv, M + 100, D, device=DEV, dtype=dtype)
    k = buf[:, :, 32 : 32 + M]  # the middle slice of a cache buffer
    t = time.time()
    got = score_topk_triton(q, k, top_k)
    torch.cuda.synchronize()
    info = check_topk(q, k, top_k, got)
    info["kernel_s_first_call"] = round(time.time() - t, 3)
    return info


def topk_planted(dtype):
    torch.manual_seed(1)
    B, H, Hkv, Q, M, D = 1, 32, 8, 1024, 131072, 128
    q = torch.randn(B, H, Q, D, device=DEV, dtype=dtype)
    k = torch.randn(B, Hkv, M, D, device=DEV, dtype=dtype) * 0.05
    target = q[0, 0].float().mean(0)
    for j, a in ((70000, 4.0), (70001, 3.5), (70050, 3.0), (100, 2.5)):  # 3 hits in one 128-block
        k[0, 0, j] = (target * a).to(dtype)
    got = score_topk_triton(q, k, 4)
    hits = set(got[0, 0, :64].flatten().tolist())
    assert {70000, 70001, 70050} <= hits, f"planted same-block hits missing: {sorted(hits)[:10]}"
    return check_topk(q, k, 4, got)


def attn_case(B, H, Hkv, Q, T, N, D, dtype, seed=0, chunk_tail=False, config=None):
    torch.manual_seed(seed)
    q = torch.randn(B, Q, H, D, device=DEV, dtype=dtype).transpose(1, 2)  # the layer's layout
    kc = torch.randn(B, Hkv, T + 64, D, device=DEV, dtype=dtype)[:, :, :T]
    vc = torch.randn(B, Hkv, T + 64, D, device=DEV, dtype=dtype)[:, :, :T]
    # scope: global 32 | sorted random middle rows | local tail; a few padding entries
    idx = []
    for _ in range(B):
        g = torch.arange(32, device=DEV)
        loc = torch.arange(T - N // 2, T, device=DEV)
        mid = torch.randperm(T - N // 2 - 32, device=DEV)[: N - 32 - N // 2].sort().values + 32
        idx.append(torch.cat([g, mid, loc]))
    idx = torch.stack(idx)
    kpos = torch.arange(N, device=DEV).expand(B, N).clone()
    kpos[:, 40:45] = -1
    qpos = (torch.arange(Q, device=DEV) + N - Q).expand(B, Q).clone()
    cos, sin = rope_tables(N + 8, D, dtype=dtype)
    args = (q, kc, vc, idx, kpos, qpos, cos, sin)
    scale = D**-0.5
    got = scope_attention_triton(*args, scale, chunk_tail, _config=config)
    torch.cuda.synchronize()
    assert got.shape == (B, Q, H, D) and got.dtype == dtype
    assert bool(torch.isfinite(got).all()), "non-finite output"
    twin = scope_attention_torch(*args, scale)
    ref = scope_attention_torch(*[a.double() if a.is_floating_point() else a for a in args], scale)
    e_k = ((got.double() - ref).norm() / ref.norm()).item()
    e_t = ((twin.double() - ref).norm() / ref.norm()).item()
    assert e_k <= 2 * e_t + 1e-9, f"kernel error {e_k:.3g} > 2x twin error {e_t:.3g}"
    info = {"err_kernel": e_k, "err_twin": e_t}
    if (config or {}).get("PREFIX") == "cudnn":  # the split ran, not its fallback
        from reattn_llm.kernels import cudnn_prefix

        assert cudnn_prefix.cudnn_prefix_available(q), f"cuDNN prefix unavailable: {cudnn_prefix._failed}"
    if chunk_tail and B > 1:  # a batch of chunks gives each what it gets alone, bit for bit
        for b in range(B):
            one = (*(a[b : b + 1] for a in args[:6]), *args[6:])  # cos, sin are tables
            alone = scope_attention_triton(*one, scale, True, _config=config)
            assert torch.equal(alone[0], got[b]), f"batch entry {b} differs from the entry alone"
        info["us"] = (
            triton.testing.do_bench(lambda: scope_attention_triton(*args, scale, True, _config=config)) * 1e3
        )
    return info


def prefix_case(B, Hkv, R, P, D, dtype, seed=0):
    """cuDNN's prefix call (cudnn_prefix, no mask: padding gathered as zero keys and values) against
    its twin: the normalised output within the twin's rounding, the log-sum-exp in natural log within
    fp32 error; timed beside the same call with run 17's padding bias, whose cost it avoids."""
    from reattn_llm.kernels.cudnn_prefix import _prefix_cudnn, prefix_attention_torch

    torch.manual_seed(seed)
    qf = torch.randn(B, Hkv, R, D, device=DEV, dtype=dtype)
    kp = torch.randn(B, Hkv, P + 7, D, device=DEV, dtype=dtype)[:, :, :P]  # strided, as sliced
    vp = torch.randn(B, Hkv, P + 7, D, device=DEV, dtype=dtype)[:, :, :P]
    kp[:, :, 5:40] = 0.0  # padding, as gathered
    vp[:, :, 5:40] = 0.0
    args = (qf, kp, vp, D**-0.5)
    out, lse = _prefix_cudnn(*args)
    ref_o, ref_l = prefix_attention_torch(*args)
    e_o = ((out.double() - ref_o.double()).norm() / ref_o.double().norm()).item()
    e_l = (lse.double() - ref_l.double()).abs().max().item()
    assert out.shape == ref_o.shape and lse.shape == ref_l.shape, (out.shape, lse.shape)
    assert e_o < 2e-2 and e_l < 2e-3, f"cuDNN prefix differs: output {e_o:.3g}, lse {e_l:.3g} (log base?)"
    us = triton.testing.do_bench(lambda: _prefix_cudnn(*args)) * 1e3
    bias = torch.zeros(B, -(-P // 8) * 8, device=DEV, dtype=dtype)[:, None, None, :P]
    bias[..., 5:40] = -30000.0

    def biased():
        return torch.ops.aten._scaled_dot_product_cudnn_attention(
            qf, kp, vp, bias, True, 0.0, False, False, scale=D**-0.5
        )

    us_bias = triton.testing.do_bench(biased) * 1e3
    tf = 4 * B * Hkv * R * P * D / 1e6
    return {
        "err_out": e_o,
        "err_lse": e_l,
        "us": us,
        "TFLOP/s": tf / us,
        "us_bias": us_bias,
        "TFLOP/s_bias": tf / us_bias,
    }


def level2_case(B, H, Hkv, Q, M, D, bs, C, top_k, dtype, seed=0):
    """Two-level selection's level 2 in place (a block table into the middle) against its twin, an
    exact top-k of the candidate keys, timed beside gathering the candidates and scoring them."""
    torch.manual_seed(seed)
    q = torch.randn(B, H, Q, D, device=DEV, dtype=dtype)
    k = torch.randn(B, Hkv, M + 64, D, device=DEV, dtype=dtype)[:, :, 32 : 32 + M]
    n_full = M // bs
    blocks = torch.rand(B, Hkv, n_full, device=DEV).topk(C, dim=2).indices.sort(dim=2).values
    n_keys = C * bs + M % bs
    got = score_topk_blocks_triton(q, k, blocks, bs, top_k)
    full = (blocks[..., None] * bs + torch.arange(bs, device=DEV)).flatten(2)
    rows = torch.cat([full, torch.arange(n_full * bs, M, device=DEV).expand(B, Hkv, -1)], 2)

    def gathered():
        kc = k.gather(2, rows[..., None].expand(-1, -1, -1, D))
        local = score_topk_triton(q, kc, top_k)
        return rows.repeat_interleave(H // Hkv, 1).gather(2, local.flatten(2)).reshape(local.shape)

    ref = gathered()
    kc = k.gather(2, rows[..., None].expand(-1, -1, -1, D))
    logical = torch.full((B, Hkv, M), -1, dtype=torch.long, device=DEV)
    logical.scatter_(2, rows, torch.arange(n_keys, device=DEV).expand(B, Hkv, -1).contiguous())
    local = logical.repeat_interleave(H // Hkv, 1).gather(2, got.flatten(2)).reshape(got.shape)
    assert int(local.min()) >= 0, "a row outside the candidate blocks"
    info = check_topk(q, kc, top_k, local)
    info["same_rows_as_gathering"] = bool((got.sort(-1).values == ref.sort(-1).values).all())
    t_in = triton.testing.do_bench(lambda: score_topk_blocks_triton(q, k, blocks, bs, top_k))
    t_ga = triton.testing.do_bench(gathered)
    return {**info, "in_place_ms": round(t_in, 4), "gather_then_score_ms": round(t_ga, 4)}


def top_blocks_case(B, Hkv, n, c, seed=0):
    """Level 1's candidates in one launch against the twin (stable sort), timed beside topk + sort."""
    torch.manual_seed(seed)
    rank = -torch.rand(B, Hkv, n, device=DEV) * 3
    rank[..., ::97] = 0.0  # ties at the top, as every row's best block gives
    got = top_blocks_triton(rank, c)
    assert torch.equal(got, top_blocks_torch(rank, c)), "kernel and twin pick different blocks"
    t_k = triton.testing.do_bench(lambda: top_blocks_triton(rank, c), return_mode="median")
    t_ts = triton.testing.do_bench(
        lambda: rank.topk(c, dim=2, sorted=False).indices.sort(dim=2).values, return_mode="median"
    )
    return {"kernel_ms": round(t_k, 4), "topk_sort_ms": round(t_ts, 4)}


def candidate_blocks_case(B, H, Hkv, NB, D, c, dtype, seed=0):
    """A decode step's level 1 fused (summaries read once, two launches) against rank_blocks +
    top_blocks (three launches): the same blocks, and both timed."""

    torch.manual_seed(seed)
    q = torch.randn(B, H, 1, D, device=DEV, dtype=dtype)
    summ = torch.randn(B, Hkv, NB, 2 * D, device=DEV, dtype=dtype)
    got = candidate_blocks_triton(q, summ, c)
    ref = top_blocks_triton(rank_blocks_triton(q, summ), c)
    assert torch.equal(got, ref), "fused and two-kernel level 1 pick different blocks"
    t_f = triton.testing.do_bench(lambda: candidate_blocks_triton(q, summ, c), return_mode="median")
    t_u = triton.testing.do_bench(
        lambda: top_blocks_triton(rank_blocks_triton(q, summ), c), return_mode="median"
    )
    return {"fused_ms": round(t_f, 4), "rank_then_top_ms": round(t_u, 4)}


def rank_blocks_case(B, H, Hkv, Q, NB, D, dtype, seed=0):

    torch.manual_seed(seed)
    q = torch.randn(B, H, Q, D, device=DEV, dtype=dtype)
    summ = torch.randn(B, Hkv, NB, 2 * D, device=DEV, dtype=dtype)
    got = rank_blocks_triton(q, summ)
    ref = rank_blocks_torch(q.double(), summ.double())
    tol = 2 * 4 * 2 * D * 2.0**-24 * D * q.abs().max().item() * summ.abs().max().item()
    err = (got.double() - ref).abs().max().item()
    assert err <= tol, f"rank differs from fp64 by {err:.3g} (tol {tol:.3g})"
    del ref
    t_tri = triton.testing.do_bench(lambda: rank_blocks_triton(q, summ), return_mode="median")
    one = dict(splits=1)  # the row-best pass unsplit, as before the decode split
    t_one = triton.testing.do_bench(lambda: rank_blocks_triton(q, summ, _config=one), return_mode="median")
    t_torch = triton.testing.do_bench(lambda: rank_blocks_torch(q, summ), return_mode="median")
    return {
        "max_err": err,
        "triton_ms": round(t_tri, 4),
        "unsplit_ms": round(t_one, 4),
        "torch_ms": round(t_torch, 3),
    }


def spans_case(B, H, Q, k, M, keep, span, bands=None, seed=0):
    """A prompt chunk's span votes: kernel equals twin bit for bit; both timed. ``bands``: the hits
    fall in that many narrow bands of the middle (real hits cluster), else uniformly."""
    from reattn_llm.kernels.torch_select import rank_spans_torch
    from reattn_llm.kernels.triton_spans import rank_spans_triton

    g = torch.Generator(device=DEV).manual_seed(seed)
    if bands is None:
        hits = torch.randint(0, M, (B, H, Q, k), device=DEV, generator=g)
    else:
        c = torch.randint(0, M, (B, bands), device=DEV, generator=g)
        pick = torch.randint(0, bands, (B, H * Q * k), device=DEV, generator=g)
        off = torch.randint(-4 * span, 4 * span + 1, pick.shape, device=DEV, generator=g)
        hits = (c.gather(1, pick) + off).clamp(0, M - 1).reshape(B, H, Q, k)
    got = rank_spans_triton(hits, M, keep, span)
    want = rank_spans_torch(hits, M, keep, span)
    for a, w in zip(got, want, strict=True):
        assert torch.equal(a, w), "kernel and twin differ"
    t_tri = triton.testing.do_bench(lambda: rank_spans_triton(hits, M, keep, span), return_mode="median")
    t_torch = triton.testing.do_bench(lambda: rank_spans_torch(hits, M, keep, span), return_mode="median")
    return {"spans": int((got[0] < M).sum()), "triton_ms": round(t_tri, 3), "torch_ms": round(t_torch, 3)}


def grow_case(C, H, Hkv, Q, M, D, top_k, n_spans, span, G, L, dtype, seed=0):
    """One forward's C chunks selected as one batch (``grow``, ``method.planning.plan_chunks``): the
    scoring, span votes and scope of the batch equal each chunk's alone, bit for bit; the batch's
    three calls timed against the C chunks' (the chain the per-chunk planner runs)."""
    from reattn_llm.kernels.triton_select import scope_from_centres_triton
    from reattn_llm.kernels.triton_spans import rank_spans_triton
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(seed)
    q = torch.randn(1, H, C * Q, D, device=DEV, dtype=dtype)[0].unflatten(1, (C, Q)).transpose(0, 1)
    keys = torch.randn(1, Hkv, M + 64, D, device=DEV, dtype=dtype)[:, :, 32 : 32 + M]

    def batch():
        hits = score_topk_triton(q, keys.expand(C, -1, -1, -1), top_k, grow=Q)
        centres, votes = rank_spans_triton(hits, M, n_spans, span, Q)
        return (hits, centres, votes, *scope_from_centres_triton(centres, M, span, G, L, G + M + L, Q, Q))

    def alone(c):
        m = M - (C - 1 - c) * Q
        hits = score_topk_triton(q[c : c + 1], keys[:, :, :m], top_k)
        centres, votes = rank_spans_triton(hits, m, n_spans, span)
        return (hits, centres, votes, *scope_from_centres_triton(centres, m, span, G, L, G + m + L, Q))

    got = batch()
    for c in range(C):
        for a, w in zip(got, alone(c), strict=True):
            assert torch.equal(a[c : c + 1], w[:, : a.shape[1]] if a.dim() == 2 else w), f"chunk {c} differs"
    t_batch = triton.testing.do_bench(batch, return_mode="median")
    t_alone = triton.testing.do_bench(lambda: [alone(c) for c in range(C)], return_mode="median")
    return {"batched_ms": round(t_batch, 3), "chunk_by_chunk_ms": round(t_alone, 3)}


def grow_levels_case(C, H, Hkv, Q, M, D, bs, c, top_k, dtype, seed=0):
    """Two-level selection's levels for one forward's C chunks as a batch (``grow``): level 1's ranks
    and level 2's hits of each row equal that chunk alone, bit for bit; both timed against the C
    chunks' calls."""
    from reattn_llm.kernels import top_blocks
    from reattn_llm.kernels.triton_blocks import rank_blocks_triton
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton
    from reattn_llm.kv.summaries import block_summaries

    torch.manual_seed(seed)
    q = torch.randn(1, H, C * Q, D, device=DEV, dtype=dtype)[0].unflatten(1, (C, Q)).transpose(0, 1)
    keys = torch.randn(1, Hkv, M, D, device=DEV, dtype=dtype)
    summ = block_summaries(keys, bs)
    n, gb = summ.shape[2], Q // bs

    def batch():
        rank = rank_blocks_triton(q, summ.expand(C, -1, -1, -1), gb)
        blocks = top_blocks(rank, c, "triton")
        return rank, score_topk_blocks_triton(q, keys.expand(C, -1, -1, -1), blocks, bs, top_k, grow=Q)

    def alone(b):
        nb, mb = n - (C - 1 - b) * gb, M - (C - 1 - b) * Q
        rank = rank_blocks_triton(q[b : b + 1], summ[:, :, :nb])
        blocks = top_blocks(rank, c, "triton")
        return rank, score_topk_blocks_triton(q[b : b + 1], keys[:, :, :mb], blocks, bs, top_k)

    # the candidates too: past MAX_TOP_BLOCKS torch's topk runs over keys that order ties to the lower
    # block (every row's best block ranks 0), so another shape picks the same blocks
    rank, hits = batch()
    for b in range(C):
        r, h = alone(b)
        assert torch.equal(rank[b : b + 1, :, : r.shape[2]], r), f"chunk {b}: level 1 differs"
        assert torch.equal(hits[b : b + 1], h), f"chunk {b}: level 2 differs"
    t_batch = triton.testing.do_bench(batch, return_mode="median")
    t_alone = triton.testing.do_bench(lambda: [alone(b) for b in range(C)], return_mode="median")
    return {"batched_ms": round(t_batch, 3), "chunk_by_chunk_ms": round(t_alone, 3)}


def select_case(B, H, Q, k, M, P, n_spans, span, G, L, by_rank, spread=None, seed=0):
    """Fused selection == torch twin == method.selection, every output, exactly."""
    from reattn_llm.kernels.torch_select import select_scope_torch
    from reattn_llm.method.selection import build_scope, expand_spans, rank_centres

    g = torch.Generator(device=DEV).manual_seed(seed)
    hits = torch.randint(0, spread or M, (B, H, Q, k), device=DEV, generator=g)  # small spread: ties
    pinned = None
    if P:
        pinned = torch.randint(0, M, (B, P), device=DEV, generator=g)
        pinned[:, 0] = 1 << 62  # an empty slot
        pinned[:, -1] = hits[:, 0, 0, 0]  # a pin that is also a hit
    total = G + M + L
    args = (hits, pinned, M, n_spans, span, G, L, total, Q, by_rank)
    got = select_scope_triton(*args)
    ranked, votes = rank_centres(hits, M, n_spans, pinned, None, by_rank=by_rank)
    sel, valid = expand_spans(ranked[:, :n_spans].sort(dim=1).values, M, span)
    s = build_scope(sel, valid, total, Q, G, L, B, hits.device)
    want = (s.gather_idx, s.key_pos, s.q_pos, s.middle, s.middle_valid, ranked, votes)
    for name, a, b, t in zip(got._fields, got, want, select_scope_torch(*args), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, (
            f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        )
        assert torch.equal(a, b), f"{name} differs from method.selection"
        assert torch.equal(a, t), f"{name} differs from the torch twin"
    return {"in_kernel": H * Q * k + P <= MAX_FUSED, "kept": int(got.middle_valid.sum())}


def model_ops_case(rows: int, hidden: int, inter: int, dtype) -> dict:
    """The model's RMSNorm (Llama's and Gemma's order) and gated activation (SiLU, GELU tanh) in one
    kernel each against their twins (the stock modules' ops): within one rounding of the dtype, and
    both timed (``us`` fused, ``us_stock`` the twin's chain of kernels)."""
    from reattn_llm.kernels.torch_ops import gated_act_torch, rms_norm_torch
    from reattn_llm.kernels.triton_gated import gated_act_triton
    from reattn_llm.kernels.triton_norm import rms_norm_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(rows, hidden, device="cuda", generator=g) * 3).to(dtype)
    w = torch.randn(hidden, device="cuda", generator=g).to(dtype)
    gate = (torch.randn(rows, inter, device="cuda", generator=g) * 4).to(dtype)
    up = torch.randn(rows, inter, device="cuda", generator=g).to(dtype)
    eps = torch.finfo(dtype).eps
    pairs = {  # label: (fused, twin)
        "norm_llama": (lambda: rms_norm_triton(x, w, 1e-5), lambda: rms_norm_torch(x, w, 1e-5)),
        "norm_gemma": (
            lambda: rms_norm_triton(x, w, 1e-6, 1.0, False),
            lambda: rms_norm_torch(x, w, 1e-6, 1.0, False),
        ),
        "silu": (lambda: gated_act_triton(gate, up, "silu"), lambda: gated_act_torch(gate, up, "silu")),
        "gelu_tanh": (
            lambda: gated_act_triton(gate, up, "gelu_tanh"),
            lambda: gated_act_torch(gate, up, "gelu_tanh"),
        ),
    }
    info = {}
    for label, (fused, twin) in pairs.items():
        got, want = fused().double(), twin().double()
        ulp = ((got - want).abs() / (eps * want.abs().clamp_min(1.0))).max().item()
        assert ulp <= 2.0, f"{label}: {ulp:.2f} ulp from the twin"
        info[f"{label}_ulp"] = ulp
        info[f"{label}_us"] = triton.testing.do_bench(fused) * 1e3
        info[f"{label}_us_stock"] = triton.testing.do_bench(twin) * 1e3
    return info


def unwritten_case(B: int, N: int, written: int, q_len: int) -> dict:
    """A static decode step's scope cut to the rows written (``mask_unwritten``, one launch) against
    its twin's chain of torch ops: equal, the largest position too, and both timed (``us`` the
    kernel, ``us_twin`` the chain; from a graph each of the twin's ~15 kernels costs 1-3 us)."""
    from reattn_llm.kernels.torch_select import mask_unwritten_torch
    from reattn_llm.kernels.triton_static import mask_unwritten_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    idx = torch.randint(0, written + N // 8, (B, N), device="cuda", generator=g)
    pos = torch.arange(N, device="cuda").expand(B, N).clone()
    pos[torch.rand(B, N, device="cuda", generator=g) < 0.1] = -1
    total = torch.tensor([written], device="cuda")
    peaks = [torch.tensor([3], device="cuda") for _ in range(2)]
    got = mask_unwritten_triton(idx, pos, total, q_len, peaks[0])
    want = mask_unwritten_torch(idx, pos, total, q_len, peaks[1])
    for a, w in zip((*got, peaks[0]), (*want, peaks[1]), strict=True):
        assert torch.equal(a, w), "differs from the twin"
    return {
        "kept": int((got[1] >= 0).sum()),
        "us": triton.testing.do_bench(lambda: mask_unwritten_triton(idx, pos, total, q_len, peaks[0])) * 1e3,
        "us_twin": triton.testing.do_bench(lambda: mask_unwritten_torch(idx, pos, total, q_len, peaks[1]))
        * 1e3,
    }


CASES = {
    "unwritten decode N8226 (8B scope)": lambda: unwritten_case(1, 8226, 8100, 1),
    "unwritten b2 N1030 q3": lambda: unwritten_case(2, 1030, 1000, 3),
    "model ops 8B forward 8192 x 4096 / 14336 bf16": lambda: model_ops_case(8192, 4096, 14336, BF16),
    "model ops 8B decode 1 x 4096 / 14336 bf16": lambda: model_ops_case(1, 4096, 14336, BF16),
    "model ops SmolLM2 1000 x 576 / 1536 fp16": lambda: model_ops_case(1000, 576, 1536, F16),
    "topk prefill 2048x131071 H32/8 d128 bf16": lambda: topk_case(1, 32, 8, 2048, 131071, 128, 4, BF16),
    "topk prefill 1024x65537 H32/8 d128 fp16 k1": lambda: topk_case(1, 32, 8, 1024, 65537, 128, 1, F16),
    "topk decode 1x1000003 H32/8 d128 bf16": lambda: topk_case(1, 32, 8, 1, 1000003, 128, 4, BF16),
    "topk decode 1x131071 H9/3 d64 bf16 k8": lambda: topk_case(1, 9, 3, 1, 131071, 64, 8, BF16),
    "topk chunk 1024x100001 H9/3 d64 fp16": lambda: topk_case(1, 9, 3, 1024, 100001, 64, 4, F16),
    "topk chunk 512x40000 H8/4 d256 bf16": lambda: topk_case(1, 8, 4, 512, 40000, 256, 4, BF16),
    "topk chunk 256x50000 H32/8 d128 fp32": lambda: topk_case(1, 32, 8, 256, 50000, 128, 4, F32),
    "topk b2 64x9999 H14/2 (g7) d128 fp16 k16": lambda: topk_case(2, 14, 2, 64, 9999, 128, 16, F16),
    "topk planted same-block bf16": lambda: topk_planted(BF16),
    "attn prefill Q1024 N8192 H32/8 d128 bf16": lambda: attn_case(1, 32, 8, 1024, 131072, 8192, 128, BF16),
    "attn decode Q1 N8192 H32/8 d128 bf16": lambda: attn_case(1, 32, 8, 1, 131072, 8192, 128, BF16),
    "attn prefill Q2048 N8192 H9/3 d64 fp16": lambda: attn_case(1, 9, 3, 2048, 100000, 8192, 64, F16),
    "attn decode Q1 N8192 H9/3 d64 bf16": lambda: attn_case(1, 9, 3, 1, 100000, 8192, 64, BF16),
    "attn prefill Q512 N4096 H8/4 d256 bf16": lambda: attn_case(1, 8, 4, 512, 40000, 4096, 256, BF16),
    "attn prefill Q256 N2048 H32/8 d128 fp32": lambda: attn_case(1, 32, 8, 256, 10000, 2048, 128, F32),
    "attn b2 Q100 N3000 H14/2 (g7) d128 bf16": lambda: attn_case(2, 14, 2, 100, 9000, 3000, 128, BF16),
    # the flash path with the prefill chunk's promise (the inputs keep it: the chunk is the tail)
    "flash tail Q1024 N9216 H32/8 d128 bf16": lambda: attn_case(
        1, 32, 8, 1024, 131072, 9216, 128, BF16, chunk_tail=True
    ),
    "flash tail Q512 N2560 H9/3 d64 bf16": lambda: attn_case(
        1, 9, 3, 512, 100000, 2560, 64, BF16, chunk_tail=True
    ),
    "flash tail Q333 N4097 H8/4 d256 fp16": lambda: attn_case(
        1, 8, 4, 333, 40000, 4097, 256, F16, chunk_tail=True
    ),
    "flash tail Q257 N2049 H32/8 d128 fp32": lambda: attn_case(
        1, 32, 8, 257, 10000, 2049, 128, F32, chunk_tail=True
    ),
    "flash tail b2 Q100 N3001 H14/2 d96 bf16 split": lambda: attn_case(
        2, 14, 2, 100, 9000, 3001, 96, BF16, chunk_tail=True, config=dict(splits=3)
    ),
    # a forward's chunks as one batch (each entry = the entry alone, bit for bit)
    "flash tail b4 Q1024 N9216 H32/8 d128 bf16": lambda: attn_case(
        4, 32, 8, 1024, 20000, 9216, 128, BF16, chunk_tail=True
    ),
    "flash tail b16 Q512 N2560 H9/3 d64 bf16": lambda: attn_case(
        16, 9, 3, 512, 20000, 2560, 64, BF16, chunk_tail=True
    ),
    # the flash kernel alone: a batch splits its keys as each chunk alone (2 splits: the same sums)
    "flash tail one kernel b16 Q512 N2560 H9/3 d64 bf16": lambda: attn_case(
        16, 9, 3, 512, 20000, 2560, 64, BF16, chunk_tail=True, config=dict(PREFIX="triton")
    ),
    # the prefix before the chunk through cuDNN (cudnn_prefix), the chunk's own keys by the kernel
    "cudnn prefix call b1 Hkv8 R4096 P8192 d128 bf16": lambda: prefix_case(1, 8, 4096, 8192, 128, BF16),
    "cudnn prefix call b4 Hkv3 R1536 P2048 d64 fp16": lambda: prefix_case(4, 3, 1536, 2045, 64, F16),
    "flash prefix cudnn Q1024 N9216 H32/8 d128 bf16": lambda: attn_case(
        1, 32, 8, 1024, 131072, 9216, 128, BF16, chunk_tail=True, config=dict(PREFIX="cudnn")
    ),
    "flash prefix cudnn Q512 N2560 H9/3 d64 bf16": lambda: attn_case(
        1, 9, 3, 512, 100000, 2560, 64, BF16, chunk_tail=True, config=dict(PREFIX="cudnn")
    ),
    "flash prefix cudnn b4 Q1024 N9216 H32/8 d128 bf16": lambda: attn_case(
        4, 32, 8, 1024, 20000, 9216, 128, BF16, chunk_tail=True, config=dict(PREFIX="cudnn")
    ),
    "flash prefix cudnn b2 Q100 N3001 H14/2 d128 fp16": lambda: attn_case(
        2, 14, 2, 100, 9000, 3001, 128, F16, chunk_tail=True, config=dict(PREFIX="cudnn")
    ),
    "old prefill kernel Q1024 N8192 H32/8 d128 bf16": lambda: attn_case(
        1, 32, 8, 1024, 131072, 8192, 128, BF16, config=dict(FLASH=False)
    ),
    "select decode H32 k4 127 pins 191 spans M131072": lambda: select_case(
        1, 32, 1, 4, 131072, 127, 191, 32, 32, 2048, True
    ),
    "select decode H32 k4 127 pins M1048576 ties": lambda: select_case(
        1, 32, 1, 4, 1 << 20, 127, 191, 32, 32, 2048, True, spread=40
    ),
    "select decode b2 H9 k8 63 pins M5000": lambda: select_case(2, 9, 1, 8, 5000, 63, 20, 16, 4, 64, True),
    "select chunk Q32 H32 k4 (4096 hits, in kernel) M131072": lambda: select_case(
        1, 32, 32, 4, 131072, 0, 127, 32, 32, 4096, False, spread=3000
    ),
    "select chunk Q512 H32 k4 (ranked outside) M131072": lambda: select_case(
        1, 32, 512, 4, 131072, 0, 127, 32, 32, 4096, False
    ),
    "select chunk Q512 H9 k4 M1048576 b2": lambda: select_case(
        2, 9, 512, 4, 1 << 20, 0, 127, 32, 32, 4096, False
    ),
    "rank_blocks Q1024 H32/8 d128 1M keys (32K blocks) bf16": lambda: rank_blocks_case(
        1, 32, 8, 1024, 1 << 15, 128, BF16
    ),
    "rank_blocks Q512 H9/3 d64 1M keys (32K blocks) bf16": lambda: rank_blocks_case(
        1, 9, 3, 512, 1 << 15, 64, BF16
    ),
    "rank_blocks Q1 H9/3 d64 decode, 3,001 blocks, fp16": lambda: rank_blocks_case(2, 9, 3, 1, 3001, 64, F16),
    "rank_blocks Q1 H32/8 d128 decode 128K keys (4K blocks) bf16": lambda: rank_blocks_case(
        1, 32, 8, 1, 4096, 128, BF16
    ),
    "rank_blocks Q1 H9/3 d64 decode 1M keys (32K blocks) bf16": lambda: rank_blocks_case(
        1, 9, 3, 1, 1 << 15, 64, BF16
    ),
    "candidate_blocks decode H32/8 d128 4,096 blocks C508 bf16": lambda: candidate_blocks_case(
        1, 32, 8, 4096, 128, 508, BF16
    ),
    "candidate_blocks decode H9/3 d64 8,192 blocks C508 bf16": lambda: candidate_blocks_case(
        1, 9, 3, 8192, 64, 508, BF16
    ),
    "candidate_blocks decode b2 H8/4 d256 1,001 blocks C100 fp16": lambda: candidate_blocks_case(
        2, 8, 4, 1001, 256, 100, F16
    ),
    "top_blocks 8 heads 4,096 blocks C508": lambda: top_blocks_case(1, 8, 4096, 508),
    "top_blocks 3 heads 8,192 blocks C508": lambda: top_blocks_case(1, 3, 1 << 13, 508),
    "top_blocks b2 3 heads 1,001 blocks C100": lambda: top_blocks_case(2, 3, 1001, 100),
    "level2 decode H32/8 d128 M131040 bs32 C508 bf16": lambda: level2_case(
        1, 32, 8, 1, 131040, 128, 32, 508, 4, BF16
    ),
    "level2 chunk Q1024 H32/8 d128 M131072 bs32 C508 bf16": lambda: level2_case(
        1, 32, 8, 1024, 131072, 128, 32, 508, 4, BF16
    ),
    "level2 chunk Q512 H9/3 d64 M1048000 bs32 C508 bf16 b2": lambda: level2_case(
        2, 9, 3, 512, 1048000, 64, 32, 508, 4, BF16
    ),
    "level2 decode H8/4 d256 M40001 bs16 C100 fp16": lambda: level2_case(
        1, 8, 4, 1, 40001, 256, 16, 100, 8, F16
    ),
    "spans chunk Q1024 H32 k4 M131072 span32 keep127 bands": lambda: spans_case(
        1, 32, 1024, 4, 131072, 127, 32, 300
    ),
    "spans chunk Q512 H9 k4 M1048576 span32 keep31 b2": lambda: spans_case(2, 9, 512, 4, 1 << 20, 31, 32),
    "spans batch B8 Q1024 H32 k4 M24576 span32 keep127 bands": lambda: spans_case(
        8, 32, 1024, 4, 24576, 127, 32, 300
    ),
    "spans chunk Q512 H9 k4 M40000 span7 keep63 bands": lambda: spans_case(1, 9, 512, 4, 40000, 63, 7, 50),
    "select chunk Q7 H3 k5 M < n*span": lambda: select_case(1, 3, 7, 5, 50, 0, 9, 8, 4, 16, False),
    # a forward's chunks as one batch: the 8B shape's 8 chunks of 1024 at 128K, SmolLM2's 16 of 512
    "grow chunks C8 Q1024 H32/8 d128 M122880 bf16": lambda: grow_case(
        8, 32, 8, 1024, 122880, 128, 4, 127, 32, 32, 4096, BF16
    ),
    "grow chunks C16 Q512 H9/3 d64 M131072 bf16": lambda: grow_case(
        16, 9, 3, 512, 131072, 64, 4, 31, 32, 32, 1024, BF16
    ),
    "grow chunks C12 Q512 H9/3 d64 M1048576 bf16": lambda: grow_case(
        12, 9, 3, 512, 1 << 20, 64, 4, 31, 32, 32, 1024, BF16
    ),
    "grow levels C8 Q1024 H32/8 d128 M122880 bs32 C508 bf16": lambda: grow_levels_case(
        8, 32, 8, 1024, 122880, 128, 32, 508, 4, BF16
    ),
    "grow levels C12 Q512 H9/3 d64 M1048576 bs32 C508 bf16": lambda: grow_levels_case(
        12, 9, 3, 512, 1 << 20, 64, 32, 508, 4, BF16
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--only", default="", help="run only the cases whose name contains this text (comma: any of several)"
    )
    args = ap.parse_args()
    results, failed = [], 0
    for name, fn in CASES.items():
        if not any(part in name for part in args.only.split(",")):
            continue
        t0 = time.time()
        try:
            info = fn()
            ok, err = True, ""
        except Exception as e:
            ok, err, info = False, f"{type(e).__name__}: {e}", {}
            failed += 1
        torch.cuda.empty_cache()
        r = {"case": name, "ok": ok, "error": err, "seconds": round(time.time() - t0, 2), **info}
        results.append(r)
        print(("PASS " if ok else "FAIL ") + json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"gpu_kernels_check: {len(results) - failed}/{len(results)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
