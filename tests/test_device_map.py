"""Layers split across devices with accelerate (device_map): the patch and the cache follow each layer.

The CPU suite has one device, so it checks the machinery accelerate adds (per-module hooks that move
inputs and outputs between devices) and the split capacity arithmetic; the 2-GPU run is in
``benchmarks/multi_gpu.py``. A test below runs on a machine with two CUDA devices.
"""

from __future__ import annotations

import pytest
import torch

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.method.patch import make_cache
from reattn_llm.runtime.capacity import estimate_capacity, estimate_capacity_split
from tests.tiny_models import SMOLLM2_SHAPE, distinct_ids, tiny_model

CFG = dict(window=128, global_size=8, local_size=64, span_size=8, max_spans=6, chunk_size=32, backend="torch")


def _prefill_logits(model, ids: torch.Tensor) -> torch.Tensor:
    cache = make_cache(model)
    out = []
    for s in range(0, ids.shape[1], 32):
        piece = ids[:, s : s + 32].to(model.get_input_embeddings().weight.device)
        out.append(model(input_ids=piece, past_key_values=cache, use_cache=True).logits.float().cpu())
    return torch.cat(out, dim=1)


def _split_map(model, devices: list[str]) -> dict[str, str]:
    n = model.config.num_hidden_layers
    m = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0], "model.norm": devices[-1]}
    m |= {f"model.layers.{i}": devices[i * len(devices) // n] for i in range(n)}
    m["lm_head"] = devices[-1]
    return m


def test_accelerate_hooks_leave_reattention_unchanged():
    from accelerate import dispatch_model

    ids = distinct_ids(1, 320, seed=11)
    ref_model = tiny_model("llama", window=128, layers=4)
    with patch(ref_model, ReAttentionConfig(**CFG)):
        ref = _prefill_logits(ref_model, ids)
    model = tiny_model("llama", window=128, layers=4)
    model = dispatch_model(model, device_map=_split_map(model, ["cpu", "cpu"]), force_hooks=True)
    assert any(hasattr(m, "_hf_hook") for m in model.modules())
    with patch(model, ReAttentionConfig(**CFG)):
        got = _prefill_logits(model, ids)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)


def test_split_capacity_is_the_tightest_devices_share():
    c = SMOLLM2_SHAPE
    cfg = ReAttentionConfig().resolve(8192)
    cpu = torch.device("cpu")
    whole = estimate_capacity(c, cpu, torch.float32, cfg, weights_loaded=True)
    split = estimate_capacity_split(c, [cpu] * 30, torch.float32, cfg)
    assert abs(split.max_tokens - whole.max_tokens) <= 0.01 * whole.max_tokens + 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_match_one():
    from accelerate import dispatch_model

    ids = distinct_ids(1, 320, seed=11)
    one = tiny_model("llama", window=128, layers=4).cuda()
    with patch(one, ReAttentionConfig(**CFG)):
        ref = _prefill_logits(one, ids)
    two = tiny_model("llama", window=128, layers=4)
    two = dispatch_model(two, device_map=_split_map(two, ["cuda:0", "cuda:1"]))
    with patch(two, ReAttentionConfig(**CFG)):
        got = _prefill_logits(two, ids)
        cache = make_cache(two)
        two(input_ids=ids[:, :40].cuda(), past_key_values=cache, use_cache=True)
    # each layer's K/V live on its own layer's card
    assert {layer.keys.device.index for layer in cache.layers} == {0, 1}
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)
