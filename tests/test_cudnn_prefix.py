"""The prefill split of :mod:`reattn_llm.kernels.cudnn_prefix`: its twin keeps cuDNN's contract
(normalised output and natural-log log-sum-exp over the real keys only), and merging that part with
the chunk's own keys by log-sum-exp, as the flash kernel's ``INIT`` state does, is the whole scope's
attention. The kernel path itself runs in the interpreter cases (``flash_prefix_*``) and on the GPU
(``benchmarks/gpu_kernels_check.py --only prefix``)."""

from __future__ import annotations

import math

import pytest
import torch

from reattn_llm.kernels.cudnn_prefix import (
    MASKED,
    cudnn_prefix_available,
    prefix_attention,
    prefix_attention_torch,
)


def _inputs(B=2, Hkv=2, R=12, P=30, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    qf, kp, vp = (torch.randn(B, Hkv, n, D, generator=g, dtype=torch.float64) for n in (R, P, P))
    pad = torch.zeros(B, P, dtype=torch.bool)
    pad[0, 3:9] = True
    pad[-1, -5:] = True
    bias = torch.zeros(B, P, dtype=torch.float64).masked_fill(pad, MASKED)
    return qf, kp, vp, bias, pad


def test_twin_attends_the_real_keys_only_and_returns_the_natural_log_sum_exp():
    qf, kp, vp, bias, pad = _inputs()
    scale = 0.25
    out, lse = prefix_attention_torch(qf, kp, vp, bias[:, None, None, :], scale)
    for b in range(qf.shape[0]):
        keep = ~pad[b]
        s = qf[b] @ kp[b][:, keep].transpose(-1, -2) * scale
        assert torch.allclose(lse[b].double(), torch.logsumexp(s, -1), atol=1e-5)
        assert torch.allclose(out[b], torch.softmax(s, -1) @ vp[b][:, keep], atol=1e-6)


def test_merging_the_prefix_and_the_chunk_by_log_sum_exp_is_the_whole_scope():
    """What the flash kernel's INIT does: state (m, l, acc) = (lse·log2 e, 1, out) in log2 units,
    then the chunk's own keys folded in; equal to one softmax over prefix + own keys."""
    qf, kp, vp, bias, pad = _inputs(B=1, R=8)
    g = torch.Generator().manual_seed(1)
    ko, vo = (torch.randn(1, 2, 8, 16, generator=g, dtype=torch.float64) for _ in range(2))
    scale, log2e = 0.25, 1 / math.log(2)
    out, lse = prefix_attention_torch(qf, kp, vp, bias[:, None, None, :], scale)
    s_own = qf @ ko.transpose(-1, -2) * scale * log2e  # log2 units, as the kernel's scores
    m = torch.maximum(lse.double() * log2e, s_own.amax(-1))
    w_pre = torch.exp2(lse.double() * log2e - m)
    p_own = torch.exp2(s_own - m[..., None])
    merged = (out * w_pre[..., None] + p_own @ vo) / (w_pre + p_own.sum(-1))[..., None]
    keys, vals = torch.cat([kp[:, :, ~pad[0]], ko], 2), torch.cat([vp[:, :, ~pad[0]], vo], 2)
    whole = torch.softmax(qf @ keys.transpose(-1, -2) * scale, -1) @ vals
    assert torch.allclose(merged, whole, atol=1e-6)


def test_a_prefix_of_padding_alone_weighs_nothing_once_merged():
    qf, kp, vp, _, _ = _inputs(B=1)
    bias = torch.full((1, kp.shape[2]), MASKED, dtype=torch.float64)
    out, lse = prefix_attention_torch(qf, kp, vp, bias[:, None, None, :], 0.25)
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(lse).all())
    assert float(lse.max()) < MASKED / 2  # exp2(lse·log2 e - m) is 0 against any real key's score


def test_cuDNN_is_never_taken_off_the_GPU_and_a_bad_kind_is_refused():
    q = torch.randn(1, 4, 6, 16, dtype=torch.bfloat16)
    assert not cudnn_prefix_available(q)
    ko = vo = torch.zeros(1, 2, 10, 16, dtype=torch.bfloat16)
    kpos = torch.arange(10)[None]
    qpos = torch.arange(4, 10)[None]
    cos = sin = torch.zeros(16, 16)
    assert prefix_attention("cudnn", q, ko, vo, kpos, qpos, cos, sin, 0.25) is None
    with pytest.raises(ValueError, match="'cudnn' or 'torch'"):
        prefix_attention("flash", q, ko, vo, kpos, qpos, cos, sin, 0.25)
