"""Kernel checks run under Triton's CPU interpreter (``TRITON_INTERPRET=1``), in a subprocess.

Not a pytest module: :mod:`tests.test_kernels` runs ``python tests/kernel_cases.py [names...]``
with the interpreter switched on before triton is imported, and reads one JSON line per case.
Each case compares the Triton kernel with its torch twin and an fp64 reference:

* top-k: the returned index sets equal the reference's, ties aside (the fp64 scores of the
  returned indices, sorted, equal the reference top-k scores), no duplicates, in range;
* attention: relative error vs fp64 <= 2x the twin's error at the same precision.

fp16 and fp32 only: the 3.9 interpreter's ``tl.dot`` is wrong for bf16 (bf16 runs on the GPU,
``benchmarks/gpu_kernels_check.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

F16, F32 = torch.float16, torch.float32


def rope_tables(P: int, R: int, base: float = 10000.0, dtype=torch.float32):
    inv = 1.0 / base ** (torch.arange(0, R, 2, dtype=torch.float64) / R)
    f = torch.outer(torch.arange(P, dtype=torch.float64), inv)
    e = torch.cat([f, f], -1)
    return e.cos().to(dtype), e.sin().to(dtype)


def expect_value_errors(bad):
    """Raise AssertionError unless every call in ``bad`` raises ValueError."""
    for i, f in enumerate(bad):
        try:
            f()
        except ValueError:
            continue
        raise AssertionError(f"bad call {i} raised no ValueError")


# ----------------------------------------------------------------------------- top-k


def topk_check(q, k, top_k, got, tol_scale=1.0):
    """Raise AssertionError unless ``got`` is an exact top-k of q.k (ties aside)."""
    from reattn_llm.kernels.torch_ops import score_topk_torch

    B, H, Q, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    kk = min(top_k, M)
    assert got.shape == (B, H, Q, kk), f"shape {tuple(got.shape)} != {(B, H, Q, kk)}"
    assert got.dtype == torch.int64
    assert int(got.min()) >= 0 and int(got.max()) < M, "index out of range"
    srt = got.sort(-1).values
    assert bool((srt[..., 1:] != srt[..., :-1]).all()), "duplicate indices"
    s = torch.einsum("bhqd,bhmd->bhqm", q.double(), k.double().repeat_interleave(H // Hkv, 1))
    ref_v = s.topk(kk, dim=-1).values
    got_v = s.gather(-1, got).sort(-1, descending=True).values
    # fp32 accumulation of D products: a few ulps of sum |q_d k_d|
    mag = torch.einsum("bhqd,bhmd->bhqm", q.double().abs(), k.double().abs().repeat_interleave(H // Hkv, 1))
    tol = 4 * D * 2.0**-24 * mag.max().item() * tol_scale + 1e-12
    err = (ref_v - got_v).abs().max().item()
    assert err <= tol, f"returned scores differ from the reference top-k by {err:.3g} (tol {tol:.3g})"
    twin = score_topk_torch(q, k, top_k)
    twin_v = s.gather(-1, twin).sort(-1, descending=True).values
    err_t = (twin_v - got_v).abs().max().item()
    assert err_t <= tol, f"kernel and twin disagree beyond ties: {err_t:.3g}"
    return {"max_score_gap": err}


def topk_case(B, H, Hkv, Q, M, D, top_k, dtype, config=None, seed=0, pad=7, transpose_q=False):
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(seed)
    if transpose_q:
        q = torch.randn(B, Q, H, D, dtype=dtype).transpose(1, 2)
    else:
        q = torch.randn(B, H, Q, D, dtype=dtype)
    buf = torch.randn(B, Hkv, M + 2 * pad, D, dtype=dtype)  # the middle slice of a larger cache
    k = buf[:, :, pad : pad + M]
    got = score_topk_triton(q, k, top_k, _config=config)
    return topk_check(q, k, top_k, got)


def topk_planted_case(dtype, config=None):
    """Two true hits in one 128-key block (and in one kernel group): an approximate per-block
    top-1 would miss one of them; the exact kernel must return both."""
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(1)
    B, H, Hkv, Q, M, D = 1, 4, 2, 3, 1025, 64
    q = torch.randn(B, H, Q, D, dtype=dtype)
    k = torch.randn(B, Hkv, M, D, dtype=dtype) * 0.1
    # keys 256 and 257 (same 128-block, same 8-column group) and 600 align with every query of head 0
    for j, a in ((256, 3.0), (257, 2.5), (600, 2.0)):
        k[0, 0, j] = (q[0, 0].float().mean(0) * a).to(dtype)
    got = score_topk_triton(q, k, 4, _config=config)
    hits0 = set(got[0, 0].flatten().tolist())
    assert {256, 257, 600} <= hits0, f"planted hits missing: {sorted(hits0)}"
    return topk_check(q, k, 4, got)


def topk_dup_case(dtype, config=None):
    """Many exactly equal scores (repeated key rows, as repeated tokens give in layer 0)."""
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(2)
    B, H, Hkv, Q, M, D = 1, 4, 2, 6, 700, 64
    q = torch.randn(B, H, Q, D, dtype=dtype)
    base = torch.randn(B, Hkv, 7, D, dtype=dtype)
    k = base[:, :, torch.randint(0, 7, (M,))].contiguous()
    got = score_topk_triton(q, k, 4, _config=config)
    return topk_check(q, k, 4, got)


def topk_blocks_case(B, H, Hkv, Q, M, D, bs, C, top_k, dtype, config=None, seed=0):
    """Level 2 of two-level selection: the top-k over per-KV-head blocks read in place through a
    block table (C increasing full blocks of each head, then the partial block at the end of the
    middle) must be an exact top-k of those keys, the twin's, and name rows of ``k``."""
    from reattn_llm.kernels.torch_ops import score_topk_blocks_torch
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton

    torch.manual_seed(seed)
    q = torch.randn(B, H, Q, D, dtype=dtype)
    buf = torch.randn(B, Hkv, M + 9, D, dtype=dtype)
    k = buf[:, :, 4 : 4 + M]  # the middle of a larger cache
    n_full = M // bs
    blocks = torch.rand(B, Hkv, n_full).topk(C, dim=2).indices.sort(dim=2).values
    got = score_topk_blocks_triton(q, k, blocks, bs, top_k, _config=config)
    twin = score_topk_blocks_torch(q, k, blocks, bs, top_k)
    n_keys = C * bs + M % bs
    assert got.shape == twin.shape == (B, H, Q, min(top_k, n_keys)), (tuple(got.shape), tuple(twin.shape))
    full = (blocks[..., None] * bs + torch.arange(bs)).flatten(2)
    rows = torch.cat([full, torch.arange(n_full * bs, M).expand(B, Hkv, -1)], 2)  # [B, Hkv, n_keys]
    kc = k.gather(2, rows[..., None].expand(-1, -1, -1, D))
    logical = torch.full((B, Hkv, M), -1, dtype=torch.long)
    logical.scatter_(2, rows, torch.arange(n_keys).expand(B, Hkv, -1).contiguous())
    lg = logical.repeat_interleave(H // Hkv, dim=1)
    local = lg.gather(2, got.flatten(2)).reshape(got.shape)
    assert int(local.min()) >= 0, "a row outside the candidate blocks"
    out = topk_check(q, kc, top_k, local)
    assert bool((got == twin).all()), "kernel and twin rows differ"  # random keys: no ties
    return out


def topk_ties_case(dtype, config, grow=0, seed=2):
    """Exact duplicate keys (repeated tokens give them in layer 0, un-rotated keys being position-free):
    the chosen indices must not depend on how the keys are split over programs, nor on a batch of
    chunks (``grow``) that changes the splits: the running top-k keeps the best under (value, then
    the lower id), a total order, and evicts the highest id among tied slots."""
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(seed)
    C, H, Hkv, Q, M, D, k = (3 if grow else 1), 6, 2, 24, 652, 64, 4
    q = torch.randn(1, H, C * Q, D, dtype=dtype)[0].unflatten(1, (C, Q)).transpose(0, 1)
    base = torch.randn(1, Hkv, 7, D, dtype=dtype)
    keys = base[:, :, torch.randint(0, 7, (M,))].contiguous()  # 7 distinct keys, each ~93 times
    runs = [score_topk_triton(q, keys.expand(C, -1, -1, -1), k, grow=grow, _config={**config, "splits": n})
            for n in (1, 2, 5)]  # fmt: skip
    for r in runs[1:]:
        assert torch.equal(r, runs[0]), f"splits change the tied choice: {int((r != runs[0]).sum())} entries"
    for b in range(C if grow else 0):  # each chunk of the batch as alone
        alone = score_topk_triton(q[b : b + 1], keys[:, :, : M - (C - 1 - b) * grow], k, _config=config)
        assert torch.equal(runs[0][b : b + 1], alone), f"chunk {b} picks other tied keys than alone"
    return topk_check(q[:1], keys, k, runs[0][:1])


def topk_grow_case(C, H, Hkv, Q, M, D, top_k, grow, dtype, config=None, seed=0):
    """One forward's C chunks as a batch (``grow``): one sequence's keys expanded over them with
    batch stride 0, chunk b scoring its first ``M - (C - 1 - b)·grow``. Each row must equal the kernel
    on that chunk alone, bit for bit, be an exact top-k of its keys, and equal the twin's rows."""
    from reattn_llm.kernels.torch_ops import score_topk_torch
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(seed)
    q = torch.randn(1, H, C * Q, D, dtype=dtype)[0].unflatten(1, (C, Q)).transpose(0, 1)  # a strided view
    buf = torch.randn(1, Hkv, M + 9, D, dtype=dtype)
    k = buf[:, :, 5 : 5 + M].expand(C, -1, -1, -1)
    got = score_topk_triton(q, k, top_k, grow=grow, _config=config)
    twin = score_topk_torch(q, k, top_k, grow)
    first = M - (C - 1) * grow
    assert got.shape == twin.shape == (C, H, Q, min(top_k, first)), (tuple(got.shape), tuple(twin.shape))
    for b in range(C):
        mb = first + b * grow
        alone = score_topk_triton(q[b : b + 1], k[b : b + 1, :, :mb], top_k, _config=config)
        assert torch.equal(got[b : b + 1], alone[..., : got.shape[-1]]), f"chunk {b} differs from alone"
        topk_check(q[b : b + 1], k[b : b + 1, :, :mb], got.shape[-1], got[b : b + 1])
    assert torch.equal(got, twin), "kernel and twin rows differ"  # random keys: no ties
    expect_value_errors(
        [lambda: score_topk_triton(q, k, top_k, grow=-1), lambda: score_topk_triton(q, k, top_k, grow=M)]
    )
    return {"first": first, "last": M}


GROUPED_SMALL = dict(BLOCK_R=32, BLOCK_N=32, CI=2, EARLY_EXIT=2, num_warps=4, num_stages=1)
GROUPED_PACK = dict(
    BLOCK_R=32, BLOCK_N=32, CI=2, EARLY_EXIT=0, PACK=True, num_warps=4, num_stages=1, splits=2
)
GROUPED_CI1 = dict(BLOCK_R=16, BLOCK_N=16, CI=1, EARLY_EXIT=1, num_warps=4, num_stages=1)
GROUPED_EE0 = dict(BLOCK_R=32, BLOCK_N=64, CI=4, EARLY_EXIT=0, num_warps=4, num_stages=1, splits=3)
PLAIN_SPLIT = dict(BLOCK_R=16, BLOCK_N=32, CI=0, EARLY_EXIT=0, num_warps=4, num_stages=1, splits=5)
# lazy insertion (EARLY_EXIT 3): one insertion a tile, the rest only when a row of the block needs them
GROUPED_LAZY = dict(GROUPED_PACK, EARLY_EXIT=3)
PLAIN_LAZY = dict(PLAIN_SPLIT, EARLY_EXIT=3)


def topk_lazy_case(dtype, config):
    """Lazy insertion returns the eager kernel's indices bit for bit: on random keys, on keys whose
    scores rise along the middle (every tile inserts several groups: the lazy branch is taken) and
    on repeated keys (exact ties)."""
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(3)
    B, H, Hkv, Q, M, D = 1, 4, 2, 5, 611, 64
    q = torch.randn(B, H, Q, D, dtype=dtype)
    rising = q[:, ::2].float().mean(2, keepdim=True) * torch.linspace(0.0, 2.0, M).view(1, 1, M, 1)
    keyset = {
        "random": torch.randn(B, Hkv, M, D, dtype=dtype),
        "rising": (rising + 0.05 * torch.randn(B, Hkv, M, D)).to(dtype),
        "repeated": torch.randn(B, Hkv, 7, D, dtype=dtype)[:, :, torch.randint(0, 7, (M,))],
    }
    out = {}
    for name, k in keyset.items():
        got = score_topk_triton(q, k, 4, _config=config)
        eager = score_topk_triton(q, k, 4, _config=dict(config, EARLY_EXIT=0))
        assert torch.equal(got, eager), f"{name} keys: lazy and eager insertion disagree"
        out[name] = topk_check(q, k, 4, got)["max_score_gap"]
    return out


def topk_overlap_case(dtype, config, names=("random", "rising", "repeated")):
    """The next tile's dot issued before this tile's merge (``OVERLAP``) returns the kernel's
    indices bit for bit: one forward's chunks (``grow``, splits with no full tile and with a partial
    one), keys in place through a block table, rising keys (every tile inserts) and repeated keys."""
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton, score_topk_triton

    torch.manual_seed(5)
    C, H, Hkv, Q, M, D = 3, 4, 2, 3, 301, 64
    q = torch.randn(C, H, Q, D, dtype=dtype)
    rising = q[:1, ::2].float().mean(2, keepdim=True) * torch.linspace(0.0, 2.0, M).view(1, 1, M, 1)
    keyset = {
        "random": torch.randn(1, Hkv, M, D, dtype=dtype),
        "rising": (rising + 0.05 * torch.randn(1, Hkv, M, D)).to(dtype),
        "repeated": torch.randn(1, Hkv, 7, D, dtype=dtype)[:, :, torch.randint(0, 7, (M,))],
    }
    on, off = dict(config, OVERLAP=True), dict(config, OVERLAP=False)  # off: whatever the default becomes
    gaps = {}
    for name in names:
        k = keyset[name]
        kb = k.expand(C, -1, -1, -1)
        for splits in (1, 5):
            cfg = dict(off, splits=splits)
            want = score_topk_triton(q, kb, 4, grow=61, _config=cfg)
            got = score_topk_triton(q, kb, 4, grow=61, _config=dict(on, splits=splits))
            assert torch.equal(got, want), f"{name} keys, {splits} splits: the overlapped kernel differs"
        blocks = torch.rand(1, Hkv, M // 16).topk(12, dim=2).indices.sort(dim=2).values
        want = score_topk_blocks_triton(q[:1], k, blocks, 16, 4, _config=off)
        got = score_topk_blocks_triton(q[:1], k, blocks, 16, 4, _config=on)
        assert torch.equal(got, want), f"{name} keys in blocks: the overlapped kernel differs"
        gaps[name] = topk_check(q[:1], k, 4, score_topk_triton(q[:1], k, 4, _config=on))["max_score_gap"]
    return gaps


def topk_blocks_rows32_case(dtype, config):
    """Level 2's table tiles with rows and offsets in int32 (the default where they fit) return the
    int64 path's rows bit for bit: blocks that divide the tile width and blocks that do not (tiles
    off the block grid), a forward's chunks (``grow``) with a partial block each, a partial tile."""
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton

    torch.manual_seed(6)
    out = {}
    for bs, n_blocks in ((16, 9), (6, 25)):
        C, H, Hkv, Q, M, D = 2, 4, 2, 3, 230, 64
        q = torch.randn(C, H, Q, D, dtype=dtype)
        k = torch.randn(1, Hkv, M + 5, D, dtype=dtype)[:, :, 2 : 2 + M].expand(C, -1, -1, -1)
        grow = 2 * bs
        first = M - (C - 1) * grow
        blocks = torch.rand(C, Hkv, first // bs).topk(n_blocks, dim=2).indices.sort(dim=2).values
        want = score_topk_blocks_triton(q, k, blocks, bs, 4, grow=grow, _config=dict(config, OFF32=False))
        got = score_topk_blocks_triton(q, k, blocks, bs, 4, grow=grow, _config=config)
        assert torch.equal(got, want), f"block size {bs}: int32 and int64 rows differ"
        out[f"bs{bs}"] = int(got.max())
    return out


def guarded_tensor(shape, dtype):
    """A contiguous CPU tensor whose last byte ends right before a page the process may not read
    (``mprotect(PROT_NONE)``): a kernel that loads past it under the interpreter dies with SIGSEGV
    instead of reading whatever the heap holds there. Linux / POSIX only."""
    import ctypes
    import mmap

    n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    page = mmap.PAGESIZE
    total = -(-n // page) * page + page
    buf = mmap.mmap(-1, total, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(ctypes.c_void_p(base + total - page), page, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    t = torch.frombuffer(buf, dtype=torch.uint8, count=n, offset=total - page - n)
    return t.view(dtype).view(shape), buf  # keep buf alive as long as the tensor


def topk_padding_rows_case(dtype):
    """The grouped refine walks rows in blocks (32 here) and its last block has rows past ``B*H*Q``:
    those rows must load nothing. ``q`` ends right before an unreadable page, where a padding row's
    address falls (batch entry 1 of a batch of one): a run on the GPU faulted there once ``q``'s
    allocation ended a mapping (RULER at 128K, five jobs sharing one card; BENCHMARKS.md run 20)."""
    from reattn_llm.kernels.triton_topk import score_topk_triton

    torch.manual_seed(5)
    q, keep = guarded_tensor((1, 2, 5, 16), dtype)  # 10 rows, one refine block of 32
    q.copy_(torch.randn(1, 2, 5, 16, dtype=dtype))
    k = torch.randn(1, 1, 97, 16, dtype=dtype)
    got = score_topk_triton(q, k, 4, _config=GROUPED_SMALL)
    info = topk_check(q, k, 4, got)
    del keep
    return info


def topk_cases():
    cases = {}
    for dt in (F16, F32):
        n = "f16" if dt == F16 else "f32"
        cases[f"topk_decode_M97_g3_{n}"] = lambda dt=dt: topk_case(2, 6, 2, 1, 97, 64, 4, dt)
        cases[f"topk_M1025_g4_d128_{n}"] = lambda dt=dt: topk_case(1, 8, 2, 16, 1025, 128, 4, dt)
        cases[f"topk_M1025_g8_grouped_default_{n}"] = lambda dt=dt: topk_case(1, 8, 1, 9, 1025, 64, 4, dt)
        cases[f"topk_M1025_g4_grouped_small_{n}"] = lambda dt=dt: topk_case(
            1, 8, 2, 16, 1025, 64, 4, dt, GROUPED_SMALL, transpose_q=True
        )
        cases[f"topk_M97_g3_grouped_ci1_while_{n}"] = lambda dt=dt: topk_case(
            2, 6, 2, 5, 97, 64, 4, dt, GROUPED_CI1
        )
        cases[f"topk_planted_grouped_{n}"] = lambda dt=dt: topk_planted_case(dt, GROUPED_SMALL)
        cases[f"topk_planted_packed_{n}"] = lambda dt=dt: topk_planted_case(dt, GROUPED_PACK)
        cases[f"topk_M1025_g3_packed_{n}"] = lambda dt=dt: topk_case(
            1, 6, 2, 11, 1025, 64, 4, dt, GROUPED_PACK
        )
        cases[f"topk_duplicate_keys_packed_{n}"] = lambda dt=dt: topk_dup_case(dt, GROUPED_PACK)
        cases[f"topk_planted_plain_{n}"] = lambda dt=dt: topk_planted_case(dt, PLAIN_SPLIT)
    cases["topk_lazy_packed_f16"] = lambda: topk_lazy_case(F16, GROUPED_LAZY)
    cases["topk_lazy_plain_f32"] = lambda: topk_lazy_case(F32, PLAIN_LAZY)
    cases["topk_overlap_packed_f16"] = lambda: topk_overlap_case(F16, GROUPED_LAZY)
    cases["topk_blocks_rows32_packed_f16"] = lambda: topk_blocks_rows32_case(F16, GROUPED_LAZY)
    cases["topk_blocks_rows32_plain_f32"] = lambda: topk_blocks_rows32_case(F32, PLAIN_SPLIT)
    cases["topk_overlap_plain_f32"] = lambda: topk_overlap_case(F32, PLAIN_LAZY, ("rising",))
    cases["topk_M1025_g7_ee0_splits_f16"] = lambda: topk_case(1, 7, 1, 5, 1025, 64, 4, F16, GROUPED_EE0)
    cases["topk_M97_d256_g2_f16"] = lambda: topk_case(1, 4, 2, 3, 97, 256, 4, F16)
    cases["topk_M97_d96_g1_f32"] = lambda: topk_case(1, 2, 2, 3, 97, 96, 4, F32)
    cases["topk_k16_f32"] = lambda: topk_case(1, 4, 4, 2, 300, 64, 16, F32, PLAIN_SPLIT)
    cases["topk_k16_grouped_f16"] = lambda: topk_case(1, 4, 1, 8, 300, 64, 16, F16, GROUPED_SMALL)
    cases["topk_k_gt_M_f32"] = lambda: topk_case(1, 3, 1, 2, 5, 64, 8, F32)
    cases["topk_k3_grouped_M33_f32"] = lambda: topk_case(1, 4, 1, 8, 33, 64, 3, F32, GROUPED_SMALL)
    # level 2 in place: decode (plain, split), a prompt chunk (grouped, packed), no partial block, d 96
    cases["topk_blocks_decode_split_f16"] = lambda: topk_blocks_case(
        2, 6, 2, 1, 203, 64, 8, 9, 4, F16, PLAIN_SPLIT
    )
    cases["topk_blocks_packed_f16"] = lambda: topk_blocks_case(
        1, 6, 2, 11, 301, 64, 16, 7, 4, F16, GROUPED_PACK
    )
    cases["topk_blocks_grouped_small_exact_blocks_f16"] = lambda: topk_blocks_case(
        1, 8, 2, 16, 256, 64, 32, 3, 8, F16, GROUPED_SMALL
    )
    cases["topk_blocks_d96_f32"] = lambda: topk_blocks_case(1, 4, 1, 3, 150, 96, 8, 6, 5, F32)
    # exact ties (duplicate keys): the same indices whatever the splits, and in a batch as alone
    cases["topk_ties_split_independent_default_f16"] = lambda: topk_ties_case(F16, {})  # packed, CI 4
    cases["topk_ties_batch_as_alone_default_f16"] = lambda: topk_ties_case(F16, {}, grow=40)
    # a forward's chunks as one batch (grow): default prefill config, packed with splits, plain with splits
    cases["topk_grow_chunks_default_f16"] = lambda: topk_grow_case(2, 6, 2, 24, 260, 64, 4, 24, F16)
    cases["topk_grow_chunks_packed_f16"] = lambda: topk_grow_case(
        3, 6, 2, 11, 250, 64, 4, 60, F16, GROUPED_PACK
    )
    cases["topk_grow_chunks_plain_split_f32"] = lambda: topk_grow_case(
        3, 4, 4, 2, 301, 96, 5, 100, F32, PLAIN_SPLIT
    )
    # 256-row blocks of 64-key tiles (the A/B's half-the-L2-traffic variant): exact top-k still
    cases["topk_r256_n64_lazy_f16"] = lambda: topk_case(
        1, 8, 2, 70, 700, 64, 4, F16, dict(GROUPED_LAZY, BLOCK_R=256, BLOCK_N=64, splits=None)
    )
    return cases


# ----------------------------------------------------------------------------- attention


def attn_inputs(
    B, H, Hkv, Q, T, N, D, dtype, R=None, seed=0, shuffle=True, transpose_q=False, bare_prefix=False
):
    torch.manual_seed(seed)
    R = D if R is None else R
    if transpose_q:
        q = torch.randn(B, Q, H, D, dtype=dtype).transpose(1, 2)
    else:
        q = torch.randn(B, H, Q, D, dtype=dtype)
    k_buf = torch.randn(B, Hkv, T + 5, D, dtype=dtype)
    v_buf = torch.randn(B, Hkv, T + 5, D, dtype=dtype)
    kc, vc = k_buf[:, :, :T], v_buf[:, :, :T]  # views of larger buffers, like the cache
    idx = torch.stack(
        [torch.randperm(T)[:N] if shuffle else torch.randperm(T)[:N].sort().values for _ in range(B)]
    )
    kpos = torch.arange(N).expand(B, N).clone()
    if N > 12:  # padding entries (position -1) inside the scope; positions stay a permutation otherwise
        kpos[:, N // 3 : N // 3 + 3] = -1
    if bare_prefix:  # every key before the chunk is padding: a query sees only its own chunk
        kpos[:, : N - Q] = -1
    qpos = (torch.arange(Q) + N - Q).expand(B, Q).clone()  # bottom-right: the chunk is the scope's tail
    cos, sin = rope_tables(N + 3, R)
    return q, kc, vc, idx, kpos, qpos, cos, sin


def attn_case(
    B,
    H,
    Hkv,
    Q,
    T,
    N,
    D,
    dtype,
    config=None,
    R=None,
    transpose_q=False,
    shuffle=True,
    poison=False,
    chunk_tail=False,
    bare_prefix=False,
):
    """Kernel and twin against fp64. ``poison``: the padding entries' rows hold NaN (as rows not
    written yet may), and both must give what they give with those rows finite. ``chunk_tail``:
    the kernel is given the promise (the inputs keep it: the chunk is the scope's tail, its
    padding lies before the chunk)."""
    from reattn_llm.kernels.torch_ops import scope_attention_torch
    from reattn_llm.kernels.triton_attention import scope_attention_triton

    args = attn_inputs(
        B, H, Hkv, Q, T, N, D, dtype, R=R, transpose_q=transpose_q, shuffle=shuffle, bare_prefix=bare_prefix
    )
    if chunk_tail:
        kpos, qpos = args[4], args[5]
        assert bool((kpos[:, N - Q :] == qpos).all()) and bool((kpos[:, : N - Q] < qpos[:, :1]).all())
    scale = D**-0.5

    def kernel(*a):  # the twin ignores the promise: it stays the reference
        return scope_attention_triton(*a, chunk_tail, _config=config)

    if poison:
        _q, kc, vc, idx, kpos = args[:5]
        clean = kernel(*args, scale), scope_attention_torch(*args, scale)
        for b in range(B):  # rows used only by padding (the indices are a permutation)
            rows = idx[b][kpos[b] < 0]
            kc[b, :, rows] = float("nan")
            vc[b, :, rows] = float("nan")
        assert bool(torch.isnan(kc).any()) and bool(torch.isnan(vc).any())
        dirty = kernel(*args, scale), scope_attention_torch(*args, scale)
        for a, z in zip(clean, dirty, strict=True):
            assert bool(torch.isfinite(z).all()) and torch.equal(a, z), "a padding row reached the output"
        return {"poisoned_rows": int((kpos < 0).sum())}
    got = kernel(*args, scale)
    assert got.shape == (B, Q, H, D) and got.dtype == dtype
    assert bool(torch.isfinite(got).all()), "non-finite output"
    twin = scope_attention_torch(*args, scale)
    ref = scope_attention_torch(*[a.double() if a.is_floating_point() else a for a in args], scale)
    e_k = ((got.double() - ref).norm() / ref.norm()).item()
    e_t = ((twin.double() - ref).norm() / ref.norm()).item()
    assert e_k <= 2 * e_t + 1e-9, f"kernel error {e_k:.3g} > 2x twin error {e_t:.3g}"
    return {"err_kernel": e_k, "err_twin": e_t}


# the kernel of triton_attention.py on prefill chunks (FLASH=False: the benchmarks' baseline)
PREFILL_SMALL = dict(
    FLASH=False, BLOCK_R=32, BLOCK_N=32, CAUSAL_SKIP=True, num_warps=4, num_stages=1, splits=1
)
PREFILL_PREROT = dict(
    FLASH=False, BLOCK_R=32, BLOCK_N=16, CAUSAL_SKIP=False, PREROT=True, num_warps=4, num_stages=1, splits=2
)
PREFILL_SPLIT = dict(
    FLASH=False, BLOCK_R=32, BLOCK_N=16, CAUSAL_SKIP=False, num_warps=4, num_stages=1, splits=3
)
# the flash path (triton_flash.py) at small tiles, one split or several
FLASH_SMALL = dict(FLASH=True, BLOCK_R=32, BLOCK_N=16, num_warps=4, num_stages=1, splits=1)
FLASH_SPLIT = dict(FLASH=True, BLOCK_R=16, BLOCK_N=16, num_warps=4, num_stages=1, splits=3)
# the prefix before the chunk through cudnn_prefix's torch twin (cuDNN's contract), then the kernel
FLASH_PREFIX = dict(FLASH_SPLIT, PREFIX="torch")


def attn_cases():
    cases = {}
    for dt in (F16, F32):
        n = "f16" if dt == F16 else "f32"
        cases[f"attn_decode_N97_g3_{n}"] = lambda dt=dt: attn_case(2, 6, 2, 1, 300, 97, 64, dt)
        cases[f"attn_chunk16_N1025_g4_d128_{n}"] = lambda dt=dt: attn_case(1, 8, 2, 16, 1500, 1025, 128, dt)
        cases[f"attn_prefill_default_g8_{n}"] = lambda dt=dt: attn_case(
            1, 8, 1, 17, 400, 300, 64, dt, transpose_q=True
        )
        cases[f"attn_causal_skip_g3_{n}"] = lambda dt=dt: attn_case(
            1, 3, 1, 40, 400, 200, 64, dt, PREFILL_SMALL
        )
    cases["attn_prerot_split_g4_f16"] = lambda: attn_case(2, 8, 2, 12, 400, 150, 64, F16, PREFILL_PREROT)
    cases["attn_prerot_d128_f32"] = lambda: attn_case(1, 4, 1, 20, 400, 150, 128, F32, PREFILL_PREROT)
    cases["attn_split_g7_f16"] = lambda: attn_case(1, 7, 1, 9, 400, 200, 64, F16, PREFILL_SPLIT)
    cases["attn_d256_g2_f16"] = lambda: attn_case(1, 4, 2, 5, 300, 97, 256, F16)
    cases["attn_nan_padding_rows_decode_f32"] = lambda: attn_case(2, 6, 2, 1, 300, 97, 64, F32, poison=True)
    cases["attn_nan_padding_rows_prefill_f16"] = lambda: attn_case(
        1, 3, 1, 40, 400, 200, 64, F16, PREFILL_SMALL, poison=True
    )
    cases["attn_d96_g1_f32"] = lambda: attn_case(1, 2, 2, 4, 300, 97, 96, F32)
    cases["attn_partial_rotary_falls_back_f32"] = lambda: attn_case(1, 4, 2, 3, 200, 97, 64, F32, R=32)
    cases["attn_sorted_b2_f16"] = lambda: attn_case(
        2, 4, 1, 8, 300, 130, 64, F16, PREFILL_SMALL, shuffle=False
    )
    # flash path: with and without the chunk_tail promise, awkward sizes, splits, NaN padding rows
    cases["flash_tail_g4_d128_f16"] = lambda: attn_case(
        1, 8, 2, 24, 400, 181, 128, F16, FLASH_SMALL, chunk_tail=True
    )
    cases["flash_mask_g3_d64_f16"] = lambda: attn_case(2, 6, 2, 23, 400, 157, 64, F16, FLASH_SMALL)
    cases["flash_tail_split_g7_f32"] = lambda: attn_case(
        1, 7, 1, 19, 400, 203, 64, F32, FLASH_SPLIT, chunk_tail=True
    )
    cases["flash_tail_d96_g1_b2_f16"] = lambda: attn_case(
        2, 2, 2, 33, 300, 120, 96, F16, FLASH_SPLIT, chunk_tail=True, transpose_q=True
    )
    cases["flash_tail_d256_g2_f16"] = lambda: attn_case(
        1, 4, 2, 12, 300, 97, 256, F16, FLASH_SMALL, chunk_tail=True
    )
    cases["flash_default_config_tail_f16"] = lambda: attn_case(
        1, 9, 3, 30, 400, 250, 64, F16, chunk_tail=True
    )
    cases["flash_nan_padding_rows_tail_f16"] = lambda: attn_case(
        1, 3, 1, 40, 400, 200, 64, F16, FLASH_SMALL, poison=True, chunk_tail=True
    )
    cases["flash_nan_padding_rows_mask_f32"] = lambda: attn_case(
        1, 4, 2, 21, 300, 100, 64, F32, FLASH_SPLIT, poison=True
    )
    # the prefix split (cuDNN's part by its twin): odd row blocks, d 96, batch 2, NaN padding rows
    cases["flash_prefix_g4_d128_f16"] = lambda: attn_case(
        1, 8, 2, 24, 400, 181, 128, F16, FLASH_PREFIX, chunk_tail=True
    )
    cases["flash_prefix_d96_g1_b2_f32"] = lambda: attn_case(
        2, 2, 2, 33, 300, 120, 96, F32, FLASH_PREFIX, chunk_tail=True, transpose_q=True
    )
    cases["flash_prefix_nan_padding_rows_f16"] = lambda: attn_case(
        1, 3, 1, 40, 400, 200, 64, F16, FLASH_PREFIX, poison=True, chunk_tail=True
    )
    cases["flash_prefix_all_padding_f16"] = lambda: attn_case(
        1, 4, 2, 20, 300, 90, 64, F16, FLASH_PREFIX, chunk_tail=True, bare_prefix=True
    )
    return cases


def rotate_one_case(shape, D, dtype, transpose=False):
    """``kernels.rotate_one`` on Triton (one launch) against its twin and ``method.rope.rotate_expected``
    (the readable ops the torch backend keeps): bit for bit, strided queries included."""
    from reattn_llm.kernels import rotate_one, rotate_one_torch
    from reattn_llm.method.rope import rotate_expected

    B, H, S = shape
    torch.manual_seed(3)
    q = (
        torch.randn(B, S, H, D, dtype=dtype).transpose(1, 2)
        if transpose
        else torch.randn(B, H, S, D, dtype=dtype)
    )
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).double() / D))
    ang = torch.outer(torch.arange(100, 200).double(), inv)
    cos = torch.cat([ang.cos(), ang.cos()], -1).mean(0).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).mean(0).float()
    got = rotate_one(q, cos, sin, "triton")
    twin = rotate_one_torch(q, cos, sin)
    ref = rotate_expected(q, cos, sin)
    assert got.shape == q.shape and got.dtype == dtype
    assert torch.equal(got, twin) and torch.equal(twin, ref), (
        (got.float() - twin.float()).abs().max().item(),
        (twin.float() - ref.float()).abs().max().item(),
    )
    return {"elements": got.numel()}


def rotate_cases():
    return {
        "rotate_one_d128_f16": lambda: rotate_one_case((2, 4, 70), 128, F16),
        "rotate_one_d96_transposed_f32": lambda: rotate_one_case((1, 3, 33), 96, F32, transpose=True),
        "rotate_one_d64_transposed_f16": lambda: rotate_one_case((3, 9, 17), 64, F16, transpose=True),
    }


# ----------------------------------------------------------------------------- level-1 block rank


def rank_blocks_case(B, H, Hkv, Q, NB, D, dtype, config=None, seed=0, transpose_q=False):
    """Two-level selection's level 1: kernel and twin against fp64 (same rounded inputs), within
    the fp32 accumulation error of the two D-term dots (doubled by the row normalisation)."""
    from reattn_llm.kernels.torch_ops import rank_blocks_torch
    from reattn_llm.kernels.triton_blocks import rank_blocks_triton
    from reattn_llm.kv.summaries import block_summaries

    torch.manual_seed(seed)
    q = (
        torch.randn(B, Q, H, D, dtype=dtype).transpose(1, 2)
        if transpose_q
        else torch.randn(B, H, Q, D, dtype=dtype)
    )
    summ = block_summaries(torch.randn(B, Hkv, NB * 8, D, dtype=dtype), 8)  # [B, Hkv, NB, 2D]
    got = rank_blocks_triton(q, summ, _config=config)
    assert got.shape == (B, Hkv, NB) and got.dtype == torch.float32, (tuple(got.shape), got.dtype)
    ref = rank_blocks_torch(q.double(), summ.double())
    twin = rank_blocks_torch(q, summ)
    tol = 2 * 4 * 3 * D * 2.0**-24 * D * q.abs().max().item() * summ.abs().max().item()
    err, err_t = (got.double() - ref).abs().max().item(), (twin.double() - ref).abs().max().item()
    assert err <= tol, f"kernel differs from fp64 by {err:.3g} (tol {tol:.3g}; twin {err_t:.3g})"
    assert bool((ref.amax(-1) == 0).all())  # some row's best block: rank 0
    return {"max_err": err, "twin_err": err_t}


def top_blocks_case(B, Hkv, n, c, ties=False, seed=0):
    """The C best-ranked blocks per KV head, increasing, ties to the lower block: the twin's exactly
    (with many equal ranks, -inf and -0.0 among them when ``ties``)."""
    from reattn_llm.kernels.torch_ops import top_blocks_torch
    from reattn_llm.kernels.triton_blocks import top_blocks_triton

    torch.manual_seed(seed)
    rank = -torch.rand(B, Hkv, n) * 3  # ranks are <= 0 (each row's best block scores 0)
    if ties:
        rank = (rank * 4).round() / 4  # 13 distinct values
        rank[..., ::7] = float("-inf")
        rank[..., 1::5] = -0.0
        rank[..., 2::5] = 0.0
    got = top_blocks_triton(rank, c)
    twin = top_blocks_torch(rank, c)
    assert got.shape == (B, Hkv, c) and got.dtype == torch.int64
    assert torch.equal(got, twin), "kernel and twin pick different blocks"
    return {}


def candidate_blocks_case(B, H, Hkv, Q, NB, D, c, dtype, config=None, seed=0):
    """A decode step's level 1 fused (pass 1 keeps the rows' scores, the candidates kernel ranks from
    them): the blocks of the two-kernel path and of the twin, exactly."""
    from reattn_llm.kernels.torch_ops import candidate_blocks_torch
    from reattn_llm.kernels.triton_blocks import (
        candidate_blocks_triton,
        rank_blocks_triton,
        top_blocks_triton,
    )
    from reattn_llm.kv.summaries import block_summaries

    torch.manual_seed(seed)
    q = torch.randn(B, H, Q, D, dtype=dtype)
    summ = block_summaries(torch.randn(B, Hkv, NB * 8, D, dtype=dtype), 8)
    got = candidate_blocks_triton(q, summ, c, _config=config)
    unfused = top_blocks_triton(rank_blocks_triton(q, summ, _config=config), c)
    assert got.shape == (B, Hkv, c) and got.dtype == torch.int64
    assert torch.equal(got, unfused), "fused and two-kernel level 1 pick different blocks"
    twin = candidate_blocks_torch(q, summ, c)
    return {"same_as_twin": bool(torch.equal(got, twin))}


def rank_blocks_errors_case():
    from reattn_llm.kernels.triton_blocks import rank_blocks_triton

    q, summ = torch.randn(1, 4, 3, 64), torch.randn(1, 2, 5, 128)
    bad = [
        lambda: rank_blocks_triton(q, torch.randn(1, 3, 5, 128)),  # 4 heads over 3 KV heads
        lambda: rank_blocks_triton(q, torch.randn(1, 2, 5, 192)),  # not 2D
        lambda: rank_blocks_triton(q.long(), summ),
        lambda: rank_blocks_triton(q[0], summ),
    ]
    expect_value_errors(bad)
    empty = rank_blocks_triton(q, torch.randn(1, 2, 0, 128))
    assert empty.shape == (1, 2, 0)
    return {}


SMALL_TILES = dict(BR=16, BN=16, num_warps=2)
SPLIT_TILES = dict(BR=16, BN=16, num_warps=2, splits=5)


def two_level_grow_case(C, H, Hkv, Q, M, D, bs, c, top_k, grow, dtype, config=None, seed=0):
    """Both levels of two-level selection for one forward's C chunks as a batch (``grow`` rows, whole
    blocks): level 1 ranks each chunk's own blocks (the rest ``-inf``) and level 2 scores each chunk's
    candidates and its own partial block, every row equal to that chunk alone, bit for bit."""
    from reattn_llm.kernels.torch_ops import score_topk_blocks_torch, top_blocks_torch
    from reattn_llm.kernels.triton_blocks import rank_blocks_triton
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton
    from reattn_llm.kv.summaries import block_summaries

    torch.manual_seed(seed)
    q = torch.randn(1, H, C * Q, D, dtype=dtype)[0].unflatten(1, (C, Q)).transpose(0, 1)
    keys = torch.randn(1, Hkv, M + 11, D, dtype=dtype)[:, :, 3 : 3 + M]
    summ = block_summaries(keys, bs)  # [1, Hkv, M // bs, 2D]
    n, gb = summ.shape[2], grow // bs
    rank = rank_blocks_triton(q, summ.expand(C, -1, -1, -1), gb, _config=config)
    blocks = top_blocks_torch(rank, c)
    got = score_topk_blocks_triton(q, keys.expand(C, -1, -1, -1), blocks, bs, top_k, grow=grow)
    twin = score_topk_blocks_torch(q, keys.expand(C, -1, -1, -1), blocks, bs, top_k, grow)
    for b in range(C):
        nb, mb = n - (C - 1 - b) * gb, M - (C - 1 - b) * grow
        alone = rank_blocks_triton(q[b : b + 1], summ[:, :, :nb], _config=config)
        assert torch.equal(rank[b : b + 1, :, :nb], alone), f"chunk {b}: level 1 differs from alone"
        assert bool((rank[b, :, nb:] == float("-inf")).all()), f"chunk {b} ranks blocks past its middle"
        one = score_topk_blocks_triton(q[b : b + 1], keys[:, :, :mb], blocks[b : b + 1], bs, top_k)
        assert torch.equal(got[b : b + 1], one), f"chunk {b}: level 2 differs from alone"
    assert torch.equal(got, twin), "level 2 kernel and twin differ"  # random keys: no ties
    k4 = keys.expand(C, -1, -1, -1)
    expect_value_errors(
        [
            lambda: score_topk_blocks_triton(q, k4, blocks, bs, top_k, grow=grow + 1),  # not whole blocks
            lambda: score_topk_blocks_triton(q, k4, top_blocks_torch(rank, n), bs, top_k, grow=grow),
            lambda: rank_blocks_triton(q, summ.expand(C, -1, -1, -1), n),
        ]
    )
    return {"blocks_first": n - (C - 1) * gb, "blocks_last": n}


def rank_blocks_cases():
    cases = {"rank_blocks_argument_errors": rank_blocks_errors_case}
    for dt in (F16, F32):
        n = "f16" if dt == F16 else "f32"
        cases[f"rank_blocks_NB97_g3_{n}"] = lambda dt=dt: rank_blocks_case(2, 6, 2, 7, 97, 64, dt)
        cases[f"rank_blocks_NB1_d96_small_tiles_{n}"] = lambda dt=dt: rank_blocks_case(
            1, 4, 1, 5, 1, 96, dt, SMALL_TILES
        )
        cases[f"rank_blocks_NB50_d128_small_tiles_tq_{n}"] = lambda dt=dt: rank_blocks_case(
            1, 8, 2, 9, 50, 128, dt, SMALL_TILES, transpose_q=True
        )
    # Gemma 3's head dim (32-row tiles)
    cases["rank_blocks_NB9_d256_f32"] = lambda: rank_blocks_case(1, 2, 1, 3, 9, 256, F32)
    cases["top_blocks_n1000_c77"] = lambda: top_blocks_case(2, 3, 1000, 77)
    cases["top_blocks_ties_n4097_c508"] = lambda: top_blocks_case(1, 2, 4097, 508, ties=True)
    cases["top_blocks_ties_n8192_c2000"] = lambda: top_blocks_case(1, 1, 8192, 2000, ties=True)
    cases["top_blocks_ties_n33_all_and_one"] = lambda: (
        top_blocks_case(1, 1, 33, 33, ties=True),
        top_blocks_case(2, 1, 33, 1, ties=True),
    )[0]
    cases["candidate_blocks_decode_splits_f16"] = lambda: candidate_blocks_case(
        2, 6, 2, 1, 300, 64, 77, F16, SPLIT_TILES
    )
    cases["candidate_blocks_decode_f32"] = lambda: candidate_blocks_case(1, 8, 2, 1, 97, 128, 30, F32)
    cases["candidate_blocks_two_queries_d96_f16"] = lambda: candidate_blocks_case(1, 8, 2, 2, 50, 96, 50, F16)
    # a decode step's few rows: the blocks split across programs, each row's best merged over splits
    cases["rank_blocks_decode_splits_f16"] = lambda: rank_blocks_case(1, 4, 2, 1, 203, 64, F16, SPLIT_TILES)
    cases["rank_blocks_decode_auto_splits_f32"] = lambda: rank_blocks_case(
        2, 8, 2, 1, 300, 64, F32, SMALL_TILES
    )
    # a forward's chunks as one batch: plain level 2 with split level 1, grouped level 2, d 96
    cases["two_level_grow_plain_splits_f16"] = lambda: two_level_grow_case(
        3, 6, 2, 8, 301, 64, 8, 5, 4, 16, F16, SPLIT_TILES
    )
    cases["two_level_grow_grouped_f16"] = lambda: two_level_grow_case(2, 6, 2, 24, 200, 64, 8, 6, 4, 24, F16)
    cases["two_level_grow_d96_f32"] = lambda: two_level_grow_case(2, 4, 1, 5, 203, 96, 16, 3, 5, 32, F32)
    return cases


# ----------------------------------------------------------------------------- argument checks


def errors_case():
    from reattn_llm.kernels.triton_attention import scope_attention_triton
    from reattn_llm.kernels.triton_topk import score_topk_blocks_triton, score_topk_triton

    q = torch.randn(1, 4, 2, 64)
    k = torch.randn(1, 3, 10, 64)
    k2, tab = torch.randn(1, 2, 10, 64), torch.zeros(1, 2, 2, dtype=torch.long)
    bad = [
        lambda: score_topk_blocks_triton(q, k2, tab.float(), 4, 4),  # float block table
        lambda: score_topk_blocks_triton(q, k2, tab[:, :1], 4, 4),  # a table for one KV head of two
        lambda: score_topk_blocks_triton(q, k2, tab, 6, 4),  # 2 blocks of 6 in 10 rows
        lambda: score_topk_blocks_triton(q, k2, tab, 0, 4),
        lambda: score_topk_triton(q, k, 4),  # 4 heads over 3 KV heads
        lambda: score_topk_triton(q, torch.randn(1, 2, 10, 32), 4),
        lambda: score_topk_triton(q, torch.randn(1, 2, 10, 64, dtype=F16), 4),
        lambda: score_topk_triton(q.long(), torch.randn(1, 2, 10, 64).long(), 4),
        lambda: score_topk_triton(q, torch.randn(1, 2, 10, 64), 0),
        lambda: scope_attention_triton(
            q,
            torch.randn(1, 2, 10, 64),
            torch.randn(1, 2, 10, 64),
            torch.zeros(1, 5, dtype=torch.long),
            torch.zeros(1, 4, dtype=torch.long),
            torch.zeros(1, 2, dtype=torch.long),
            torch.ones(8, 64),
            torch.zeros(8, 64),
            0.1,
        ),
    ]
    expect_value_errors(bad)
    empty = score_topk_triton(q, torch.randn(1, 2, 0, 64), 4)
    assert empty.shape == (1, 4, 2, 0)
    assert score_topk_blocks_triton(q, torch.randn(1, 2, 8, 64), tab[:, :, :0], 4, 4).shape == (1, 4, 2, 0)
    return {}


# ----------------------------------------------------------------------------- span votes


def spans_case(B, shape, M, keep, span, seed=0, cluster=None, strided=False, spaced=False):
    """A prompt chunk's span votes: the kernel equals the twin bit for bit. ``cluster``: the hits
    fall in a few narrow bands (ties between neighbouring centres, as real hits give); ``spaced``:
    on every ``span``-th row, so every one is a centre and the kernel's list of centres is full."""
    from reattn_llm.kernels.torch_select import rank_spans_torch
    from reattn_llm.kernels.triton_spans import rank_spans_triton

    g = torch.Generator().manual_seed(seed)
    if cluster is None:
        hits = torch.randint(0, M, (B, *shape), generator=g)
    else:
        centres = torch.randint(0, M, (B, cluster), generator=g)
        pick = torch.randint(0, cluster, (B, int(torch.tensor(shape).prod())), generator=g)
        off = torch.randint(-span, span + 1, pick.shape, generator=g)
        hits = (centres.gather(1, pick) + off).clamp(0, M - 1).reshape(B, *shape)
    if spaced:
        hits = (torch.arange(hits.numel()) * span % (-(-M // span) * span)).reshape(hits.shape)
    if strided:  # a view with a gap between batch entries
        hits = torch.cat([hits, hits], dim=-1)[..., : shape[-1]]
    got = rank_spans_triton(hits, M, keep, span)
    want = rank_spans_torch(hits, M, keep, span)
    for a, w, what in zip(got, want, ("centres", "votes"), strict=True):
        assert a.dtype == torch.int64 and a.shape == w.shape, (what, a.shape, w.shape)
        assert torch.equal(a, w), f"{what} differ: {a.tolist()} vs {w.tolist()}"
    if spaced:  # every span-th row a centre: the list is full, the best kept
        assert int((got[0] < M).sum()) == B * keep
    return {"spans": int((got[0] < M).sum()), "votes_max": int(got[1].max())}


def grown_spans_case(C, shape, M, keep, span, grow, G, L, Q, seed=0):
    """One forward's C chunks as a batch (``grow``): chunk b's middle is ``M - (C - 1 - b)·grow``. The
    span votes and the scope from them (kernels, and twins with ``grow``) equal each chunk's alone,
    bit for bit."""
    from reattn_llm.kernels.torch_select import rank_spans_torch, scope_from_centres_torch
    from reattn_llm.kernels.triton_select import scope_from_centres_triton
    from reattn_llm.kernels.triton_spans import rank_spans_triton

    g = torch.Generator().manual_seed(seed)
    first = M - (C - 1) * grow
    sizes = [first + b * grow for b in range(C)]
    rows = []
    for mb in sizes:  # each chunk's hits lie in its own middle, clustered as real hits are
        centres = torch.randint(0, mb, (1, 5), generator=g)
        pick = torch.randint(0, 5, (1, int(torch.tensor(shape).prod())), generator=g)
        off = torch.randint(-span, span + 1, pick.shape, generator=g)
        rows.append((centres.gather(1, pick) + off).clamp(0, mb - 1).reshape(1, *shape))
    hits = torch.cat(rows)
    got = rank_spans_triton(hits, M, keep, span, grow)
    twin = rank_spans_torch(hits, M, keep, span, grow)
    total = G + M + L
    scope = scope_from_centres_triton(got[0], M, span, G, L, total, Q, grow)
    scope_twin = scope_from_centres_torch(got[0], M, span, G, L, total, Q, grow)
    for b, mb in enumerate(sizes):
        alone = rank_spans_triton(hits[b : b + 1], mb, keep, span)
        for a, w, what in zip(got, alone, ("centres", "votes"), strict=True):
            assert torch.equal(a[b : b + 1], w[:, : a.shape[1]]), (
                f"chunk {b} {what}: {a[b].tolist()} vs {w.tolist()}"
            )
        one = scope_from_centres_triton(got[0][b : b + 1], mb, span, G, L, total - M + mb, Q)
        for name, a, w in zip(("gather_idx", "key_pos", "q_pos", "middle", "valid"), scope, one, strict=True):
            assert torch.equal(a[b : b + 1], w), f"chunk {b} {name} differs from alone"
    for a, w in zip((*got, *scope), (*twin, *scope_twin), strict=True):
        assert torch.equal(a, w), "kernel and twin differ"
    expect_value_errors(
        [
            lambda: rank_spans_triton(hits, M, keep, span, -1),
            lambda: scope_from_centres_triton(got[0], M, span, G, L, total, Q, M),
        ]
    )
    return {"spans_first": int((got[0][0] < first).sum()), "spans_last": int((got[0][-1] < M).sum())}


def span_scope_case(B, H, Q, k, M, n_spans, span, G, L, seed=0):
    """A prompt chunk's scope from span votes in kernels (rank_spans_triton, scope_from_centres_triton)
    equals method.selection's path (rank_spans, sort, expand_spans, build_scope) bit for bit."""
    from reattn_llm.kernels.triton_select import scope_from_centres_triton
    from reattn_llm.kernels.triton_spans import rank_spans_triton
    from reattn_llm.method.selection import build_scope, expand_spans, rank_spans

    g = torch.Generator().manual_seed(seed)
    centres = torch.randint(0, M, (B, 6), generator=g)
    pick = torch.randint(0, 6, (B, H * Q * k), generator=g)
    hits = (centres.gather(1, pick) + torch.randint(-2 * span, 2 * span, pick.shape, generator=g)).clamp(
        0, M - 1
    )
    hits = hits.reshape(B, H, Q, k)
    total = G + M + L
    ranked, _votes = rank_spans_triton(hits, M, n_spans, span)
    got = scope_from_centres_triton(ranked, M, span, G, L, total, Q)
    c, _ = rank_spans(hits, M, n_spans, span)
    sel, valid = expand_spans(c.sort(dim=1).values, M, span)
    want = build_scope(sel, valid, total, Q, G, L, B, hits.device)
    for name, a, w in zip(
        ("gather_idx", "key_pos", "q_pos", "middle", "middle_valid"),
        got,
        (want.gather_idx, want.key_pos, want.q_pos, want.middle, want.middle_valid),
        strict=True,
    ):
        assert a.shape == w.shape and torch.equal(a, w), f"{name} differs"
    return {"n": int(got[0].shape[1]), "in_scope": int((got[1] >= 0).sum())}


def e2e_prompt_kernels_case():
    """A small patched model (fp32) with ``backend="triton"``, every kernel interpreted (scoring, span
    votes, scope from centres, flash attention with the chunk's promise, the fused decode selection),
    against ``backend="torch"``: the same remembered centres, logits within fp32 rounding."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_models import distinct_ids, prompt_then_steps, tiny_model

    from reattn_llm import ReAttentionConfig
    from reattn_llm.method import planning

    ids = distinct_ids(1, 93, seed=7)
    runs = {}
    inner = planning.scope_from_centres
    for backend in ("torch", "triton"):
        model = tiny_model("llama", heads=6, kv_heads=2, head_dim=16, layers=2, window=128, seed=5)
        cfg = ReAttentionConfig(
            global_size=4, local_size=32, span_size=4, max_spans=5, top_k=2, chunk_size=16, backend=backend
        )
        calls = []
        planning.scope_from_centres = lambda *a, calls=calls, **kw: calls.append(a[-2]) or inner(*a, **kw)
        try:
            runs[backend] = (*prompt_then_steps(model, cfg, ids, 90), calls)
        finally:
            planning.scope_from_centres = inner
    (want, want_pins, none), (got, got_pins, calls) = runs["torch"], runs["triton"]
    assert not none and calls, "the prompt chunks' kernel path ran only on the Triton backend"
    for p, q in zip(got_pins, want_pins, strict=True):
        assert torch.equal(p, q), f"remembered centres differ: {p} vs {q}"
    err = (got - want).abs().max().item()
    assert err <= 1e-4 * want.abs().max().item(), f"logits differ by {err:.3g}"
    return {"prompt_chunks": len(calls), "max_logit_diff": err}


def joined_forwards_case(selection: str):
    """A small patched model (fp32, ``backend="triton"``, every kernel interpreted) prefilled in
    forwards of four whole chunks (``PatchState.running``: one expected-distance rotation a
    forward, the chunks' scope attention in one launch over K/V with a zero batch stride; the chunks
    past the tiled middles select as one batch, ``planning.plan_chunks``) against a forward per
    chunk: the same logits, bit for bit."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_models import distinct_ids, prefill_in_forwards, tiny_model

    from reattn_llm import ReAttentionConfig

    cfg = ReAttentionConfig(
        global_size=4,
        local_size=64,
        span_size=8,
        max_spans=8,
        top_k=2,
        chunk_size=32,
        backend="triton",
        selection=selection,
        candidate_blocks=8,
    )
    from reattn_llm.method import planning

    ids = distinct_ids(1, 264, seed=2)  # 8 whole chunks (two joined forwards), the question
    logits, runs = {}, []
    inner = planning._batched_scopes
    planning._batched_scopes = lambda *a: runs.append(len(a[4])) or inner(*a)
    try:
        for tokens in (32, 128):
            model = tiny_model("llama", layers=2, window=512, seed=1)
            logits[tokens] = prefill_in_forwards(model, cfg, ids, 256, tokens)[0]
    finally:
        planning._batched_scopes = inner
    assert torch.equal(logits[32], logits[128]), float((logits[32] - logits[128]).abs().max())
    # the second forward's four chunks (middles past the 64 tokens the spans tile) in one batch a layer
    assert runs == [4, 4], runs
    return {"max_logit_diff": 0.0, "batched_runs": runs}


def spans_cases():
    return {
        "e2e_prompt_kernels_tiny_model": e2e_prompt_kernels_case,
        "e2e_joined_forwards_exact": lambda: joined_forwards_case("exact"),
        "e2e_joined_forwards_two_level": lambda: joined_forwards_case("two_level"),
        "span_scope_b2_equals_method_path": lambda: span_scope_case(2, 3, 8, 2, 2000, 9, 8, 4, 40),
        "span_scope_span32_equals_method_path": lambda: span_scope_case(1, 4, 16, 4, 5000, 31, 32, 32, 100),
        "spans_random_b2_span8": lambda: spans_case(2, (3, 5, 4), 1000, 9, 8),
        "spans_clustered_span32": lambda: spans_case(1, (9, 40, 4), 4097, 31, 32, cluster=12),
        "spans_odd_span7_strided": lambda: spans_case(2, (4, 6), 733, 5, 7, cluster=5, strided=True),
        "spans_span1": lambda: spans_case(1, (50,), 300, 20, 1, cluster=3),
        "spans_every_slot_a_centre": lambda: spans_case(2, (3, 126), 1001, 40, 8, spaced=True),
        "spans_every_slot_kept": lambda: spans_case(1, (3, 126), 1001, 126, 8, spaced=True),
        "spans_few_hits_many_spans": lambda: spans_case(1, (2, 2), 5000, 100, 16),
        "spans_tiled_fits_budget": lambda: spans_case(2, (3, 7), 90, 12, 8),
        "spans_errors": spans_errors_case,
        "spans_grow_chunks_span8": lambda: grown_spans_case(4, (3, 8, 2), 900, 9, 8, 64, 4, 40, 8),
        "spans_grow_chunks_tiled_first": lambda: grown_spans_case(3, (2, 5, 2), 300, 6, 16, 110, 2, 20, 5),
    }


def spans_errors_case():
    from reattn_llm.kernels.triton_spans import rank_spans_triton

    hits = torch.zeros(1, 4, dtype=torch.int64)
    return expect_value_errors(
        [
            lambda: rank_spans_triton(hits.int(), 10, 2, 2),
            lambda: rank_spans_triton(hits, 0, 2, 2),
            lambda: rank_spans_triton(hits, 10, 0, 2),
        ]
    )


# ----------------------------------------------------------------------------- the model's own ops


def rms_norm_case(shape, n, dtype, gemma, row_pad=0, seed=0):
    """``kernels.rms_norm`` on Triton against its twin (the stock modules' arithmetic, checked in
    ``tests/test_model_ops.py``) and an fp64 reference: within one rounding of fp16 (a few fp32 ulp);
    rows strided (``row_pad`` elements between them) and 3-D inputs included."""
    from reattn_llm.kernels import rms_norm, rms_norm_torch

    torch.manual_seed(seed)
    x = (torch.randn(*shape, n + row_pad, dtype=dtype) * 3)[..., :n]
    w = torch.randn(n, dtype=dtype)
    off, cast_first = (1.0, False) if gemma else (0.0, True)
    got = rms_norm(x, w, 1e-6, off, cast_first, backend="triton")
    twin = rms_norm_torch(x, w, 1e-6, off, cast_first)
    xd = x.double()
    ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * (off + w.double())
    assert got.shape == x.shape and got.dtype == twin.dtype, (got.shape, got.dtype, twin.dtype)
    ulp = torch.finfo(dtype).eps * ref.abs().clamp_min(1.0)
    err_twin = ((got.double() - twin.double()).abs() / ulp).max().item()
    err_ref = ((got.double() - ref).abs() / ulp).max().item()
    twin_ref = ((twin.double() - ref).abs() / ulp).max().item()
    tol = 2.0 if dtype != F32 else 8.0  # fp32: the sum's order moves a few ulp of 24 bits
    assert err_twin <= tol, f"{err_twin:.2f} ulp from the twin"
    assert err_ref <= twin_ref + tol / 2, f"{err_ref:.2f} ulp from fp64 (twin {twin_ref:.2f})"
    return {"ulp_vs_twin": err_twin, "ulp_vs_fp64": err_ref}


def gated_act_case(shape, n, dtype, act, halves=False, seed=0):
    """``kernels.gated_act`` on Triton against its twin (``F.silu`` / ``F.gelu(tanh)`` times ``up``):
    within one rounding in fp16 (a few fp32 ulp in fp32); ``halves``: gate and up the two halves of
    one fused projection's rows."""
    from reattn_llm.kernels import gated_act, gated_act_torch

    torch.manual_seed(seed)
    if halves:
        gate, up = (torch.randn(*shape, 2 * n, dtype=dtype) * 4).chunk(2, dim=-1)
    else:
        gate, up = torch.randn(*shape, n, dtype=dtype) * 4, torch.randn(*shape, n, dtype=dtype)
    gate[..., :3] = torch.tensor([-200.0, 200.0, 0.0], dtype=dtype)  # saturation both ways, zero
    got = gated_act(gate, up, act, backend="triton")
    twin = gated_act_torch(gate, up, act)
    assert got.shape == twin.shape and got.dtype == twin.dtype and got.is_contiguous()
    assert torch.isfinite(got).all()
    ulp = torch.finfo(dtype).eps * twin.double().abs().clamp_min(1.0)
    err = ((got.double() - twin.double()).abs() / ulp).max().item()
    tol = 2.0 if dtype != F32 else 16.0  # fp32: exp / tanh formulas of their own, a few ulp of 24 bits
    assert err <= tol, f"{err:.2f} ulp from the twin"
    return {"ulp_vs_twin": err}


def model_ops_errors_case():
    from reattn_llm.kernels.triton_gated import gated_act_triton
    from reattn_llm.kernels.triton_gather import rotate_rows
    from reattn_llm.kernels.triton_norm import rms_norm_triton

    x = torch.randn(3, 8)
    return expect_value_errors(
        [
            lambda: rms_norm_triton(x, torch.ones(7), 1e-6),
            lambda: rms_norm_triton(x.to(torch.int32), torch.ones(8), 1e-6),
            lambda: rms_norm_triton(x, torch.ones(8), 1e-6, offset=1.0, cast_first=True),
            lambda: rms_norm_triton(torch.randn(2, 20000), torch.ones(20000), 1e-6),
            lambda: gated_act_triton(x, x, "relu"),
            lambda: gated_act_triton(x, x[:, :7], "silu"),
            lambda: gated_act_triton(x, x.half(), "silu"),
            lambda: rotate_rows(torch.randn(1, 2, 3, 8), None, torch.ones(1, 1, 4), torch.zeros(1, 1, 4)),
        ]
    )


def model_ops_models_case():
    """The default model (SmolLM2, fp32) and tiny Qwen3 (per-head q/k norms) and Phi-3 (fused
    ``gate_up_proj``) models, stock against their RMSNorm and MLP forwards fused
    (``method.model_ops.fuse_model_ops`` with the Triton backend, interpreted): every known module
    swapped, the logits within fp32 rounding, stock with gradients on, and ``remove()`` restores the
    stock forwards."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_models import tiny_model

    from reattn_llm.method.model_ops import fuse_model_ops
    from reattn_llm.runtime.models import load_model

    smol, _ = load_model(None, torch.device("cpu"), torch.float32)
    models = {
        "smollm2": (smol, 61, 30),
        "qwen3": (tiny_model("qwen3", layers=2, seed=3), 2 * 4 + 1, 2),
        "phi3": (tiny_model("phi3", heads=4, kv_heads=2, head_dim=16, layers=2, seed=4), 5, 2),
    }
    info = {}
    for name, (model, norms, mlps) in models.items():
        ids = torch.randint(3, model.config.vocab_size, (1, 37), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = model(ids).logits
            swaps = fuse_model_ops(model.model if hasattr(model, "model") else model, "triton")
            kinds = [type(s.module).__name__ for s in swaps]
            try:
                got = model(ids).logits
                with torch.enable_grad():  # parameters that want gradients: the stock forwards run
                    assert torch.equal(model(ids).logits.detach(), want), "fused under autograd"
            finally:
                for s in swaps:
                    s.remove()
            again = model(ids).logits
        n_mlp = sum(k.endswith("MLP") for k in kinds)
        assert (len(kinds) - n_mlp, n_mlp) == (norms, mlps), (name, kinds)
        assert not any("forward" in vars(s.module) for s in swaps), "remove() left a forward behind"
        assert torch.equal(again, want), "stock forwards not restored"
        err = (got - want).abs().max().item()
        assert err <= 1e-4 * want.abs().max().item(), f"{name}: logits differ by {err:.3g}"
        info[name] = {"swapped": len(kinds), "max_logit_diff": err}
    return info


def model_ops_cases():
    return {
        "rms_norm_llama_n576_f32": lambda: rms_norm_case((37,), 576, F32, gemma=False),
        "rms_norm_llama_n130_strided_f16": lambda: rms_norm_case((2, 5), 130, F16, gemma=False, row_pad=6),
        "rms_norm_gemma_n640_f16": lambda: rms_norm_case((9,), 640, F16, gemma=True),
        "rms_norm_gemma_n64_rows_f32": lambda: rms_norm_case((3, 4, 33), 64, F32, gemma=True, row_pad=64),
        "gated_silu_f16": lambda: gated_act_case((3, 11), 1500, F16, "silu"),
        "gated_gelu_tanh_f32": lambda: gated_act_case((5,), 777, F32, "gelu_tanh"),
        "gated_silu_halves_f16": lambda: gated_act_case((2, 7), 96, F16, "silu", halves=True),
        "model_ops_errors": model_ops_errors_case,
        "model_ops_models": model_ops_models_case,
    }


def mask_unwritten_case(b: int, n: int, q_len: int, written: int, dtype: torch.dtype, strided: bool = False):
    """A static decode step's scope cut to the rows written (``mask_unwritten``): a scope of global,
    middle (some padding, -1) and local rows reaching past ``written``, the Triton kernel against its
    torch twin, equal (gather rows, positions, the queries' positions); ``strided``: views of wider rows."""
    from reattn_llm.kernels.torch_select import mask_unwritten_torch
    from reattn_llm.kernels.triton_static import mask_unwritten_triton

    g = torch.Generator().manual_seed(n + b)
    idx = torch.randint(0, written + n // 10 + 8, (b, n), generator=g).to(dtype)  # some rows unwritten
    pos = torch.arange(n).expand(b, n).clone()
    pos[torch.rand(b, n, generator=g) < 0.2] = -1  # padding of the middle
    pos = pos.to(dtype)
    if strided:
        idx = torch.cat([idx, idx], dim=1)[:, ::2]
        pos = torch.cat([pos, pos], dim=1)[:, ::2]
        idx, pos = idx[:, :n], pos[:, :n]
    total = torch.tensor([written])
    peaks = torch.tensor([5]), torch.tensor([5])  # the largest query position so far, raised in place
    got = mask_unwritten_triton(idx, pos, total, q_len, peaks[0])
    want = mask_unwritten_torch(idx, pos, total, q_len, peaks[1])
    for a, w, what in zip(
        (*got, peaks[0]), (*want, peaks[1]), ("gather_idx", "key_pos", "q_pos", "max"), strict=True
    ):
        assert a.dtype == w.dtype and torch.equal(a, w), f"{what} differs: {a} vs {w}"
    assert int(peaks[0]) == int(want[2].max()) > 5
    kept = int((want[1] >= 0).sum())
    assert kept < b * n  # some rows cut, as the case means
    return {"kept": kept, "of": b * n}


def mask_unwritten_cases():
    return {
        "mask_unwritten_b1_n8226_i64": lambda: mask_unwritten_case(1, 8226, 1, 8000, torch.int64),
        "mask_unwritten_b3_n77_q5_i32": lambda: mask_unwritten_case(3, 77, 5, 60, torch.int32),
        "mask_unwritten_b2_n1030_strided": lambda: mask_unwritten_case(2, 1030, 1, 900, torch.int64, True),
        "mask_unwritten_b1_n20011_two_tiles": lambda: mask_unwritten_case(1, 20011, 2, 19000, torch.int64),
    }


def rms_norm_expanded_weight_case():
    """An expanded weight (``[1]`` broadcast to ``[N]``, stride 0) next to an unreadable page: the
    kernel reads a dense weight, so the wrapper makes it one; equal to the twin."""
    from reattn_llm.kernels.torch_ops import rms_norm_torch
    from reattn_llm.kernels.triton_norm import rms_norm_triton

    w, keep = guarded_tensor((1,), F32)
    w.fill_(1.5)
    x = torch.randn(3, 40)
    got = rms_norm_triton(x, w.expand(40), 1e-6)
    want = rms_norm_torch(x, w.expand(40), 1e-6)
    del keep
    err = (got - want).abs().max().item()
    assert err <= 1e-5, f"{err:.3g} from the twin"
    return {"max_diff": err}


#: Cases that read next to an unreadable page: a regression kills their process (SIGSEGV), so
#: ``tests/test_kernels.py`` runs them apart from the others.
GUARDED = {
    "guarded_topk_padding_rows_f16": lambda: topk_padding_rows_case(F16),
    "guarded_topk_padding_rows_f32_grouped": lambda: topk_padding_rows_case(F32),
    "guarded_rms_norm_expanded_weight": rms_norm_expanded_weight_case,
}


def all_cases():
    cases = {}
    cases.update(topk_cases())
    cases.update(attn_cases())
    cases.update(rotate_cases())
    cases["argument_errors"] = errors_case
    cases.update(rank_blocks_cases())
    cases.update(spans_cases())
    cases.update(model_ops_cases())
    cases.update(mask_unwritten_cases())
    cases.update(GUARDED)
    return cases


def main(names):
    cases = all_cases()
    if names == ["--list"]:
        print(json.dumps(sorted(cases)))
        return
    run_cases(cases, names or sorted(cases))


def interpret(script, names, timeout=900):
    """Run ``script`` (a file whose ``__main__`` runs the named cases through :func:`run_cases`) under
    Triton's CPU interpreter and return ``{name: result}``. The interpreter is single-threaded, so
    the cases are dealt to two processes (every other name) on a machine with two cores or more."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore", TRITON_DEFAULT_FP_FUSION="1")
    parts = min(2, os.cpu_count() or 1, max(1, len(names)))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *names[i::parts]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for i in range(parts)
    ]
    out, errors = {}, []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            errors.append(f"rc {proc.returncode}: {stderr[-2000:]}")
            for line in stdout.splitlines():
                if line.startswith("CASE "):
                    r = json.loads(line[5:])
                    out[r["name"]] = r
    finally:  # a timeout (or any error) leaves no process behind, as subprocess.run ensured
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not out:
        raise RuntimeError(f"{Path(script).name} reported nothing:\n" + "\n".join(errors))
    return out


def run_cases(cases, names):
    """Run the named cases, one ``CASE {json}`` line each (what the test process parses)."""
    for name in names:
        t0 = time.time()
        try:
            info = cases[name]()
            res = {"name": name, "ok": True, "info": info}
        except Exception as e:
            res = {
                "name": name,
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(),
            }
        res["seconds"] = round(time.time() - t0, 2)
        print("CASE " + json.dumps(res), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    main(sys.argv[1:])
