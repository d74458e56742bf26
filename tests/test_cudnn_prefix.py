"""The prefill split of :mod:`reattn_llm.kernels.cudnn_prefix`: its twin keeps cuDNN's contract
(normalised output and natural-log log-sum-exp over every prefix key, padding gathered as zero keys
and values), and the flash kernel's ``INIT`` state, which takes the padding back out of the sum and
merges the chunk's own keys by log-sum-exp, is the whole scope's attention. The kernel path itself
runs in the interpreter cases (``flash_prefix_*``) and on the GPU
(``benchmarks/gpu_kernels_check.py --only prefix``)."""

from __future__ import annotations

import math

import pytest
import torch

from reattn_llm.kernels.cudnn_prefix import cudnn_prefix_available, prefix_attention, prefix_attention_torch

LOG2E = 1 / math.log(2)


def _inputs(B=2, Hkv=2, R=12, P=30, D=16, seed=0):
    """Queries, a prefix whose padding keys and values are zeros (as gathered), and its padding."""
    g = torch.Generator().manual_seed(seed)
    qf, kp, vp = (torch.randn(B, Hkv, n, D, generator=g, dtype=torch.float64) for n in (R, P, P))
    pad = torch.zeros(B, P, dtype=torch.bool)
    pad[0, 3:9] = True
    pad[-1, -5:] = True
    kp = kp.masked_fill(pad[:, None, :, None], 0.0)
    vp = vp.masked_fill(pad[:, None, :, None], 0.0)
    return qf, kp, vp, pad


def _init_state(out, lse, npad):
    """The flash kernel's INIT state in log2 units: (m, l, acc) = (lse·log2 e, 1 - pad·2^-m, out)."""
    m = lse.double() * LOG2E
    real = (1.0 - npad.double()[:, None, None] * torch.exp2(-m)).clamp(min=0)
    return m, torch.where(npad.double()[:, None, None] > 0, real, torch.ones_like(real)), out.double()


def _merge(state, s_own, vo):
    """The chunk's own keys (scores in log2 units) folded into the state: the normalised output."""
    m0, l0, acc0 = state
    m = torch.maximum(m0, s_own.amax(-1))
    a = torch.exp2(m0 - m)
    p = torch.exp2(s_own - m[..., None])
    return (acc0 * a[..., None] + p @ vo) / (l0 * a + p.sum(-1))[..., None]


def test_twin_attends_every_key_and_returns_the_natural_log_sum_exp():
    qf, kp, vp, _ = _inputs()
    out, lse = prefix_attention_torch(qf, kp, vp, 0.25)
    s = qf @ kp.transpose(-1, -2) * 0.25
    assert torch.allclose(lse.double(), torch.logsumexp(s, -1), atol=1e-5)
    assert torch.allclose(out, torch.softmax(s, -1) @ vp, atol=1e-6)


def test_a_zero_padding_key_adds_exactly_one_to_the_sum_and_nothing_to_the_output():
    qf, kp, vp, pad = _inputs()
    out, lse = prefix_attention_torch(qf, kp, vp, 0.25)
    for b in range(qf.shape[0]):
        keep = ~pad[b]
        s = qf[b] @ kp[b][:, keep].transpose(-1, -2) * 0.25
        real = torch.logsumexp(s, -1)
        assert torch.allclose(torch.exp(lse[b].double()) - int(pad[b].sum()), torch.exp(real), rtol=1e-5)
        assert torch.allclose(
            out[b] * torch.exp(lse[b].double() - real)[..., None],
            torch.softmax(s, -1) @ vp[b][:, keep],
            atol=1e-5,
        )


def test_the_init_state_merged_with_the_chunk_is_the_whole_scope():
    """What the flash kernel's INIT does: (m, l, acc) = (lse·log2 e, 1 - pad·2^-m, out), then the
    chunk's own keys folded in; equal to one softmax over the real prefix keys and the own keys."""
    qf, kp, vp, pad = _inputs(B=2, R=8)
    g = torch.Generator().manual_seed(1)
    ko, vo = (torch.randn(2, 2, 8, 16, generator=g, dtype=torch.float64) for _ in range(2))
    out, lse = prefix_attention_torch(qf, kp, vp, 0.25)
    merged = _merge(_init_state(out, lse, pad.sum(1).float()), qf @ ko.transpose(-1, -2) * 0.25 * LOG2E, vo)
    for b in range(2):
        keys = torch.cat([kp[b][:, ~pad[b]], ko[b]], 1)
        vals = torch.cat([vp[b][:, ~pad[b]], vo[b]], 1)
        whole = torch.softmax(qf[b] @ keys.transpose(-1, -2) * 0.25, -1) @ vals
        assert torch.allclose(merged[b], whole, atol=1e-5)


def test_a_prefix_of_padding_alone_weighs_nothing_once_merged():
    qf, _, _, _ = _inputs(B=1)
    zeros = torch.zeros(1, 2, 30, 16, dtype=torch.float64)
    out, lse = prefix_attention_torch(qf, zeros, zeros, 0.25)
    state = _init_state(out, lse, torch.tensor([30.0]))
    assert bool((state[1].abs() < 1e-5).all()) and bool((out == 0).all())
    g = torch.Generator().manual_seed(2)
    ko, vo = (torch.randn(1, 2, 8, 16, generator=g, dtype=torch.float64) for _ in range(2))
    s_own = qf[:, :, :8] @ ko.transpose(-1, -2) * 0.25
    merged = _merge(tuple(t[:, :, :8] for t in state), s_own * LOG2E, vo)
    assert torch.allclose(merged, torch.softmax(s_own, -1) @ vo, atol=1e-5)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_the_cudnn_prefix_prefill_matches_the_flash_kernel_alone(monkeypatch):
    """The default model's prefill (bf16, Triton, 1,500 tokens of the package's sample text) with a
    chunk's prefix through cuDNN (the default), through the split's fp32 twin, and by the flash
    kernel alone: cuDNN's logits are no further from the flash kernel's than the twin's are (bf16
    rounding through 30 layers: about 1-2% of the logits' norm, ties in the top logit included),
    each path's next token is a top token of the others within that rounding, and cuDNN's path
    really ran."""
    from reattn_llm import ReAttentionConfig
    from reattn_llm.cli import SAMPLE
    from reattn_llm.kernels import cudnn_prefix, triton_attention
    from reattn_llm.method.patch import make_cache
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.models import load_tokenizer
    from tests.conftest import SMALL_CONFIG_KWARGS

    ids = load_tokenizer(None)(SAMPLE.read_text()[5000:30000], add_special_tokens=False)["input_ids"][:1500]
    cfg = ReAttentionConfig(**SMALL_CONFIG_KWARGS, prefill_forward=3 * SMALL_CONFIG_KWARGS["chunk_size"])
    engine = Engine(None, device="cuda", dtype="bf16", config=cfg, progress=False, keep_prefix=False)
    logits = {}
    for prefix in ("cudnn", "torch", "triton"):
        monkeypatch.setitem(triton_attention.CONFIG_OVERRIDES, "prefill", {"PREFIX": prefix})
        cache = make_cache(engine.model, reserve=len(ids))
        logits[prefix] = engine.prefill(
            torch.tensor([ids], device="cuda"), cache, question=len(ids) - 20
        ).float()
    assert not cudnn_prefix._failed, cudnn_prefix._failed
    flash = logits["triton"]

    def err(x):
        return ((x - flash).norm() / flash.norm()).item()

    assert err(logits["cudnn"]) <= 2 * err(logits["torch"]) + 1e-3, (
        err(logits["cudnn"]),
        err(logits["torch"]),
    )
    for a in logits.values():
        for b in logits.values():
            assert a[0, b.argmax()] >= a.max() - 0.5  # the others' next token: within rounding of the top
