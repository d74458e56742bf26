"""A/B of ``score_topk`` tile configurations on one CUDA GPU: same inputs, same indices, time.

    python benchmarks/scoring_ab.py                     # every variant below, prefill and decode
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
    ("merge one row a program (before _refine_groups_kernel)", dict(REFINE_ROWS=False)),
]
#: decode variants (plain mode)
DECODE = [("default", {}), ("eager insertion", dict(EARLY_EXIT=0)), ("lazy insertion", dict(EARLY_EXIT=3))]
#: (name, chunks, heads, KV heads, queries a chunk, middle keys, head dim, grow)
PREFILL_SHAPES = [
    ("8B, 8 chunks x 1024, 120K middle", 8, 32, 8, 1024, 122880, 128, 1024),
    ("8B, 1 chunk x 1024, 64K middle", 1, 32, 8, 1024, 65536, 128, 0),
    ("8B, 1 chunk x 1024, 24K middle", 1, 32, 8, 1024, 24576, 128, 0),
    ("SmolLM2, 16 chunks x 512, 128K middle", 16, 9, 3, 512, 131072, 64, 512),
]
#: (name, heads, KV heads, middle keys, head dim)
DECODE_SHAPES = [
    ("8B decode, 126,944 middle", 32, 8, 126944, 128),
    ("SmolLM2 decode, 1M middle", 9, 3, 1048000, 64),
]


def best_ms(fn, repeats: int) -> float:
    import triton.testing

    return min(triton.testing.do_bench(fn, rep=200) for _ in range(repeats))


def prefill(repeats: int) -> list[tuple]:
    from reattn_llm.kernels.triton_topk import score_topk_triton

    rows = []
    for shape, C, H, Hkv, Q, M, D, grow in PREFILL_SHAPES:
        q = torch.randn(1, C * Q, H, D, device="cuda", dtype=torch.bfloat16).view(C, Q, H, D).transpose(1, 2)
        k = torch.randn(1, Hkv, M, D, device="cuda", dtype=torch.bfloat16).expand(C, Hkv, M, D)
        keys = sum(M - (C - 1 - c) * grow for c in range(C))
        ref = score_topk_triton(q, k, 4, grow=grow)
        base = None
        for name, cfg in PREFILL:
            same = torch.equal(score_topk_triton(q, k, 4, grow=grow, _config=cfg), ref)
            ms = best_ms(
                lambda cfg=cfg, q=q, k=k, g=grow: score_topk_triton(q, k, 4, grow=g, _config=cfg), repeats
            )
            base = base or ms
            tflops = 2 * H * Q * keys * D / (ms * 1e-3) / 1e12
            rows.append((shape, name, f"{ms:.3f} ms", f"{tflops:.0f} TFLOP/s", same, f"{base / ms:.3f}"))
            print(" | ".join(map(str, rows[-1])), flush=True)
        del q, k
        torch.cuda.empty_cache()
    return rows


def decode(repeats: int, calls: int = 20) -> list[tuple]:
    from reattn_llm.kernels.triton_topk import score_topk_triton

    rows = []
    for shape, H, Hkv, M, D in DECODE_SHAPES:
        q = torch.randn(1, H, 1, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, Hkv, M + 64, D, device="cuda", dtype=torch.bfloat16)[:, :, 32 : 32 + M]
        ref = score_topk_triton(q, k, 4)
        base = None
        for name, cfg in DECODE:
            same = torch.equal(score_topk_triton(q, k, 4, _config=cfg), ref)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # compile and warm outside the capture
                for _ in range(3):
                    score_topk_triton(q, k, 4, _config=cfg)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(calls):
                    score_topk_triton(q, k, 4, _config=cfg)
            ms = best_ms(graph.replay, repeats) / calls
            base = base or ms
            kbytes = Hkv * M * D * 2
            rows.append(
                (
                    shape,
                    name,
                    f"{ms * 1e3:.1f} us",
                    f"{kbytes / (ms * 1e-3) / 1e9:.0f} GB/s of K",
                    same,
                    f"{base / ms:.3f}",
                )
            )
            print(" | ".join(map(str, rows[-1])), flush=True)
            del graph
        del q, k
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("prefill", "decode"), default=None)
    ap.add_argument("--repeats", type=int, default=3, help="medians taken, the best reported")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "scoring_ab.py times Triton kernels: it needs a CUDA GPU (see benchmarks/kernels.py)"
        )
    torch.manual_seed(0)
    rows = []
    if args.only in (None, "prefill"):
        rows += prefill(args.repeats)
    if args.only in (None, "decode"):
        rows += decode(args.repeats)
    print("\n| shape | variant | time | rate | same indices as default | speed vs default |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")


if __name__ == "__main__":
    main()
