"""Prefill scope attention through torch's flash kernel (``kernels/flash_varlen.py``).

Its layout logic (the compact gather, the rotated queries, the varlen arguments) is checked on the
CPU by the interpreter cases ``varlen_*`` (tests/kernel_cases.py, the library call replaced by a
torch reference); the library kernel itself runs here on a GPU only.
"""

from __future__ import annotations

import pytest
import torch

from reattn_llm.kernels import flash_varlen
from reattn_llm.kernels.torch_ops import scope_attention_torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_library_path_is_not_taken_where_its_kernel_cannot_run() -> None:
    q = torch.zeros(1, 4, 8, 64)
    assert not flash_varlen.available(q)  # CPU tensors
    assert not flash_varlen.available(q.double())


def _scope(B, H, Hkv, Q, T, N, D, pads, dtype, device):
    """A prefill chunk's scope that keeps ``chunk_tail``: entry b has ``pads[b]`` padding entries
    (NaN in their cache rows) before its chunk, positions ``0..n_b-1`` over the real keys."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, Q, H, D, generator=g).to(device, dtype).transpose(1, 2)
    kc = torch.randn(B, Hkv, T, D, generator=g).to(device, dtype)
    vc = torch.randn(B, Hkv, T, D, generator=g).to(device, dtype)
    idx = torch.stack([torch.randperm(T - Q, generator=g)[: N - Q] for _ in range(B)])
    idx = torch.cat([idx, torch.arange(T - Q, T).expand(B, Q)], dim=1)
    kpos = torch.empty(B, N, dtype=torch.long)
    for b in range(B):
        real = torch.ones(N, dtype=torch.bool)
        real[torch.randperm(N - Q, generator=g)[: pads[b]]] = False
        kpos[b] = torch.where(real, real.long().cumsum(0) - 1, -1)
        rows = idx[b][~real].to(device)
        kc[b, :, rows] = float("nan")
        vc[b, :, rows] = float("nan")
    qpos = kpos[:, N - Q :].clone()
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).double() / D))
    ang = torch.outer(torch.arange(N + 4).double(), inv)
    cos = torch.cat([ang.cos(), ang.cos()], -1).float().to(device)
    sin = torch.cat([ang.sin(), ang.sin()], -1).float().to(device)
    return q, kc, vc, idx.to(device), kpos.to(device), qpos.to(device), cos, sin


@cuda
@pytest.mark.parametrize("shape", [(32, 8, 1024, 6000, 2304, 128), (9, 3, 512, 5000, 1536, 64)])
def test_cuda_library_path_matches_the_twin_and_each_chunk_alone(shape) -> None:
    from reattn_llm.kernels.triton_attention import scope_attention_triton

    H, Hkv, Q, T, N, D = shape
    args = _scope(3, H, Hkv, Q, T, N, D, (0, 17, 300), torch.bfloat16, "cuda")
    assert flash_varlen.available(args[0])
    scale = D**-0.5
    got = scope_attention_triton(*args, scale, True)
    assert bool(torch.isfinite(got).all())
    clean = [
        a.nan_to_num() if a.is_floating_point() else a for a in args
    ]  # the reference never reads padding
    twin = scope_attention_torch(*clean, scale)
    ref = scope_attention_torch(*[a.double() if a.is_floating_point() else a for a in clean], scale)
    e_lib = ((got.double() - ref).norm() / ref.norm()).item()
    e_twin = ((twin.double() - ref).norm() / ref.norm()).item()
    assert e_lib <= 2 * e_twin, (e_lib, e_twin)
    for b in range(3):  # a batch of chunks gives each what it gets alone, bit for bit
        one = (*(a[b : b + 1] for a in args[:6]), *args[6:])
        assert torch.equal(scope_attention_triton(*one, scale, True)[0], got[b])
