"""A/B: score_topk with the single-key eviction (tree) against the kernel before (.gpu/ab)."""
import importlib.util
import sys

import torch
import triton.testing

sys.path.insert(0, ".")
from reattn_llm.kernels import triton_topk as new  # noqa: E402

spec = importlib.util.spec_from_file_location("reattn_llm.kernels.triton_topk_before", ".gpu/ab/triton_topk_before.py")
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
torch.manual_seed(0)
dev, bf = "cuda", torch.bfloat16
for name, C, H, Hkv, Q, M, D, grow in [
    ("8B 8 chunks x1024, 120K middle, grow", 8, 32, 8, 1024, 122880, 128, 1024),
    ("8B one chunk x1024, 64K middle", 1, 32, 8, 1024, 65536, 128, 0),
    ("8B one chunk x1024, 24K middle", 1, 32, 8, 1024, 24576, 128, 0),
    ("SmolLM2 16 chunks x512, 128K middle, grow", 16, 9, 3, 512, 131072, 64, 512),
]:
    q = torch.randn(1, C * Q, H, D, device=dev, dtype=bf).view(C, Q, H, D).transpose(1, 2)
    k = torch.randn(1, Hkv, M, D, device=dev, dtype=bf).expand(C, Hkv, M, D)
    a = new.score_topk_triton(q, k, 4, grow=grow)
    b = old.score_topk_triton(q, k, 4, grow=grow)
    same = torch.equal(a, b)
    ts = {"new": [], "old": []}
    for _ in range(3):
        ts["old"].append(triton.testing.do_bench(lambda: old.score_topk_triton(q, k, 4, grow=grow), rep=200))
        ts["new"].append(triton.testing.do_bench(lambda: new.score_topk_triton(q, k, 4, grow=grow), rep=200))
    keys = sum(M - (C - 1 - c) * grow for c in range(C))
    tf = lambda ms: 2 * H * Q * keys * D / (ms * 1e-3) / 1e12  # noqa: E731
    n, o = min(ts["new"]), min(ts["old"])
    print(f"{name}: equal {same}; single-key eviction {n:.3f} ms ({tf(n):.0f} TFLOP/s), before {o:.3f} ms ({tf(o):.0f} TFLOP/s), {o / n:.3f}x", flush=True)
