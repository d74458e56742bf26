"""Which SDPA backend makes the 207 us unmasked baseline, and what a prefix + own-chunk split costs."""
import torch
import torch.nn.functional as F
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.manual_seed(0)
dev, bf = "cuda", torch.bfloat16
H, Hkv, Q, N, D = 32, 8, 1024, 9216, 128
s = D**-0.5
q = torch.randn(1, H, Q, D, device=dev, dtype=bf)
k = torch.randn(1, H, N, D, device=dev, dtype=bf)
v = torch.randn(1, H, N, D, device=dev, dtype=bf)
flops = 4 * H * Q * N * D
bench = lambda f: triton.testing.do_bench(f, rep=200) * 1e3  # noqa: E731
for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
    be = getattr(SDPBackend, name, None)
    try:
        with sdpa_kernel(be):
            us = bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=s))
        print(f"sdpa {name} no mask: {us:.0f} us {flops / us / 1e6:.0f} TFLOP/s", flush=True)
    except Exception as e:
        print(f"sdpa {name}: {type(e).__name__} {str(e)[:150]}", flush=True)
us = bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=s))
print(f"sdpa default no mask: {us:.0f} us", flush=True)
for op in ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention"):
    try:
        print(op, getattr(torch.ops.aten, op).default._schema, flush=True)
    except Exception as e:
        print(op, "missing", e)
# split: prefix (N - Q keys, every query) + own (Q x Q causal), merged by log-sum-exp
kp, vp, ko, vo = k[:, :, : N - Q], v[:, :, : N - Q], k[:, :, N - Q :], v[:, :, N - Q :]


def split(op):
    if op == "cudnn":
        a = torch.ops.aten._scaled_dot_product_cudnn_attention(q, kp, vp, None, True, 0.0, False, False, scale=s)
        b = torch.ops.aten._scaled_dot_product_cudnn_attention(q, ko, vo, None, True, 0.0, True, False, scale=s)
    else:
        a = torch.ops.aten._scaled_dot_product_flash_attention(q, kp, vp, 0.0, False, False, scale=s)
        b = torch.ops.aten._scaled_dot_product_flash_attention(q, ko, vo, 0.0, True, False, scale=s)
    (oa, la), (ob, lb) = a[:2], b[:2]
    m = torch.maximum(la, lb)
    wa, wb = (la - m).exp(), (lb - m).exp()
    return ((oa.float() * wa[..., None] + ob.float() * wb[..., None]) / (wa + wb)[..., None]).to(bf)


mask = torch.ones(Q, N, dtype=torch.bool, device=dev).tril(N - Q)
ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=s)
for op in ("cudnn", "flash"):
    try:
        out = split(op)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        us = bench(lambda: split(op))
        print(f"split {op}: {us:.0f} us, rel err {err:.4f} (lse shape {tuple(out.shape)})", flush=True)
    except Exception as e:
        print(f"split {op}: {type(e).__name__} {str(e)[:200]}", flush=True)
