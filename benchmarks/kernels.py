"""Kernel and end-to-end benchmarks of ReAttention on one CUDA GPU; every figure is set against a
baseline measured in the same run.

    python benchmarks/kernels.py --micro --sweep --json $OUT/kernels.json
    python benchmarks/kernels.py --select --json $OUT/select.json
    python benchmarks/kernels.py --e2e llama32k,llama128k,smol1m --json $OUT/e2e.json

Sections
  ceilings   device-to-device copy (bytes read + written per s), bf16 8192^3 matmul.
  scoring    prefill: 2048 queries x 128K keys, 32/8 heads, d 128, bf16, top-4 and top-1,
             TFLOP/s counting 2*H*q*M*d; baselines: cuBLAS bf16 matmul of the same scores, and
             matmul + torch.topk. Decode (1 query) at 128K and 1M keys: bytes of K read per s
             against the copy rate; baseline matmul + topk.
  attention  scope attention over an 8192-key scope gathered from a 128K cache: prefill chunk
             of 1024 queries and decode; baselines: the torch twin (gather + RoPE + SDPA) and SDPA
             over K/V already gathered and rotated (what the fused kernel has to beat for free).
  selection  the fused span selection (kernels.select_scope, one Triton launch) against the ops
             it replaces (method.selection: rank_centres' [B, M] vote histogram and top-n over
             M, sort, expand_spans, build_scope): decode (32 heads, top-4, 127 pinned centres,
             191 spans of 32, decode_spans="union") and 512-query prefill chunks (32 and 9
             heads), at M = 32K, 128K, 1M; plus the in-kernel ranking against ranking outside it
             at MAX_FUSED hits, to set that threshold. ``--select`` runs this section alone.
  e2e        Llama-3.1-8B-shaped model (random weights, bf16): prefill and per-token decode,
             ReAttention (backend "triton", the paper's 8192 scope; prefill in the engine's forwards,
             chunks joined as method.chunks.plan_forwards plans them: --prefill-forward) against
             stock SDPA full attention (prefill in one call, decode with a StaticCache), at 32K and
             128K; SmolLM2-135M-shaped at 1M. --graphs decodes from CUDA graphs too, --graph-profile
             lists a replayed step's kernels, --forward-times each prefill forward's time.
``--sweep`` times several tile configurations per kernel and installs the fastest (through the
modules' ``CONFIG_OVERRIDES``) before the later sections run.
"""

# Timed closures run immediately (inside bench) before their tensors are deleted:
# ruff: noqa: F821, B023

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

DEV = "cuda"
#: --graphs: also decode with CUDA graphs (reattn_llm.runtime.graphs) in --e2e
GRAPHS = False
#: --graph-profile: after --graphs, profile a bucket's replayed steps (:func:`profile_replays`)
GRAPH_PROFILE = False
#: --graph-buckets: the bucket sizes --graphs decodes with (reattn_llm.runtime.graphs.GraphDecoder)
GRAPH_BUCKETS = [32]
#: --selection: the ReAttention selection of --e2e
SELECTION = "exact"
#: --exact-answer: ReAttentionConfig.exact_answer of --e2e (None: the default)
EXACT_ANSWER: str | None = None
#: --prefill-repeats: prefills timed per mode in --e2e's llama cases (stock, then ReAttention); the
#: figures are their medians (one run's spread was +-5% at 32K on one H100, BENCHMARKS.md run 19)
PREFILL_REPEATS = 1
#: ``--set``: more ReAttentionConfig fields for ``--e2e`` (e.g. ``candidate_blocks=254``)
E2E_SET: dict = {}
#: --prefill-forward: tokens per ReAttention prefill forward in --e2e, whole chunks joined as the engine
#: does (method.chunks.plan_forwards; None: the engine's default); 0: the prompt (or its pieces) in one call
PREFILL_FORWARD: int | None = None
#: --reserve: --e2e's ReAttention prefills into a cache reserved for the prompt and DECODE_ROOM, as the
#: engine reserves prompt + answer tokens (off: the buffers grow by half as the forwards append)
RESERVE = False
#: --forward-times: log each forward's seconds of every ReAttention prefill (warm-ups too)
FORWARD_TIMES = False
BF16 = torch.bfloat16
RESULTS: dict = {"rows": []}


def log(*a):
    print(*a, flush=True)


def bench(fn, warmup=10, rep=50):
    """Median ms over CUDA-event-timed repetitions (triton.testing.do_bench)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def row(section, what, value, unit, baseline=None, base_value=None, note=""):
    r = dict(
        section=section,
        what=what,
        value=value,
        unit=unit,
        baseline=baseline,
        base_value=base_value,
        note=note,
    )
    RESULTS["rows"].append(r)
    b = f" | {baseline}: {base_value:.4g}" if baseline is not None and base_value is not None else ""
    log(f"[{section}] {what}: {value:.4g} {unit}{b} {note}")


# ----------------------------------------------------------------------------- ceilings


def ceilings():
    n = 1 << 30  # 2 GiB of bf16
    x = torch.randn(n, device=DEV, dtype=BF16)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    copy_bw = 2 * x.numel() * 2 / (ms * 1e-3)
    del x, y
    a = torch.randn(8192, 8192, device=DEV, dtype=BF16)
    b = torch.randn(8192, 8192, device=DEV, dtype=BF16)
    ms2 = bench(lambda: a @ b)
    mm = 2 * 8192**3 / (ms2 * 1e-3)
    del a, b
    RESULTS["copy_Bps"] = copy_bw
    RESULTS["matmul_flops"] = mm
    row("ceiling", "device-to-device copy (read+write)", copy_bw / 1e12, "TB/s")
    row("ceiling", "bf16 matmul 8192^3", mm / 1e12, "TFLOP/s")
    torch.cuda.empty_cache()
    return copy_bw, mm


# ----------------------------------------------------------------------------- scoring


def torch_topk_baseline(q, k, top_k, chunk=16384):
    """Plain torch: bf16 score blocks by cuBLAS, then torch.topk and a running merge."""
    B, H, Q, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    g = H // Hkv
    qg = q.reshape(B, Hkv, g * Q, D)
    bv = bi = None
    for s0 in range(0, M, chunk):
        s = torch.matmul(qg, k[:, :, s0 : s0 + chunk].transpose(-1, -2))
        v, i = s.topk(top_k, dim=-1)
        i = i + s0
        if bv is not None:
            v = torch.cat([bv, v], -1)
            i = torch.cat([bi, i], -1)
            v, j = v.topk(top_k, dim=-1)
            i = i.gather(-1, j)
        bv, bi = v, i
    return bi


def matmul_only(q, k, chunk=16384):
    B, H, Q, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    qg = q.reshape(B, Hkv, (H // Hkv) * Q, D)
    out = None
    for s0 in range(0, M, chunk):
        out = torch.matmul(qg, k[:, :, s0 : s0 + chunk].transpose(-1, -2))
    return out


def _prefill_tile(name: str, **kw) -> dict:
    """A prefill scoring configuration: the default's (packed group maxima, lazy insertion) with ``kw``."""
    base = dict(BLOCK_R=128, BLOCK_N=128, CI=4, EARLY_EXIT=3, PACK=True, num_warps=8, num_stages=2)
    return dict(base, name=name, **kw)


PREFILL_SWEEP = [
    _prefill_tile("pack lazy w8 s2 (default)"),
    _prefill_tile("pack lazy ci8 w8 s2", CI=8),
    _prefill_tile("pack lazy w4 s2", num_warps=4),
    _prefill_tile("pack lazy N64 w8 s2", BLOCK_N=64),
    _prefill_tile("pack lazy R256 N64 w8 s2", BLOCK_R=256, BLOCK_N=64),
    _prefill_tile("pack w4 s2", EARLY_EXIT=0, num_warps=4),
    _prefill_tile("pack w4 s3", EARLY_EXIT=0, num_warps=4, num_stages=3),
    _prefill_tile("pack eager w8 s2 (the default before lazy insertion)", EARLY_EXIT=0),
    _prefill_tile("pack ci8 w4 s2", EARLY_EXIT=0, CI=8, num_warps=4),
    _prefill_tile("pack ci2 w4 s2", EARLY_EXIT=0, CI=2, num_warps=4),
    _prefill_tile("nopack ee0 w4 s2 (run 1 best)", EARLY_EXIT=0, PACK=False, num_warps=4),
    _prefill_tile("pack w4 s2 splits1", EARLY_EXIT=0, num_warps=4, splits=1),
]

DECODE_SWEEP = [
    dict(name="plain N128 w4 s3 t16", BLOCK_N=128, num_warps=4, num_stages=3, target_mult=16),
    dict(name="plain N128 w4 s4 t16", BLOCK_N=128, num_warps=4, num_stages=4, target_mult=16),
    dict(name="plain N256 w4 s3 t16", BLOCK_N=256, num_warps=4, num_stages=3, target_mult=16),
    dict(name="plain N128 w4 s3 t24", BLOCK_N=128, num_warps=4, num_stages=3, target_mult=24),
    dict(
        name="plain lazy N128 w4 s3 t16", BLOCK_N=128, num_warps=4, num_stages=3, target_mult=16, EARLY_EXIT=3
    ),
]


def scoring(sweep: bool):
    from reattn_llm.kernels import triton_topk
    from reattn_llm.kernels._triton_utils import sm_count

    n_sm = sm_count(torch.device(DEV))
    copy_bw = RESULTS["copy_Bps"]
    # --- prefill: 2048 x 128K, 32/8 heads, d128
    B, H, Hkv, Q, M, D = 1, 32, 8, 2048, 131072, 128
    torch.manual_seed(0)
    q = torch.randn(B, H, Q, D, device=DEV, dtype=BF16)
    kbuf = torch.randn(B, Hkv, M + 4096 + 32, D, device=DEV, dtype=BF16)
    k = kbuf[:, :, 32 : 32 + M]  # middle slice view of the cache buffer
    flops = 2 * H * Q * M * D
    ms_mm = bench(lambda: matmul_only(q, k), warmup=3, rep=10)
    row("scoring", "baseline: cuBLAS bf16 scores only (no top-k)", flops / (ms_mm * 1e-3) / 1e12, "TFLOP/s")
    ms_tk = bench(lambda: torch_topk_baseline(q, k, 4), warmup=2, rep=5)
    row(
        "scoring",
        "baseline: torch matmul + topk, top-4",
        flops / (ms_tk * 1e-3) / 1e12,
        "TFLOP/s",
        note=f"{ms_tk:.2f} ms",
    )
    best = None
    configs = PREFILL_SWEEP if sweep else []
    for c in configs:
        c = dict(c)
        name = c.pop("name")
        c.setdefault("target", 4 * n_sm)
        c.setdefault("min_tiles", 8)
        try:
            ms = bench(lambda c=c: triton_topk.score_topk_triton(q, k, 4, _config=c), warmup=3, rep=10)
        except Exception as e:
            log(f"[scoring sweep] {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
            continue
        tf = flops / (ms * 1e-3) / 1e12
        row(
            "scoring-sweep",
            f"prefill top-4 [{name}]",
            tf,
            "TFLOP/s",
            "cuBLAS scores only",
            flops / (ms_mm * 1e-3) / 1e12,
            f"{ms:.2f} ms",
        )
        if best is None or ms < best[0]:
            best = (ms, name, c)
    if best is not None:
        RESULTS["prefill_scoring_best"] = best[1]
        triton_topk.CONFIG_OVERRIDES["prefill"] = {
            k_: v for k_, v in best[2].items() if k_ not in ("target", "min_tiles", "splits")
        }
    for top_k in (4, 1):
        ms = bench(lambda: triton_topk.score_topk_triton(q, k, top_k), warmup=3, rep=10)
        row(
            "scoring",
            f"prefill 2048x128K H32/8 d128 bf16 top-{top_k} (Triton, exact{', installed' if best else ''})",
            flops / (ms * 1e-3) / 1e12,
            "TFLOP/s",
            "cuBLAS scores only",
            flops / (ms_mm * 1e-3) / 1e12,
            f"{ms:.2f} ms; target >= 400",
        )
    del q, kbuf, k
    torch.cuda.empty_cache()
    # --- the e2e prefill's own shape: a 1024-query chunk against 64K middle keys
    q = torch.randn(1, 32, 1024, 128, device=DEV, dtype=BF16)
    kbuf = torch.randn(1, 8, 65536 + 64, 128, device=DEV, dtype=BF16)
    k = kbuf[:, :, 32 : 32 + 65536]
    fl = 2 * 32 * 1024 * 65536 * 128
    ms = bench(lambda: triton_topk.score_topk_triton(q, k, 4), warmup=3, rep=20)
    ms_mm = bench(lambda: matmul_only(q, k), warmup=3, rep=10)
    row(
        "scoring",
        "chunk 1024x64K H32/8 d128 bf16 top-4 (Triton, exact)",
        fl / (ms * 1e-3) / 1e12,
        "TFLOP/s",
        "cuBLAS scores only",
        fl / (ms_mm * 1e-3) / 1e12,
        f"{ms * 1e3:.0f} us",
    )
    del q, kbuf, k
    torch.cuda.empty_cache()

    # --- decode: 1 query per head, 128K and 1M keys
    best_dec = None
    for M in (131072, 1048576):
        q = torch.randn(1, 32, 1, 128, device=DEV, dtype=BF16)
        kbuf = torch.randn(1, 8, M + 4096 + 32, 128, device=DEV, dtype=BF16)
        k = kbuf[:, :, 32 : 32 + M]
        kbytes = k.numel() * 2
        ms_b = bench(lambda: torch_topk_baseline(q, k, 4, chunk=M), warmup=3, rep=20)
        row(
            "decode-scoring",
            f"baseline torch matmul+topk M={M}",
            kbytes / (ms_b * 1e-3) / 1e12,
            "TB/s of K",
            note=f"{ms_b * 1e3:.1f} us",
        )
        configs = DECODE_SWEEP if (sweep and best_dec is None) else [None]
        for c in configs:
            if c is not None:
                c = dict(c)
                name = c.pop("name")
                c["target"] = c.pop("target_mult") * n_sm
                c.update(BLOCK_R=16, CI=0, min_tiles=4)
                c.setdefault("EARLY_EXIT", 0)
            else:
                name = "installed"
            try:
                ms = bench(lambda c=c: triton_topk.score_topk_triton(q, k, 4, _config=c), warmup=5, rep=40)
            except Exception as e:
                log(f"[decode sweep] {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            bw = kbytes / (ms * 1e-3)
            row(
                "decode-scoring-sweep" if c is not None else "decode-scoring",
                f"decode M={M} [{name}]",
                bw / 1e12,
                "TB/s of K",
                "copy rate",
                copy_bw / 1e12,
                f"{ms * 1e3:.1f} us = {100 * bw / copy_bw:.0f}% of copy; target >= 75%",
            )
            if c is not None and (best_dec is None or ms < best_dec[0]):
                best_dec = (ms, name, c)
        if best_dec is not None and not triton_topk.CONFIG_OVERRIDES["decode"]:
            triton_topk.CONFIG_OVERRIDES["decode"] = {
                k_: v for k_, v in best_dec[2].items() if k_ != "BLOCK_R"
            }
            RESULTS["decode_scoring_best"] = best_dec[1]
            ms = bench(lambda: triton_topk.score_topk_triton(q, k, 4), warmup=5, rep=40)
            bw = kbytes / (ms * 1e-3)
            row(
                "decode-scoring",
                f"decode M={M} [installed: {best_dec[1]}]",
                bw / 1e12,
                "TB/s of K",
                "copy rate",
                copy_bw / 1e12,
                f"{ms * 1e3:.1f} us = {100 * bw / copy_bw:.0f}% of copy",
            )
        del q, kbuf, k
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- attention

ATTN_PREFILL_SWEEP = [
    dict(name="flash R128 N64 w8 s3", FLASH=True, BLOCK_R=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(name="flash R128 N64 w4 s3", FLASH=True, BLOCK_R=128, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(name="flash R128 N128 w8 s2", FLASH=True, BLOCK_R=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(name="flash R128 N128 w8 s3", FLASH=True, BLOCK_R=128, BLOCK_N=128, num_warps=8, num_stages=3),
    dict(name="flash R64 N64 w4 s3", FLASH=True, BLOCK_R=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(name="flash R128 N32 w4 s4", FLASH=True, BLOCK_R=128, BLOCK_N=32, num_warps=4, num_stages=4),
    dict(name="flash R256 N64 w8 s3", FLASH=True, BLOCK_R=256, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(
        name="in-place prerot R128 N32 w4 s3 (before the flash path)",
        FLASH=False,
        BLOCK_R=128,
        BLOCK_N=32,
        PREROT=True,
        num_warps=4,
        num_stages=3,
    ),
]
#: The prefill kernel before the flash path (triton_attention.py, its H100 sweep's best).
ATTN_PREFILL_BEFORE = dict(FLASH=False, BLOCK_R=128, BLOCK_N=32, PREROT=True, num_warps=4, num_stages=3)
ATTN_DECODE_SWEEP = [
    dict(name="N64 w4 s3 t2", BLOCK_N=64, num_warps=4, num_stages=3, target_mult=2),
    dict(name="N128 w4 s3 t2", BLOCK_N=128, num_warps=4, num_stages=3, target_mult=2),
    dict(name="N64 w4 s4 t2", BLOCK_N=64, num_warps=4, num_stages=4, target_mult=2),
    dict(name="N64 w4 s3 t1", BLOCK_N=64, num_warps=4, num_stages=3, target_mult=1),
]


def rope_tables(P, D, dtype=BF16):
    inv = 1.0 / 500000.0 ** (torch.arange(0, D, 2, dtype=torch.float64, device=DEV) / D)
    f = torch.outer(torch.arange(P, dtype=torch.float64, device=DEV), inv)
    e = torch.cat([f, f], -1)
    return e.cos().to(dtype), e.sin().to(dtype)


def attention(sweep: bool):
    import torch.nn.functional as F

    from reattn_llm.kernels import triton_attention
    from reattn_llm.kernels._triton_utils import sm_count
    from reattn_llm.kernels.torch_ops import apply_rope, gather_kv, scope_attention_torch

    n_sm = sm_count(torch.device(DEV))
    H, Hkv, D, T, N = 32, 8, 128, 131072, 8192
    torch.manual_seed(0)
    kc = torch.randn(1, Hkv, T, D, device=DEV, dtype=BF16)
    vc = torch.randn(1, Hkv, T, D, device=DEV, dtype=BF16)
    mid = torch.randperm(T - 4096 - 32, device=DEV)[: N - 4096 - 32].sort().values + 32
    idx = torch.cat([torch.arange(32, device=DEV), mid, torch.arange(T - 4096, T, device=DEV)])[None]
    kpos = torch.arange(N, device=DEV)[None]
    cos, sin = rope_tables(N + 8, D)
    scale = D**-0.5
    for Q in (1024, 1):
        kind = "prefill" if Q > 1 else "decode"
        q = torch.randn(1, Q, H, D, device=DEV, dtype=BF16).transpose(1, 2)
        qpos = (torch.arange(Q, device=DEV) + N - Q)[None]
        flops = 4 * H * Q * N * D
        args = (q, kc, vc, idx, kpos, qpos, cos, sin, scale)
        ms_tw = bench(lambda: scope_attention_torch(*args), warmup=3, rep=20)
        # SDPA over K/V already gathered + rotated, GQA expanded (timed: the attention alone)
        kg = apply_rope(gather_kv(kc, idx), cos[kpos], sin[kpos]).repeat_interleave(H // Hkv, 1).contiguous()
        vg = gather_kv(vc, idx).repeat_interleave(H // Hkv, 1).contiguous()
        qr = apply_rope(q, cos[qpos], sin[qpos]).contiguous()
        if Q > 1:
            mask = (kpos[:, None, :] <= qpos[:, :, None])[:, None]
            ms_sd = bench(
                lambda: F.scaled_dot_product_attention(qr, kg, vg, attn_mask=mask, scale=scale),
                warmup=3,
                rep=20,
            )
            ms_fl = bench(lambda: F.scaled_dot_product_attention(qr, kg, vg, scale=scale), warmup=3, rep=20)
            row(
                "attention",
                "baseline: SDPA (flash, no mask) on pre-gathered K/V, prefill Q1024 N8192",
                flops / (ms_fl * 1e-3) / 1e12,
                "TFLOP/s",
                note=f"{ms_fl * 1e3:.0f} us",
            )
        else:
            ms_sd = bench(lambda: F.scaled_dot_product_attention(qr, kg, vg, scale=scale), warmup=3, rep=20)
            ms_fl = ms_sd
        row("attention", f"baseline: torch twin (gather+RoPE+SDPA) {kind}", ms_tw * 1e3, "us")
        row(
            "attention",
            f"baseline: SDPA on pre-gathered K/V {kind}{' (mask)' if Q > 1 else ''}",
            ms_sd * 1e3,
            "us",
        )
        configs = (ATTN_PREFILL_SWEEP if Q > 1 else ATTN_DECODE_SWEEP) if sweep else [None]
        best = None
        for c in configs:
            if c is not None:
                c = dict(c)
                name = c.pop("name")
                if Q == 1:
                    c["target"] = c.pop("target_mult") * n_sm
                    c.update(BLOCK_R=16, CAUSAL_SKIP=False, min_tiles=2)
                else:  # the flash kernel's tiles over the whole scope (no cuDNN prefix)
                    c.update(target=n_sm, min_tiles=16, CAUSAL_SKIP=False, PREFIX="triton")
            else:
                name = "installed"
            try:
                ms = bench(  # prefill with the chunk's promise, as the core calls it
                    lambda c=c: triton_attention.scope_attention_triton(*args, Q > 1, _config=c),
                    warmup=3,
                    rep=20,
                )
            except Exception as e:
                log(f"[attention sweep] {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            row(
                "attention-sweep" if c is not None else "attention",
                f"Triton {kind} [{name}]",
                ms * 1e3,
                "us",
                "twin",
                ms_tw * 1e3,
                f"{flops / (ms * 1e-3) / 1e12:.0f} TFLOP/s; SDPA pre-gathered {ms_fl * 1e3:.0f} us",
            )
            if c is not None and (best is None or ms < best[0]):
                best = (ms, name, c)
        if best is not None:
            triton_attention.CONFIG_OVERRIDES[kind] = {
                k_: v for k_, v in best[2].items() if k_ not in ("BLOCK_R",) or Q > 1
            }
            RESULTS[f"attn_{kind}_best"] = best[1]
            ms = bench(lambda: triton_attention.scope_attention_triton(*args), warmup=3, rep=20)
            row(
                "attention",
                f"Triton {kind} [installed: {best[1]}]",
                ms * 1e3,
                "us",
                "twin",
                ms_tw * 1e3,
                f"{flops / (ms * 1e-3) / 1e12:.0f} TFLOP/s; SDPA pre-gathered {ms_fl * 1e3:.0f} us",
            )
        if Q > 1:
            from reattn_llm.kernels.triton_gather import gather_scope

            # the flash path with the chunk's promise (chunk_tail), the flash kernel over the whole scope
            one = dict(PREFIX="triton")  # (the core's call, below, takes the prefix through cuDNN)
            ms_tail = bench(
                lambda: triton_attention.scope_attention_triton(*args, True, _config=one), warmup=3, rep=20
            )
            ms_old = bench(
                lambda: triton_attention.scope_attention_triton(*args, _config=dict(ATTN_PREFILL_BEFORE)),
                warmup=3,
                rep=20,
            )
            row(
                "attention",
                "Triton prefill, flash path + chunk_tail, one kernel (PREFIX=triton)",
                ms_tail * 1e3,
                "us",
                "SDPA flash, no mask, pre-gathered",
                ms_fl * 1e3,
                f"{flops / (ms_tail * 1e-3) / 1e12:.0f} TFLOP/s; kernel before the flash path "
                f"{ms_old * 1e3:.0f} us",
            )
            RESULTS["attn_prefill_tail_us"] = ms_tail * 1e3
            RESULTS["attn_prefill_before_us"] = ms_old * 1e3
            from reattn_llm.kernels import cudnn_prefix

            cudnn = dict(PREFIX="cudnn")
            ms_cd = bench(lambda: triton_attention.scope_attention_triton(*args, True, _config=cudnn), 3, 20)
            row(
                "attention",
                "Triton prefill, the prefix through cuDNN, own keys by the flash kernel (the core's call)",
                ms_cd * 1e3,
                "us",
                "flash path + chunk_tail (one kernel)",
                ms_tail * 1e3,
                f"{flops / (ms_cd * 1e-3) / 1e12:.0f} TFLOP/s"
                + (f"; FELL BACK: {cudnn_prefix._failed[0][:120]}" if cudnn_prefix._failed else ""),
            )
            RESULTS["attn_prefill_cudnn_prefix_us"] = ms_cd * 1e3
            ms_rot = bench(lambda: gather_scope(kc, vc, idx, kpos, cos, sin), warmup=3, rep=20)
            row(
                "attention",
                "of which: gather K (rotated) and V once",
                ms_rot * 1e3,
                "us",
                "whole Triton prefill",
                ms_tail * 1e3,
                f"{100 * ms_rot / ms_tail:.1f}% of the attention call",
            )
        del q, kg, vg, qr
        torch.cuda.empty_cache()
    del kc, vc
    torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- selection


def cuda_kernels(fn, reps=3):
    """CUDA kernels launched per call of ``fn`` (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    n = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return n / reps


#: Hits + pins per batch row at which ranking inside the kernel is timed against ranking outside it.
SELECT_RANK_SIZES = (512, 1024, 2048, 4096, 8192)


def select_inputs(H, Q, k, M, P, seed=0):
    """Hits ``[1, H, Q, k]`` (half on 64 planted positions, as a question's votes pile up; the rest
    spread over the middle) and ``P`` pinned centres."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    hits = torch.randint(0, M, (1, H, Q, k), device=DEV, generator=g)
    planted = torch.randint(0, M, (64,), device=DEV, generator=g)
    pick = torch.randint(0, 64, (1, H, Q, k), device=DEV, generator=g)
    hits = torch.where(torch.rand(hits.shape, device=DEV, generator=g) < 0.5, planted[pick], hits)
    pinned = torch.randint(0, M, (1, P), device=DEV, generator=g) if P else None
    return hits, pinned


def selection():
    from reattn_llm.kernels import triton_select
    from reattn_llm.kernels.torch_select import select_scope_torch
    from reattn_llm.method.selection import build_scope, expand_spans, rank_centres

    G, span = 32, 32

    def old_ops(hits, pinned, M, n, L, total, Q, by_rank):  # plan_scope's unfused path
        ranked, votes = rank_centres(hits, M, n, pinned, None, by_rank=by_rank)
        sel, valid = expand_spans(ranked[:, :n].sort(dim=1).values, M, span)
        return build_scope(sel, valid, total, Q, G, L, 1, hits.device), ranked, votes

    # (label, H, Q, k, pins, spans, local, by_rank): the 8B shape's decode under decode_spans="union"
    # (191 spans, local 2048) and its 512-query prefill chunks (127 spans, local 4096); SmolLM2's 9 heads.
    shapes = [
        ("decode H32 top-4, 127 pins, 191 spans", 32, 1, 4, 127, 191, 2048, True),
        ("prefill chunk Q512 H32 top-4 (65536 hits)", 32, 512, 4, 0, 127, 4096, False),
        ("prefill chunk Q512 H9 top-4 (18432 hits)", 9, 512, 4, 0, 127, 4096, False),
    ]
    for M in (32768, 131072, 1 << 20):
        for label, H, Q, k, P, n, L, by_rank in shapes:
            hits, pinned = select_inputs(H, Q, k, M, P)
            total = G + M + L
            args = (hits, pinned, M, n, span, G, L, total, Q, by_rank)
            got = triton_select.select_scope_triton(*args)
            ref, ranked, votes = old_ops(hits, pinned, M, n, L, total, Q, by_rank)
            same = all(
                torch.equal(a, b)
                for a, b in zip(
                    got,
                    (ref.gather_idx, ref.key_pos, ref.q_pos, ref.middle, ref.middle_valid, ranked, votes),
                    strict=True,
                )
            )
            ms_old = bench(lambda: old_ops(hits, pinned, M, n, L, total, Q, by_rank))
            ms_twin = bench(lambda: select_scope_torch(*args))
            ms_fused = bench(lambda: triton_select.select_scope_triton(*args))
            launches_old = cuda_kernels(lambda: old_ops(hits, pinned, M, n, L, total, Q, by_rank))
            launches_fused = cuda_kernels(lambda: triton_select.select_scope_triton(*args))
            row(
                "selection",
                f"fused {label}, M {M >> 10}K",
                ms_fused * 1e3,
                "us",
                "torch ops (method.selection)",
                ms_old * 1e3,
                f"{'identical' if same else 'DIFFERENT'}; kernels {launches_fused:.0f} vs {launches_old:.0f}; "
                f"sort-based twin {ms_twin * 1e3:.0f} us",
            )
            del hits, pinned, got, ref
    # where to rank: inside the kernel (registers, bitonic sort) or outside (torch sort + topk)
    M = 131072
    saved = triton_select.MAX_FUSED
    try:
        for c in SELECT_RANK_SIZES:
            Q = c // (32 * 4)
            hits, _ = select_inputs(32, Q, 4, M, 0)
            args = (hits, None, M, 127, span, G, 4096, G + M + 4096, Q, False)
            triton_select.MAX_FUSED = c
            try:
                ms_in = bench(lambda: triton_select.select_scope_triton(*args))
            except Exception as e:  # a block too large for one program's registers / shared memory
                log(f"[selection] rank in kernel, {c} hits: FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            triton_select.MAX_FUSED = 0
            ms_out = bench(lambda: triton_select.select_scope_triton(*args))
            row("selection", f"rank in kernel, {c} hits (Q{Q} H32 top-4)", ms_in * 1e3, "us",
                "ranked outside (torch sort)", ms_out * 1e3, f"MAX_FUSED now {saved}")  # fmt: skip
    finally:
        triton_select.MAX_FUSED = saved
    torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- end to end


#: Llama-3.1's RoPE scaling (window 131,072 from 8,192)
LLAMA31_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def build_model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if kind == "llama8b":
        cfg = LlamaConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_parameters=LLAMA31_ROPE,
        )
    else:  # SmolLM2-135M
        cfg = LlamaConfig(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            tie_word_embeddings=True,
        )
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(BF16)
    try:
        with torch.device(DEV):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    return model


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


@torch.no_grad()
def stock_prefill(model, ids):
    """Seconds for one stock forward over ``ids`` (DynamicCache), and the bytes its cache holds."""
    before = torch.cuda.memory_allocated()
    dt, out = sync_time(lambda: model(ids, use_cache=True, logits_to_keep=1))
    cache_bytes = torch.cuda.memory_allocated() - before
    del out
    return dt, cache_bytes


@torch.no_grad()
def stock_decode_static(model, T, steps=8, warm=3):
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=T + warm + steps + 1)
    tok = torch.randint(0, model.config.vocab_size, (1, 1), device=DEV)
    model(
        tok,
        past_key_values=cache,
        cache_position=torch.tensor([0], device=DEV),
        use_cache=True,
        logits_to_keep=1,
    )
    times = []
    for s in range(warm + steps):
        pos = T + s
        dt, _ = sync_time(
            lambda: model(
                tok,
                past_key_values=cache,
                cache_position=torch.tensor([pos], device=DEV),
                position_ids=torch.tensor([[pos]], device=DEV),
                use_cache=True,
                logits_to_keep=1,
            )
        )
        if s >= warm:
            times.append(dt)
    del cache
    return sorted(times)[len(times) // 2]


def profile_steps(fn, steps=3, label=""):
    """Print where one decode step's time goes (CPU and CUDA), for whoever tunes the core. Its caller
    (:func:`reattn_prefill_decode`) runs under ``no_grad``, as every timed path."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    log(f"--- profile {label}: {steps} steps, top by self CPU time")
    log(ka.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    log(f"--- profile {label}: top by CUDA time")
    log(ka.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


def profile_replays(model, cache, state, tok, start_len, bucket):
    """Where a step replayed from a CUDA graph spends its GPU time (``--graph-profile``): the second
    bucket's replays after its capture, profiled; the kernels' summed time a step against the step's
    wall time tells how much is launch gaps and small kernels' tails rather than reading memory."""
    from torch.profiler import ProfilerActivity, profile

    from reattn_llm.runtime.graphs import GraphDecoder

    for layer in cache.layers:
        layer.rewind(start_len)
    n = bucket - 2
    with GraphDecoder(model, cache, state, bucket=bucket) as dec:
        for _ in range(bucket + 1):  # the first bucket, then the second's eager step and capture
            dec.step(tok)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                dec.step(tok)
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / n
    ka = prof.key_averages()
    kernels = sum(getattr(e, "self_device_time_total", 0) or 0 for e in ka) / n / 1e3
    log(
        f"--- graph replays (bucket {bucket}): {n} steps, {wall * 1e3:.2f} ms a step profiled, kernels {kernels:.2f} ms"
    )
    log(ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))
    return dict(profiled_step_s=wall, kernel_ms=kernels)


def _static_steps(model, cache, state, tok, start_len, bucket, n, capture):
    """``n`` static steps in buckets of ``bucket`` from the first ``start_len`` rows (replayed from
    CUDA graphs with ``capture``, else eager): (seconds per step, logits per step, captures)."""
    from reattn_llm.runtime.graphs import GraphDecoder

    for layer in cache.layers:  # every run decodes from the same prefilled rows
        layer.rewind(start_len)
    times, outs = [], []
    with GraphDecoder(model, cache, state, bucket=bucket, capture=capture) as dec:
        for _ in range(n):
            dt, logits = sync_time(lambda: dec.step(tok))
            times.append(dt)
            outs.append(logits.float())
    return times, outs, dec.captures


def graph_decode(model, cache, state, tok, buckets=None):
    """Decode with static steps replayed from CUDA graphs
    (:class:`reattn_llm.runtime.graphs.GraphDecoder`) after the eager steps, once per bucket size
    in ``buckets`` (default: :data:`GRAPH_BUCKETS`), each from the same prefilled rows: the median
    replayed step, the mean step counting each bucket's eager first step and capture, and that
    first step's mean. The first size decodes three buckets and then runs the same static steps
    eagerly (``capture=False``), whose logits the replays must equal; the others decode two."""
    start_len = cache.layers[0].length
    out = {}
    for k, bucket in enumerate(buckets or GRAPH_BUCKETS):
        n = (3 if k == 0 else 2) * bucket
        times, outs, captures = _static_steps(model, cache, state, tok, start_len, bucket, n, True)
        replays = sorted(t for i, t in enumerate(times) if i % bucket)
        firsts = [t for i, t in enumerate(times) if i % bucket == 0]
        r = dict(
            graph_s=replays[len(replays) // 2],
            graph_mean_s=sum(times) / n,
            first_s=sum(firsts) / len(firsts),
            captures=captures,
        )
        if k == 0:
            eager, ref, _ = _static_steps(model, cache, state, tok, start_len, bucket, n, False)
            diff = max((a - b).abs().max().item() for a, b in zip(ref, outs, strict=True))
            r.update(static_eager_s=sorted(eager)[len(eager) // 2], max_diff=diff)
        out[bucket] = r
    if GRAPH_PROFILE:
        prof = profile_replays(model, cache, state, tok, start_len, (buckets or GRAPH_BUCKETS)[0])
        return dict(graphs=out, graph_profile=prof)
    return dict(graphs=out)


def prefill_forwards(state, T: int, piece: int | None) -> list:
    """The forwards (``method.chunks.Forward``) of a ``T``-token prompt: the engine's (the chunks of
    ``chunk_bounds`` joined up to ``--prefill-forward``), or with ``--prefill-forward 0`` pieces of
    ``piece`` tokens (the whole prompt if None), each cut as the layers cut a forward alone."""
    from reattn_llm.method.chunks import Forward, chunk_bounds

    if PREFILL_FORWARD == 0:
        c, piece = state.config, piece or T
        return [
            Forward(s, e, tuple(chunk_bounds(e - s, c.chunk_size, c.tail_size)), e == T)
            for s in range(0, T, piece)
            for e in [min(s + piece, T)]
        ]
    return engine_forwards(state.config, T)


def engine_forwards(cfg, T: int) -> list:
    """The engine's forwards (``method.chunks.Forward``) of a ``T``-token prompt on a GPU for a resolved
    config: the chunks of ``chunk_bounds`` joined up to ``--prefill-forward`` tokens."""
    from reattn_llm.method.chunks import chunk_bounds, engine_forward, plan_forwards

    tokens = engine_forward(dataclasses.replace(cfg, prefill_forward=PREFILL_FORWARD), cfg.chunk_size, "cuda")
    return plan_forwards(chunk_bounds(T, cfg.chunk_size, cfg.tail_size), tokens)


@torch.no_grad()
def reattn_prefill(model, ids, patched, piece=None, time_budget=None, cache=None):
    """``(seconds, tokens, cache)``: ``ids`` prefilled in the engine's forwards (:func:`prefill_forwards`),
    each forward synced and timed, into ``cache`` if given; ``time_budget`` stops it early."""
    t_total, done, pkv, T = 0.0, 0, cache, ids.shape[1]
    for f in prefill_forwards(patched, T, piece):
        chunk = ids[:, f.start : f.end]
        with patched.running(f):
            dt, out = sync_time(lambda: model(chunk, past_key_values=pkv, use_cache=True, logits_to_keep=1))
        pkv = out.past_key_values
        del out
        t_total += dt
        done = f.end
        if FORWARD_TIMES:
            log(f"  forward [{f.start}, {f.end}): {dt * 1e3:.1f} ms")
        if time_budget is not None and t_total > time_budget and done < T:
            log(f"  prefill stopped by the time budget at {done} tokens")
            break
    return t_total, done, pkv


def median_of(first: float, more) -> tuple[float, list[float]]:
    """The median of ``first`` and the ``PREFILL_REPEATS - 1`` more samples ``more()`` gives, and all of them."""
    samples = [first] + [more() for _ in range(PREFILL_REPEATS - 1)]
    return statistics.median(samples), samples


@torch.no_grad()  # decode, graphs and profiles too: with gradients on, the fused model ops step aside
def reattn_prefill_decode(
    model, ids, steps=8, warm=3, piece=None, time_budget=None, profile_label=None, state=None, cache=None
):
    """Prefill ``ids`` in the engine's forwards (:func:`prefill_forwards`; ``piece``: their size with
    ``--prefill-forward 0``), into ``cache`` if given, then decode;
    returns dict. With the patch's ``state``, also decode with CUDA graphs (:func:`graph_decode`)."""
    T = ids.shape[1]
    patched = state or model._reattn_handle.state
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    t_total, done, pkv = reattn_prefill(model, ids, patched, piece, time_budget, cache)
    peak_prefill = torch.cuda.max_memory_allocated()
    cache_bytes = torch.cuda.memory_allocated() - before
    log(f"  prefill: {done} tokens in {t_total:.1f} s, peak {peak_prefill / 2**30:.1f} GiB")
    tok = ids[:, -1:]
    times = []
    for s in range(warm + steps):
        dt, out = sync_time(lambda: model(tok, past_key_values=pkv, use_cache=True, logits_to_keep=1))
        del out
        if s >= warm:
            times.append(dt)
    peak = torch.cuda.max_memory_allocated()
    if profile_label:
        try:
            profile_steps(
                lambda: model(tok, past_key_values=pkv, use_cache=True, logits_to_keep=1), 3, profile_label
            )
            # one prefill forward as the engine feeds them (chunks joined), past the prompt
            f = max(prefill_forwards(patched, T, piece), key=lambda f: f.end - f.start)
            span = f.end - f.start
            chunk = ids[:, :span]
            with patched.running(dataclasses.replace(f, start=0, end=span, answer=False)):
                profile_steps(
                    lambda: model(chunk, past_key_values=pkv, use_cache=True, logits_to_keep=1),
                    1,
                    profile_label + f": one {span}-token prefill forward",
                )
        except Exception as e:
            log(f"profile failed: {e}")
    graphs = {}
    if state is not None:
        try:
            graphs = graph_decode(model, pkv, state, tok)
        except Exception:  # report it and keep the eager figures
            import traceback

            log("graph decode failed:\n" + traceback.format_exc())
    del pkv
    return dict(
        **graphs,
        prefill_s=t_total,
        tokens=done,
        decode_s=sorted(times)[len(times) // 2],
        peak_prefill=peak_prefill,
        peak=peak,
        cache_bytes=cache_bytes,
    )


def graph_rows(tag: str, r: dict, d_stock: float | None = None) -> None:
    """The table's rows for :func:`graph_decode`'s figures, one per bucket size."""
    for bucket, g in r.get("graphs", {}).items():
        note = (
            f"with each bucket's eager step and capture {g['graph_mean_s'] * 1e3:.1f} ms "
            f"({g['captures']} captures of {bucket} steps; a bucket's first step {g['first_s'] * 1e3:.0f} ms)"
        )
        if "max_diff" in g:
            note += f"; the same static steps eager {g['static_eager_s'] * 1e3:.1f} ms, max |logit diff| {g['max_diff']:.3g}"
        if d_stock is not None:
            note = f"ratio {g['graph_s'] / d_stock:.2f}; " + note
        row(
            "e2e",
            f"{tag}: decode/token ReAttention, CUDA graph, bucket {bucket}",
            g["graph_s"] * 1e3,
            "ms",
            "stock SDPA StaticCache" if d_stock is not None else None,
            d_stock * 1e3 if d_stock is not None else None,
            note,
        )


def e2e(which: list[str]):
    from reattn_llm import patch

    if any(w in ("llama32k", "llama128k") for w in which):
        model = build_model("llama8b")
        vocab = model.config.vocab_size
        g = torch.Generator(device=DEV).manual_seed(0)
        # warm up both paths (kernel compiles) on a short sequence
        warm_ids = torch.randint(0, vocab, (1, 12288), device=DEV, generator=g)
        stock_prefill(model, warm_ids[:, :4096])  # (time, cache bytes) unused
        for cfg in warm_configs(model, warm_ids.shape[1]):
            h = patch(model, cfg)
            r = reattn_prefill_decode(model, warm_ids, steps=2, warm=1)
            log(f"  warm-up ReAttention 12K: prefill {r['prefill_s']:.2f} s")
            h.unpatch()
        warm_wide_candidates(model)
        for w in which:
            if w not in ("llama32k", "llama128k"):
                continue
            T = {"llama32k": 32768, "llama128k": 131072}[w]
            ids = torch.randint(0, vocab, (1, T), device=DEV, generator=g)
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            t_stock, cache_stock = stock_prefill(model, ids)
            peak_stock = torch.cuda.max_memory_allocated()
            t_stock, stock_samples = median_of(t_stock, lambda: stock_prefill(model, ids)[0])
            gc.collect()
            torch.cuda.empty_cache()
            d_stock = stock_decode_static(model, T)
            gc.collect()
            torch.cuda.empty_cache()
            h = patch(model, e2e_config())
            try:
                r = reattn_prefill_decode(
                    model,
                    ids,
                    profile_label=f"ReAttention decode {w}" if w in PROFILE else None,
                    state=h.state if GRAPHS else None,
                    cache=e2e_cache(model, T, profiled=w in PROFILE, state=h.state),
                )
                r["prefill_s"], samples = median_of(
                    r["prefill_s"], lambda: reattn_prefill(model, ids, h.state, cache=e2e_cache(model, T))[0]
                )
            finally:
                h.unpatch()
            gc.collect()
            torch.cuda.empty_cache()
            tag = f"Llama-3.1-8B shape, {T // 1024}K"
            row(
                "e2e",
                f"{tag}: prefill ReAttention",
                r["prefill_s"],
                "s",
                "stock SDPA",
                t_stock,
                f"ratio {r['prefill_s'] / t_stock:.2f} (target <= 1.1)"
                + ("; ReAttention's cache reserved (--reserve)" if RESERVE else "")
                + (
                    f"; medians of {PREFILL_REPEATS}: ReAttention {', '.join(f'{t:.3f}' for t in samples)} s,"
                    f" stock {', '.join(f'{t:.3f}' for t in stock_samples)} s"
                    if PREFILL_REPEATS > 1
                    else ""
                ),
            )
            row(
                "e2e",
                f"{tag}: decode/token ReAttention",
                r["decode_s"] * 1e3,
                "ms",
                "stock SDPA StaticCache",
                d_stock * 1e3,
                f"ratio {r['decode_s'] / d_stock:.2f} (target <= 0.85)",
            )
            graph_rows(tag, r, d_stock)
            row(
                "e2e",
                f"{tag}: peak memory ReAttention",
                r["peak"] / 2**30,
                "GiB",
                "stock prefill",
                peak_stock / 2**30,
                "peak allocated; the whole-sequence MLP activations of one forward dominate both",
            )
            row(
                "e2e",
                f"{tag}: KV cache after prefill, ReAttention",
                r["cache_bytes"] / 2**30,
                "GiB",
                "stock DynamicCache",
                cache_stock / 2**30,
            )
        del model
        gc.collect()
        torch.cuda.empty_cache()
    if "llama1m" in which:
        llama_1m()
    if "smol1m" in which:
        model = build_model("smol")
        vocab = model.config.vocab_size
        T = 1 << 20
        g = torch.Generator(device=DEV).manual_seed(0)
        ids = torch.randint(0, vocab, (1, T), device=DEV, generator=g)
        r = long_run(
            model,
            ids,
            e2e_config(),
            16384,
            "SMOL_BUDGET_S",
            profile_label="ReAttention decode smol1m" if "smol1m" in PROFILE else None,
        )
        tag = f"SmolLM2-135M shape, {r['tokens'] // 1024}K"
        row(
            "e2e",
            f"{tag}: prefill ReAttention",
            r["prefill_s"],
            "s",
            note=f"{r['tokens'] / r['prefill_s']:.0f} tok/s",
        )
        row("e2e", f"{tag}: decode/token ReAttention", r["decode_s"] * 1e3, "ms")
        graph_rows(tag, r)
        peak_row(tag, r)
        del model
        gc.collect()
        torch.cuda.empty_cache()


#: --e2e shapes whose decode step (and one 1024-token chunk) the torch profiler breaks down
#: (``PROFILE=llama32k,smol1m``; default llama32k)
PROFILE = os.environ.get("PROFILE", "llama32k").split(",")
#: Rows a reserved long-run cache keeps past the prompt for the decode steps (eager and graphs).
DECODE_ROOM = 4096


def warm_configs(model, warm_tokens: int, cfg=None) -> list:
    """Configurations whose kernels a warm-up over ``warm_tokens`` compiles before anything is timed.
    Two-level selection scores exactly while its candidates cover a chunk's middle
    (``candidate_blocks * 32`` keys, 16K by default: all of a 12K warm-up), so a second warm-up runs
    with fewer candidates than the first chunk of the warm-up's last joined forward has blocks: that
    forward then selects two-level as one batch (``grow``), the path of the timed prefill's
    forwards, and compiles level 1 (``rank_blocks``, the candidates kernel) and level 2 (the block
    table's top-k and merge). The kernels' length arguments are not specialised
    (``do_not_specialize``) and their length-derived constexprs are bucketed, so these compiles serve
    the timed lengths; the candidates kernel's second width (middles past 2,048 blocks) is compiled
    by :func:`warm_wide_candidates`. (Run 14, with 16 candidates: 15.9 s in a machine's first
    process, 11.2 s in its second.)"""
    cfg = cfg or e2e_config()
    cfgs = [cfg]
    if cfg.selection == "two_level":
        rc = cfg.resolve(model.config.max_position_embeddings)
        fwd = engine_forwards(rc, warm_tokens)
        joined = [f.start for f in fwd if f.end - f.start > rc.chunk_size] or [f.start for f in fwd]
        blocks = (joined[-1] - rc.global_size - rc.local_size) // rc.summary_block
        cfgs.append(dataclasses.replace(cfg, candidate_blocks=max(1, blocks - 1)))
    return cfgs


def warm_wide_candidates(model, cfg=None) -> None:
    """Compile the candidates kernel's wide variant (``top_blocks``: a middle past 2,048 blocks, 64K
    keys, which no short warm-up reaches) on a synthetic ranking, before anything is timed."""
    cfg = cfg or e2e_config()
    if cfg.selection != "two_level" or cfg.backend != "triton":
        return
    from reattn_llm.kernels.triton_blocks import MAX_TOP_BLOCKS, candidate_blocks_triton, top_blocks_triton

    mc = model.config
    c = min(cfg.resolve(mc.max_position_embeddings).candidates, MAX_TOP_BLOCKS)
    hkv, d = mc.num_key_value_heads, getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    top_blocks_triton(torch.rand(1, hkv, MAX_TOP_BLOCKS, device=DEV), c)  # a prompt chunk's level 1
    q = torch.randn(1, mc.num_attention_heads, 1, d, device=DEV, dtype=model.dtype)
    summaries = torch.randn(1, hkv, MAX_TOP_BLOCKS, 2 * d, device=DEV, dtype=model.dtype)
    candidate_blocks_triton(q, summaries, c)  # a decode step's (two-level answers)


def _int_pairs(ap, flag: str, text: str) -> dict:
    """``k=v,...`` of a tile-configuration flag (ruler.py's parser), every value an integer, else a usage error."""
    from ruler import _parse_overrides

    pairs = _parse_overrides([text])
    bad = [f"{k}={v}" for k, v in pairs.items() if not k or type(v) is not int]
    if bad:
        ap.error(f"{flag} takes k=integer pairs, got {', '.join(bad)}")
    return pairs


def e2e_cache(model, tokens: int, profiled: bool = False, state=None):
    """The cache of an ``--e2e`` ReAttention prefill of ``tokens``: reserved for them and DECODE_ROOM with
    ``--reserve`` (the engine's way), and for the forward a profile appends after the decode steps
    (``profiled``; ``state``: the patch's), else None (the model makes one whose buffers grow)."""
    from reattn_llm.method.patch import make_cache

    if not RESERVE:
        return None
    room = DECODE_ROOM
    if profiled:
        room += max(f.end - f.start for f in prefill_forwards(state, tokens, None))
    return make_cache(model, reserve=tokens + room)


def e2e_config(**kw):
    """The ReAttention config of ``--e2e``: Triton, ``--selection``, ``--exact-answer``, then ``kw``."""
    from reattn_llm import ReAttentionConfig

    return ReAttentionConfig(
        **{"backend": "triton", "selection": SELECTION, "exact_answer": EXACT_ANSWER, **E2E_SET, **kw}
    )


def long_run(model, ids, cfg, warm_tokens, budget_var, reserve=False, **kw):
    """ReAttention (``cfg``) over a million-token ``ids``: compile on the first ``warm_tokens``, then
    prefill in pieces of 65,536 tokens (stopped after ``$budget_var`` seconds, default 240; into a
    cache reserved for every token with ``reserve``) and decode (``kw``: steps, warm), from CUDA
    graphs too with ``--graphs``. Returns :func:`reattn_prefill_decode`'s dict."""
    from reattn_llm import patch
    from reattn_llm.method.patch import make_cache

    # two-level's kernels first (warm_configs' later entries); the main config's warm-up follows
    for warm in warm_configs(model, warm_tokens, cfg)[1:]:
        h = patch(model, warm)
        reattn_prefill_decode(model, ids[:, :warm_tokens], steps=1, warm=1)
        h.unpatch()
    warm_wide_candidates(model, cfg)
    h = patch(model, cfg)
    try:
        reattn_prefill_decode(model, ids[:, :warm_tokens], steps=1, warm=1)  # compile
        gc.collect()
        torch.cuda.empty_cache()
        return reattn_prefill_decode(
            model,
            ids,
            piece=65536,
            time_budget=float(os.environ.get(budget_var, "240")),
            # the prompt and the decode steps after it (eager, and the graph buckets' steps)
            cache=make_cache(model, reserve=ids.shape[1] + DECODE_ROOM) if reserve else None,
            state=h.state if GRAPHS else None,
            **kw,
        )
    finally:
        h.unpatch()


def peak_row(tag: str, r: dict) -> None:
    """The table's peak-memory row of a :func:`long_run`."""
    row(
        "e2e",
        f"{tag}: peak memory",
        r["peak"] / 2**30,
        "GiB",
        note=f"cache {r['cache_bytes'] / 2**30:.1f} GiB",
    )


def llama_1m() -> None:
    """The 8B shape at 1M tokens on one GPU: fp8 K/V storage (64 GiB; bf16 would need 128 GiB beside
    15 GiB of weights) with two-level selection, prefill in pieces of 65,536 tokens (stopped at
    ``LLAMA1M_BUDGET_S`` seconds, default 240: the row says how far it got) then 100 decode steps,
    eager, and with ``--graphs`` from CUDA graphs too. Stock cannot hold the cache, so its baseline is its own
    prefill and decode at 128K in the same run."""

    model = build_model("llama8b")
    vocab = model.config.vocab_size
    T = 1 << 20
    g = torch.Generator(device=DEV).manual_seed(0)
    ids = torch.randint(0, vocab, (1, T), device=DEV, generator=g)
    t_stock, _ = stock_prefill(model, ids[:, : 1 << 17])
    gc.collect()
    torch.cuda.empty_cache()
    d_stock = stock_decode_static(model, 1 << 17)
    gc.collect()
    torch.cuda.empty_cache()
    cfg = e2e_config(selection="two_level", kv_dtype="fp8")
    r = long_run(model, ids, cfg, 12288, "LLAMA1M_BUDGET_S", reserve=True, steps=100, warm=3)
    tag = f"Llama-3.1-8B shape, {r['tokens'] // 1024}K, fp8 K/V, two-level"
    graph_rows(tag, r, d_stock)
    stock_rate = (1 << 17) / t_stock
    row(
        "e2e",
        f"{tag}: prefill ReAttention",
        r["prefill_s"],
        "s",
        "stock SDPA prefill at 128K (s)",
        t_stock,
        f"{r['tokens'] / r['prefill_s']:.0f} tok/s against stock's {stock_rate:.0f} tok/s at 128K",
    )
    row(
        "e2e",
        f"{tag}: decode/token ReAttention (median of 100)",
        r["decode_s"] * 1e3,
        "ms",
        "stock SDPA StaticCache at 128K",
        d_stock * 1e3,
    )
    peak_row(tag, r)
    del model
    gc.collect()
    torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--micro", action="store_true", help="ceilings, scoring, attention")
    ap.add_argument("--sweep", action="store_true", help="time several tile configs, install the best")
    ap.add_argument("--select", action="store_true", help="the fused span selection alone (in --micro too)")
    ap.add_argument("--e2e", default="", help="comma list: llama32k,llama128k,llama1m,smol1m")
    ap.add_argument(
        "--fused-select",
        choices=["default", "all", "none"],
        default="default",
        help="end to end, the span selection fused for: the default phases (method.planning.FUSED_SELECT: "
        "decode on Triton), all (prefill chunks too) or none",
    )
    ap.add_argument("--graphs", action="store_true", help="--e2e also decodes with CUDA graphs")
    ap.add_argument(
        "--graph-profile", action="store_true", help="--graphs: profile the replayed steps' kernels"
    )
    ap.add_argument(
        "--graph-buckets", default="32", help="comma list of the bucket sizes --graphs decodes with"
    )
    ap.add_argument(
        "--selection",
        choices=["exact", "two_level"],
        default="exact",
        help="ReAttention's selection in --e2e",
    )
    ap.add_argument(
        "--exact-answer",
        choices=["default", "all", "question", "none"],
        default="default",
        help="two-level selection: which answer forwards score exactly (ReAttentionConfig.exact_answer)",
    )
    ap.add_argument(
        "--attn-before",
        action="store_true",
        help="prefill chunks attend with the kernel before the flash path (ATTN_PREFILL_BEFORE), the baseline",
    )
    ap.add_argument(
        "--attn-prefix",
        choices=["default", "triton", "cudnn"],
        default="default",
        help="prefill chunks: the keys before the chunk's own through cuDNN (kernels.cudnn_prefix, the "
        "default) or all in the flash kernel (triton)",
    )
    ap.add_argument(
        "--prefill-forward",
        type=int,
        default=None,
        help="tokens per ReAttention prefill forward in --e2e, whole chunks joined as the engine does "
        "(default: the engine's); 0: the prompt in one call (pieces of 64K at 1M), split by the layers",
    )
    ap.add_argument(
        "--unbatched",
        action="store_true",
        help="a forward's whole prompt chunks select chunk by chunk (method.planning.BATCHED_CHUNKS off), "
        "the baseline of the batched selection",
    )
    ap.add_argument(
        "--stock-ops",
        action="store_true",
        help="--e2e with the model's RMSNorm and MLP forwards stock (method.model_ops.FUSE off), the baseline",
    )
    ap.add_argument(
        "--set",
        default="",
        help="more ReAttentionConfig fields for --e2e, ruler.py's form: candidate_blocks=254,k=v",
    )
    ap.add_argument(
        "--topk",
        default="",
        help="score_topk's prefill tile configuration, k=v,... over the default's (triton_topk.CONFIG_OVERRIDES), "
        "e.g. OVERLAP=1: an A/B of a kernel variant end to end",
    )
    ap.add_argument(
        "--attn",
        default="",
        help="scope attention's prefill configuration, k=v,... over the default's (triton_attention."
        "CONFIG_OVERRIDES), e.g. BLOCK_R=128,num_warps=8: an A/B of the flash kernel's tiles end to end",
    )
    ap.add_argument(
        "--prefill-repeats",
        type=int,
        default=1,
        help="--e2e (llama32k / llama128k): prefills timed per mode, the figures their medians",
    )
    ap.add_argument(
        "--reserve",
        action="store_true",
        help="--e2e: ReAttention prefills into a cache reserved for the prompt and the decode steps, as "
        "the engine reserves prompt + answer tokens (default: buffers that grow as forwards append)",
    )
    ap.add_argument("--forward-times", action="store_true", help="--e2e: log each prefill forward's time")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    global GRAPHS, GRAPH_PROFILE, GRAPH_BUCKETS, SELECTION, EXACT_ANSWER
    global PREFILL_FORWARD, PREFILL_REPEATS, RESERVE, FORWARD_TIMES
    if args.prefill_repeats < 1:
        ap.error(f"--prefill-repeats must be at least 1, got {args.prefill_repeats}")
    PREFILL_REPEATS = args.prefill_repeats
    RESULTS["prefill_repeats"] = PREFILL_REPEATS
    PREFILL_FORWARD = args.prefill_forward
    RESERVE, FORWARD_TIMES = args.reserve, args.forward_times
    RESULTS["reserve"] = RESERVE
    RESULTS["prefill_forward"] = PREFILL_FORWARD
    GRAPHS, GRAPH_PROFILE = args.graphs, args.graph_profile
    GRAPH_BUCKETS = [int(b) for b in args.graph_buckets.split(",") if b]
    SELECTION = args.selection
    RESULTS["selection"] = SELECTION
    EXACT_ANSWER = None if args.exact_answer == "default" else args.exact_answer
    RESULTS["exact_answer"] = EXACT_ANSWER
    if args.stock_ops:
        from reattn_llm.method import model_ops

        model_ops.FUSE = False
    RESULTS["fused_model_ops"] = not args.stock_ops
    if args.set:
        from ruler import _parse_overrides

        E2E_SET.update(_parse_overrides([args.set]))
        RESULTS["set"] = dict(E2E_SET)
    from reattn_llm.method import planning

    if args.fused_select != "default":
        on = ("triton",) if args.fused_select == "all" else ()
        planning.FUSED_SELECT = {"decode": on, "prefill": on}
    RESULTS["fused_select"] = planning.FUSED_SELECT
    if args.unbatched:
        planning.BATCHED_CHUNKS = ()
    RESULTS["batched_chunks"] = planning.BATCHED_CHUNKS
    if args.topk:
        from reattn_llm.kernels import triton_topk

        triton_topk.CONFIG_OVERRIDES["prefill"].update(_int_pairs(ap, "--topk", args.topk))
        RESULTS["topk_prefill"] = dict(triton_topk.CONFIG_OVERRIDES["prefill"])
    if args.attn_before:
        from reattn_llm.kernels import triton_attention

        triton_attention.CONFIG_OVERRIDES["prefill"] = dict(ATTN_PREFILL_BEFORE)
        RESULTS["attn_prefill"] = "before the flash path"
    elif args.attn_prefix != "default":
        from reattn_llm.kernels import triton_attention

        triton_attention.CONFIG_OVERRIDES["prefill"]["PREFIX"] = args.attn_prefix
        RESULTS["attn_prefill"] = f"prefix through {args.attn_prefix}"
    if args.attn:  # the tiles over --attn-before's or --attn-prefix's configuration
        from reattn_llm.kernels import triton_attention

        triton_attention.CONFIG_OVERRIDES["prefill"].update(_int_pairs(ap, "--attn", args.attn))
        RESULTS["attn_prefill_tiles"] = dict(triton_attention.CONFIG_OVERRIDES["prefill"])
    RESULTS["device"] = torch.cuda.get_device_name()
    import transformers
    import triton

    RESULTS["versions"] = dict(
        torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__
    )
    log(RESULTS["device"], RESULTS["versions"])
    try:
        if args.micro:
            ceilings()
            scoring(args.sweep)
            attention(args.sweep)
        if args.micro or args.select:
            selection()
        if args.e2e:
            if "copy_Bps" not in RESULTS:
                ceilings()
            e2e([w for w in args.e2e.split(",") if w])
    finally:
        from reattn_llm.kernels import cudnn_prefix, triton_attention, triton_select, triton_topk

        RESULTS["cudnn_prefix_failed"] = cudnn_prefix._failed
        RESULTS["installed_configs"] = dict(
            topk=triton_topk.CONFIG_OVERRIDES,
            attention=triton_attention.CONFIG_OVERRIDES,
            select_max_fused=triton_select.MAX_FUSED,
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(RESULTS, f, indent=1, default=str)
        log("\n| section | what | value | unit | baseline | baseline value | note |")
        log("|---|---|---|---|---|---|---|")
        for r in RESULTS["rows"]:
            bv = f"{r['base_value']:.4g}" if r["base_value"] is not None else ""
            base = r["baseline"] or ""
            cells = [r["section"], r["what"], f"{r['value']:.4g}", r["unit"], base, bv, r["note"]]
            log("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
