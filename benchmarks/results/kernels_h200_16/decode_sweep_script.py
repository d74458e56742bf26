"""Decode scoring (plain mode) configs on the H200 at the 8B shape's 128K middle; then the 128K
two-level e2e (graphs) with the best installed, beside the default's figure from run 16."""
import json
import os
import sys

import torch
import triton.testing

sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
from reattn_llm.kernels import triton_topk  # noqa: E402
from reattn_llm.kernels._triton_utils import sm_count  # noqa: E402

n_sm = sm_count(torch.device("cuda"))
torch.manual_seed(0)
M = 126944
q = torch.randn(1, 1, 32, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
kbuf = torch.randn(1, 8, M + 4128, 128, device="cuda", dtype=torch.bfloat16)
k = kbuf[:, :, 32 : 32 + M]
ref = triton_topk.score_topk_triton(q, k, 4)
base = dict(BLOCK_R=16, CI=0, EARLY_EXIT=0)
configs = [("default", None)]
for bn, w, st in [(128, 4, 3), (128, 4, 4), (256, 4, 3), (256, 8, 3), (64, 4, 4)]:
    for tm, mt in [(16, 4), (8, 8), (4, 16), (2, 32)]:
        configs.append((f"N{bn} w{w} s{st} t{tm} mt{mt}", dict(base, BLOCK_N=bn, num_warps=w, num_stages=st, target=tm * n_sm, min_tiles=mt)))
res = []
for name, c in configs:
    try:
        got = triton_topk.score_topk_triton(q, k, 4, _config=c)
        same = torch.equal(got, ref)
        us = triton.testing.do_bench(lambda c=c: triton_topk.score_topk_triton(q, k, 4, _config=c), rep=100) * 1e3
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:120], flush=True)
        continue
    res.append((us, name, c, same))
    print(f"{name}: {us:.1f} us, {k.numel() * 2 / us / 1e6:.2f} TB/s of K, same {same}", flush=True)
res.sort(key=lambda r: r[0])
best = res[0]
print("best", best[1], f"{best[0]:.1f} us", flush=True)
out = os.environ.get("OUT", ".")
json.dump([(u, n, c, s) for u, n, c, s in res], open(f"{out}/decode_sweep.json", "w"), indent=1)
if best[2] is not None and best[3] and os.environ.get("E2E"):
    triton_topk.CONFIG_OVERRIDES["decode"] = {k_: v for k_, v in best[2].items() if k_ != "BLOCK_R"}
    import kernels

    sys.argv = ["kernels.py", "--e2e", "llama128k", "--selection", "two_level", "--graphs", "--graph-buckets", "32",
                "--json", f"{out}/decode_best_e2e.json"]
    kernels.PROFILE = []
    kernels.main()
