"""A/B of ``score_topk`` tile configurations on one CUDA GPU: same inputs, same indices, time;
and of a decode step's scope attention (its splits and tiles) and of two-level selection's level 1.

    python benchmarks/scoring_ab.py                     # every variant below: prefill, decode, attention, level 1
    python benchmarks/scoring_ab.py --only attention_prefill   # the flash kernel's tiles after cuDNN's prefix
    python benchmarks/scoring_ab.py --only prefill --repeats 5

Each variant is the kernel's own configuration (``triton_topk._pick_config``) with a few keys
replaced (``_config``), so the baseline is the default kernel in the same process. Variants that
keep the default's groups per tile return its indices exactly (the insertion schedule, pipeline
depth and warps change, not the ranking); another group size (``CI``) or tile width packs the
group index into other low mantissa bits of the group maxima, so scores within a few ulps may
rank otherwise (both are exact top-k up to those near-ties); the table says per shape whether
the indices are the same.

Prefill shapes are the engine's: one forward's chunks scored as one batch (``grow``: chunk b sees
its own middle), the Llama-3.1-8B shape (32/8 heads, d 128) and SmolLM2's (9/3, d 64), random
bf16 queries and keys. Decode (one query) is timed from a CUDA graph of 20 calls, so the wrapper's
host work (checks, allocations: 120-200 us a call, more than the kernel) stays out of the figure.
Figures are the best of ``--repeats`` medians (``triton.testing.do_bench``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

#: prefill variants: (name, overrides of the default prefill configuration)
PREFILL = [
    ("default", {}),
    ("eager insertion", dict(EARLY_EXIT=0)),
    ("lazy insertion", dict(EARLY_EXIT=3)),
    ("lazy, groups of 16 keys", dict(EARLY_EXIT=3, CI=8)),
    ("eager, groups of 16 keys", dict(EARLY_EXIT=0, CI=8)),
    ("lazy, 3 stages", dict(EARLY_EXIT=3, num_stages=3)),
    ("lazy, 4 warps", dict(EARLY_EXIT=3, num_warps=4)),
    ("lazy, 64-key tiles (3 programs an SM)", dict(EARLY_EXIT=3, BLOCK_N=64)),
    ("lazy, 256-row blocks x 64-key tiles (half the K read from L2 a FLOP)", dict(BLOCK_R=256, BLOCK_N=64)),
    ("8 warps, no overlapped dot (the exact default before session 28)", dict(OVERLAP=False, num_warps=8)),
    ("next tile's dot before this tile's merge, 8 warps", dict(OVERLAP=True, num_warps=8)),
    ("next tile's dot first, 8 warps, 3 stages", dict(OVERLAP=True, num_warps=8, num_stages=3)),
    ("next tile's dot first, 8 warps, 64-key tiles", dict(OVERLAP=True, num_warps=8, BLOCK_N=64)),
    ("next tile's dot first, 4 warps", dict(OVERLAP=True, num_warps=4)),
    ("next tile's dot first, 8 warps, groups of 16 keys", dict(OVERLAP=True, num_warps=8, CI=8)),
    (
        "table tiles' rows in int64, 8 warps, no overlapped dot (level 2 before session 28; the same rows)",
        dict(OFF32=False, OVERLAP=False, num_warps=8),
    ),
    ("4 warps, no overlapped dot", dict(num_warps=4, OVERLAP=False)),
    # wider tiles: fewer key-loop instructions a row and key in sm_90 SASS (benchmarks/topk_sass.py,
    # session 28: 13.7 and 11.9 a row a 128 keys against 16.0 for the default's 4 warps x 128 x 128)
    ("8 warps, 256-key tiles", dict(num_warps=8, OVERLAP=False, BLOCK_N=256)),
    ("8 warps, 256-key tiles, groups of 16 keys", dict(num_warps=8, OVERLAP=False, BLOCK_N=256, CI=8)),
    # the merge's exact rescoring (_refine_groups_kernel): the head dim in wider slices (a 32-byte
    # sector a key per load at 16 bf16 values), fewer rows a program, more warps
    # level 2 (session 29, its table tiles in int32): smaller row blocks, the overlapped loop with 8 warps
    ("128-row blocks halved: 64 rows, 4 warps", dict(BLOCK_R=64, num_warps=4, OVERLAP=False)),
    ("64 rows, 4 warps, next tile's dot first", dict(BLOCK_R=64, num_warps=4, OVERLAP=True)),
    ("refine: head-dim slices of 16", dict(REFINE_DC=16)),
    ("refine: head-dim slices of 32, 8 warps", dict(REFINE_DC=32, REFINE_WARPS=8)),
    ("refine: slices of 16, 8 rows a program", dict(REFINE_DC=16, REFINE_ROW_KEYS=256)),
    (
        "refine: slices of 64, 8 warps, 8 rows a program",
        dict(REFINE_DC=64, REFINE_WARPS=8, REFINE_ROW_KEYS=256),
    ),
]
#: decode variants (plain mode)
DECODE = [
    ("default", {}),
    ("eager insertion", dict(EARLY_EXIT=0)),
    ("lazy insertion", dict(EARLY_EXIT=3)),
    ("16 tiles a program (a quarter of the splits)", dict(min_tiles=16)),
    ("4 stages", dict(num_stages=4)),
    ("256-key tiles", dict(BLOCK_N=256)),
    ("8 warps", dict(num_warps=8)),
    # grouped mode (prefill's: a tile reduced to group maxima in registers, then the groups' keys
    # rescored) for a step's few rows: 8x less insertion work a tile, a small refinement after
    ("grouped, groups of 8 keys, eager", dict(CI=4, PACK=True, EARLY_EXIT=0)),
    ("grouped, groups of 8 keys, lazy", dict(CI=4, PACK=True, EARLY_EXIT=3)),
    ("grouped, groups of 4 keys, lazy, 64-key tiles", dict(CI=2, PACK=True, EARLY_EXIT=3, BLOCK_N=64)),
]
#: level-1 variants of two-level selection (``triton_blocks._row_best``'s tiles: rows x blocks)
LEVEL1 = [
    ("default (64 x 64, 4 warps)", {}),
    ("64 x 64, 2 stages", dict(num_stages=2)),
    ("128 x 64, 8 warps, 2 stages", dict(BR=128, BN=64, num_warps=8, num_stages=2)),
    ("128 x 64, 4 warps, 2 stages", dict(BR=128, BN=64, num_warps=4, num_stages=2)),
    ("64 x 128, 4 warps, 2 stages", dict(BR=64, BN=128, num_warps=4, num_stages=2)),
    ("64 x 128, 8 warps, 2 stages", dict(BR=64, BN=128, num_warps=8, num_stages=2)),
]
#: (name, chunks, heads, KV heads, queries a chunk, middle keys, head dim)
LEVEL1_SHAPES = [
    ("8B, 8 chunks x 1024, 120K middle (3,840 blocks)", 8, 32, 8, 1024, 122880, 128),
    ("SmolLM2, 16 chunks x 512, 1M middle (32K blocks)", 16, 9, 3, 512, 1 << 20, 64),
]
#: decode scope attention variants (``triton_attention._pick_config``'s decode keys; target in SMs)
ATTN_DECODE = [
    ("default (splits for 2 programs an SM, 64-key tiles)", {}),
    ("4 programs an SM", dict(target_mult=4)),
    ("8 programs an SM (a tile or two each)", dict(target_mult=8, min_tiles=1)),
    ("8 programs an SM, 32-key tiles", dict(target_mult=8, min_tiles=1, BLOCK_N=32)),
    ("4 programs an SM, 2 stages", dict(target_mult=4, num_stages=2)),
]
#: prefill scope attention variants: the flash kernel's tiles for a chunk's own keys after cuDNN's prefix
#: (``triton_attention._pick_config``'s prefill keys; its default R64 N64 w4 s3 was swept over whole scopes)
ATTN_PREFILL = [
    ("default (64 x 64, 4 warps, 3 stages)", {}),
    ("128 x 64, 8 warps, 3 stages", dict(BLOCK_R=128, BLOCK_N=64, num_warps=8, num_stages=3)),
    ("128 x 64, 4 warps, 3 stages", dict(BLOCK_R=128, BLOCK_N=64, num_warps=4, num_stages=3)),
    ("128 x 128, 8 warps, 2 stages", dict(BLOCK_R=128, BLOCK_N=128, num_warps=8, num_stages=2)),
    ("64 x 128, 4 warps, 2 stages", dict(BLOCK_R=64, BLOCK_N=128, num_warps=4, num_stages=2)),
    ("64 x 32, 4 warps, 3 stages", dict(BLOCK_R=64, BLOCK_N=32, num_warps=4, num_stages=3)),
    ("64 x 64, 4 warps, 2 stages", dict(BLOCK_R=64, BLOCK_N=64, num_warps=4, num_stages=2)),
    ("64 x 64, 8 warps, 3 stages", dict(BLOCK_R=64, BLOCK_N=64, num_warps=8, num_stages=3)),
    ("128 x 32, 4 warps, 4 stages", dict(BLOCK_R=128, BLOCK_N=32, num_warps=4, num_stages=4)),
]
#: (name, chunks, heads, KV heads, queries a chunk, middle keys, head dim, grow)
PREFILL_SHAPES = [
    ("8B, 8 chunks x 1024, 120K middle", 8, 32, 8, 1024, 122880, 128, 1024),
    ("8B, 1 chunk x 1024, 64K middle", 1, 32, 8, 1024, 65536, 128, 0),
    ("8B, 1 chunk x 1024, 24K middle", 1, 32, 8, 1024, 24576, 128, 0),
    ("8B, 8 chunks x 1024, 27K middle (a late 32K forward)", 8, 32, 8, 1024, 27648, 128, 1024),
    ("SmolLM2, 16 chunks x 512, 128K middle", 16, 9, 3, 512, 131072, 64, 512),
]
#: level 2 of two-level selection: (name, chunks, heads, KV heads, queries, middle, head dim, grow), each
#: chunk scoring ``LEVEL2_CANDIDATES`` blocks of ``LEVEL2_BLOCK`` keys read in place (the 8B default budget)
LEVEL2_SHAPES = [
    ("8B level 2, 8 chunks x 1024, 508 blocks of 32 in a 120K middle", 8, 32, 8, 1024, 122880, 128, 1024)
]
LEVEL2_BLOCK, LEVEL2_CANDIDATES = 32, 508
#: (name, heads, KV heads, middle keys, head dim)
DECODE_SHAPES = [
    ("8B decode, 126,944 middle", 32, 8, 126944, 128),
    ("SmolLM2 decode, 1M middle", 9, 3, 1048000, 64),
]


def rope_tables(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama-3's RoPE tables (base 500,000, rotate-half) of positions ``[0, n)``: cos, sin ``[n, d]``."""
    inv = 1.0 / 500000.0 ** (torch.arange(0, d, 2, device="cuda", dtype=torch.float64) / d)
    f = torch.outer(torch.arange(n, device="cuda", dtype=torch.float64), inv)
    return torch.cat([f, f], -1).cos().bfloat16(), torch.cat([f, f], -1).sin().bfloat16()


def add_row(rows: list, *cells) -> None:
    """One result row: kept for the final table and printed as it comes."""
    rows.append(cells)
    print(" | ".join(map(str, cells)), flush=True)


def best_ms(fn, repeats: int) -> float:
    import triton.testing

    return min(triton.testing.do_bench(fn, rep=200) for _ in range(repeats))


def prefill(repeats: int) -> list[tuple]:
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton, score_topk_triton

    rows = []
    level2 = {s[0] for s in LEVEL2_SHAPES}
    for shape, C, H, Hkv, Q, M, D, grow in PREFILL_SHAPES + LEVEL2_SHAPES:
        q = torch.randn(1, C * Q, H, D, device="cuda", dtype=torch.bfloat16).view(C, Q, H, D).transpose(1, 2)
        k = torch.randn(1, Hkv, M, D, device="cuda", dtype=torch.bfloat16).expand(C, Hkv, M, D)
        keys = sum(M - (C - 1 - c) * grow for c in range(C))
        if shape in level2:  # level 2: the chunks' candidate blocks read in place
            first = M - (C - 1) * grow
            blocks = torch.rand(C, Hkv, first // LEVEL2_BLOCK, device="cuda").topk(LEVEL2_CANDIDATES, dim=2)
            blocks = blocks.indices.sort(dim=2).values.to(torch.int32).contiguous()
            keys = C * (LEVEL2_CANDIDATES * LEVEL2_BLOCK + M % LEVEL2_BLOCK)

            def run(cfg, q=q, k=k, g=grow, t=blocks):
                return score_topk_blocks_triton(q, k, t, LEVEL2_BLOCK, 4, grow=g, _config=cfg)
        else:

            def run(cfg, q=q, k=k, g=grow):
                return score_topk_triton(q, k, 4, grow=g, _config=cfg)

        ref = run(None)
        base = None
        for name, cfg in PREFILL:
            try:
                same = torch.equal(run(cfg), ref)
            except Exception as e:  # a variant that does not compile: say so, time the rest
                add_row(rows, shape, name, "failed", f"{type(e).__name__}: {str(e)[:80]}", "", "")
                continue
            ms = best_ms(lambda cfg=cfg, run=run: run(cfg), repeats)
            base = base or ms
            tflops = 2 * H * Q * keys * D / (ms * 1e-3) / 1e12
            add_row(rows, shape, name, f"{ms:.3f} ms", f"{tflops:.0f} TFLOP/s", same, f"{base / ms:.3f}")
        del q, k
        torch.cuda.empty_cache()
    return rows


def level1(repeats: int) -> list[tuple]:
    """Level 1 of two-level selection (``rank_blocks``, both passes) over one forward's chunks."""
    from reattn_llm.kernels.triton_blocks import rank_blocks_triton
    from reattn_llm.kv.summaries import block_summaries

    rows = []
    for shape, C, H, Hkv, Q, M, D in LEVEL1_SHAPES:
        q = torch.randn(C, H, Q, D, device="cuda", dtype=torch.bfloat16)
        summ = block_summaries(torch.randn(1, Hkv, M, D, device="cuda", dtype=torch.bfloat16), 32)
        summ = summ.expand(C, -1, -1, -1)
        ref = rank_blocks_triton(q, summ)
        base = None
        for name, cfg in LEVEL1:
            try:
                got = rank_blocks_triton(q, summ, _config=cfg)
            except Exception as e:  # a tile that does not fit shared memory
                add_row(rows, shape, name, type(e).__name__, "", False, "")
                continue
            err = (got - ref).abs().max().item()
            ms = best_ms(lambda cfg=cfg, q=q, s=summ: rank_blocks_triton(q, s, _config=cfg), repeats)
            base = base or ms
            tflops = 2 * 2 * 2 * H * Q * C * (M // 32) * D / (ms * 1e-3) / 1e12  # 2 passes x 2 dots
            add_row(
                rows,
                shape,
                name,
                f"{ms:.3f} ms",
                f"{tflops:.0f} TFLOP/s",
                f"max diff {err:.1e}",
                f"{base / ms:.3f}",
            )
        del q, summ
        torch.cuda.empty_cache()
    return rows


def graph_ms(fn, repeats: int, calls: int = 20) -> float:
    """One call of ``fn`` replayed from a CUDA graph of ``calls`` calls (compiled and warmed on a
    side stream first): the kernels' time without the wrapper's host work."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    ms = best_ms(graph.replay, repeats) / calls
    del graph
    return ms


def decode(repeats: int) -> list[tuple]:
    from reattn_llm.kernels.triton_topk import score_topk_triton

    rows = []
    for shape, H, Hkv, M, D in DECODE_SHAPES:
        q = torch.randn(1, H, 1, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, Hkv, M + 64, D, device="cuda", dtype=torch.bfloat16)[:, :, 32 : 32 + M]
        ref = score_topk_triton(q, k, 4)
        base = None
        for name, cfg in DECODE:
            same = torch.equal(score_topk_triton(q, k, 4, _config=cfg), ref)
            ms = graph_ms(lambda cfg=cfg, q=q, k=k: score_topk_triton(q, k, 4, _config=cfg), repeats)
            base = base or ms
            kbytes = Hkv * M * D * 2
            add_row(
                rows,
                shape,
                name,
                f"{ms * 1e3:.1f} us",
                f"{kbytes / (ms * 1e-3) / 1e9:.0f} GB/s of K",
                same,
                f"{base / ms:.3f}",
            )
        del q, k
        torch.cuda.empty_cache()
    return rows


def attention_decode(repeats: int) -> list[tuple]:
    """A decode step's scope attention (one query, an 8,192-key scope gathered from a 128K cache,
    the 8B shape): splits of the scope a KV head (flash-decoding) and tiles, from a CUDA graph.
    Run 16's profile: 23.2 us a layer for about 68 MB read (K, V, RoPE rows): one wave of 256
    programs walking 4 tiles each, its dependent loads (row index, then the row) in series."""
    from reattn_llm.kernels.torch_ops import scope_attention_torch
    from reattn_llm.kernels.triton_attention import scope_attention_triton

    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    B, H, Hkv, T, N, D = 1, 32, 8, 131072, 8192, 128
    q = torch.randn(B, 1, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    kc = torch.randn(B, Hkv, T, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    idx = torch.cat(
        [torch.arange(32), torch.randperm(T - 2048 - 32)[: N - 2048 - 32] + 32, torch.arange(T - 2048, T)]
    )
    idx = idx.sort().values[None].to("cuda")
    kpos = torch.arange(N, device="cuda")[None]
    qpos = torch.full((1, 1), N - 1, device="cuda")
    cos, sin = rope_tables(N + 8, D)
    args = (q, kc, vc, idx, kpos, qpos, cos, sin, D**-0.5)
    ref = scope_attention_torch(*args).float()
    rows, base = [], None
    for name, cfg in ATTN_DECODE:
        c = dict(cfg)
        if "target_mult" in c:
            c["target"] = c.pop("target_mult") * n_sm
        got = scope_attention_triton(*args, _config=c).float()
        err = ((got - ref).norm() / ref.norm()).item()
        ms = graph_ms(lambda c=c: scope_attention_triton(*args, _config=c), repeats)
        base = base or ms
        nbytes = Hkv * N * (2 * D * 2 + 2 * D * 2 + 16)  # K and V rows, cos and sin rows, index and position
        add_row(
            rows,
            "8B decode attention, 8,192-key scope",
            name,
            f"{ms * 1e3:.1f} us",
            f"{nbytes / (ms * 1e-3) / 1e9:.0f} GB/s read",
            f"error {err:.1e}",
            f"{base / ms:.3f}",
        )
    return rows


def attention_prefill(repeats: int) -> list[tuple]:
    """One forward's 8 prompt chunks of 1024 queries attending over their 8,192-key scopes (32 global
    rows, spans from a 128K cache, 3,072 local rows, the chunk's own 1,024), the 8B shape, as the core
    calls it (``chunk_tail``): gather, the prefix through cuDNN, the own keys by the flash kernel,
    whose tiles the variants change."""
    from reattn_llm.kernels.torch_ops import scope_attention_torch
    from reattn_llm.kernels.triton_attention import scope_attention_triton

    C, H, Hkv, T, N, Q, D = 8, 32, 8, 131072, 8192, 1024, 128
    q = torch.randn(1, C * Q, H, D, device="cuda", dtype=torch.bfloat16).view(C, Q, H, D).transpose(1, 2)
    kc = torch.randn(1, Hkv, T, D, device="cuda", dtype=torch.bfloat16).expand(C, -1, -1, -1)
    vc = torch.randn(1, Hkv, T, D, device="cuda", dtype=torch.bfloat16).expand(C, -1, -1, -1)
    idx = []
    for c in range(C):
        end = T - (C - 1 - c) * Q  # the chunk's own rows end here; 4,096 local rows (its own last)
        mid = torch.randperm(end - 4096 - 32)[: N - 4096 - 32].sort().values + 32
        idx.append(torch.cat([torch.arange(32), mid, torch.arange(end - 4096, end)]))
    idx = torch.stack(idx).to("cuda")
    kpos = torch.arange(N, device="cuda")[None].expand(C, -1).contiguous()
    qpos = (torch.arange(Q, device="cuda") + N - Q)[None].expand(C, -1).contiguous()
    cos, sin = rope_tables(N + 8, D)
    args = (q, kc, vc, idx, kpos, qpos, cos, sin, D**-0.5)
    ref = scope_attention_torch(*(a[:1] for a in args[:6]), *args[6:]).float()  # chunk 0
    rows, base = [], None
    flops = 4 * H * Q * D * C * (N - Q / 2)  # the prefix whole, the own keys' causal half
    for name, cfg in ATTN_PREFILL:
        c = dict(cfg, PREFIX="cudnn")
        try:
            got = scope_attention_triton(*args, True, _config=c)[:1].float()
        except Exception as e:  # a variant that does not compile: say so, time the rest
            add_row(rows, "8B prefill attention, 8 chunks", name, "failed", f"{type(e).__name__}", "", "")
            continue
        err = ((got - ref).norm() / ref.norm()).item()
        ms = best_ms(lambda c=c: scope_attention_triton(*args, True, _config=c), repeats)
        base = base or ms
        add_row(
            rows,
            "8B prefill attention, 8 chunks x 1024, 8,192-key scopes",
            name,
            f"{ms * 1e3:.1f} us",
            f"{flops / (ms * 1e-3) / 1e12:.0f} TFLOP/s",
            f"error {err:.1e}",
            f"{base / ms:.3f}",
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--only", choices=("prefill", "decode", "attention", "attention_prefill", "level1"), default=None
    )
    ap.add_argument("--repeats", type=int, default=3, help="medians taken, the best reported")
    ap.add_argument(
        "--variants",
        default="",
        help="prefill: only the variants whose names contain one of these (comma list)",
    )
    ap.add_argument(
        "--shapes",
        default="",
        help="prefill: only the shapes whose names contain one of these (comma list), e.g. 'level 2'",
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "scoring_ab.py times Triton kernels: it needs a CUDA GPU (see benchmarks/kernels.py)"
        )
    torch.manual_seed(0)
    rows = []
    if args.variants:
        want = [w for w in args.variants.split(",") if w]
        PREFILL[:] = [v for v in PREFILL if v[0] == "default" or any(w in v[0] for w in want)]
    if args.shapes:
        want = [w for w in args.shapes.split(",") if w]
        PREFILL_SHAPES[:] = [s for s in PREFILL_SHAPES if any(w in s[0] for w in want)]
        LEVEL2_SHAPES[:] = [s for s in LEVEL2_SHAPES if any(w in s[0] for w in want)]
    if args.only in (None, "prefill"):
        rows += prefill(args.repeats)
    if args.only in (None, "decode"):
        rows += decode(args.repeats)
    if args.only in (None, "attention"):
        rows += attention_decode(args.repeats)
    if args.only in (None, "attention_prefill"):
        rows += attention_prefill(args.repeats)
    if args.only in (None, "level1"):
        rows += level1(args.repeats)
    print("\n| shape | variant | time | rate | same indices as default | speed vs default |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")


if __name__ == "__main__":
    main()
