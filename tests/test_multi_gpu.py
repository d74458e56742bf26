"""The default model in bf16 with its decoder layers split over two GPUs equals the one-GPU model.

Runs only where ``torch.cuda.device_count() >= 2`` (the ``nvidia-h200-x2`` machine:
``benchmarks/run_multi_gpu.sh``); the CPU suite checks accelerate's hooks in ``test_device_map.py``.

The split is the ``device_map`` the package's loader and ``Engine(device_map=...)`` take: embeddings,
rotary table, LM head (tied to the embeddings) and layers 0-14 on ``cuda:0``, layers 15-29 and the
final norm on ``cuda:1``. The prompt (1,600 tokens of prose) is longer than G + L = 260 of the shrunk
window (:data:`tests.conftest.SMALL_CONFIG_KWARGS`), so every chunk after the second selects spans.

Tolerance, derived rather than guessed: the two runs do the same bf16 arithmetic on the same kind of
card, so they differ only by what bf16 rounding may do differently, which is bounded by the one-GPU
bf16 run's own error. Against an fp32 one-GPU reference of the same weights, with
``err(x) = ||x - ref|| / ||ref||`` over all prefill logits, the split must satisfy
``err(split) <= 1.25 * err(one) + 1e-4`` and ``||split - one|| / ||one|| <= 0.5 * err(one) + 1e-4``
(in practice the two are bit-identical: cuBLAS picks the same kernels on the same chip);
``err(one)`` itself must be a bf16 error (below 3e-2) for the bound to mean anything.
"""

from __future__ import annotations

import pytest
import torch

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.lab.evaluation import greedy_continue
from reattn_llm.method.patch import make_cache
from reattn_llm.runtime.models import load_model
from tests.conftest import SMALL_CONFIG_KWARGS

pytestmark = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA devices (run on nvidia-h200-x2)"
)

PROMPT_TOKENS = 1600
NEW_TOKENS = 32


def split_map(n_layers: int) -> dict[str, str]:
    m = {
        "model.embed_tokens": "cuda:0",
        "model.rotary_emb": "cuda:0",
        "lm_head": "cuda:0",
        "model.norm": "cuda:1",
    }
    m |= {f"model.layers.{i}": f"cuda:{2 * i // n_layers}" for i in range(n_layers)}
    return m


def _prompt_ids(tok) -> torch.Tensor:
    from tests.conftest import FILLER_PAGES

    text = " ".join(" ".join(page) for page in FILLER_PAGES)
    ids = tok(text, add_special_tokens=False).input_ids
    ids = (ids * (PROMPT_TOKENS // len(ids) + 1))[:PROMPT_TOKENS]
    return torch.tensor([ids])


@torch.inference_mode()
def _prefill_logits(model, ids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, set[int]]:
    cache = make_cache(model, reserve=ids.shape[1])
    dev = model.get_input_embeddings().weight.device
    out = [
        model(input_ids=ids[:, s : s + chunk].to(dev), past_key_values=cache, use_cache=True)
        .logits.float()
        .cpu()
        for s in range(0, ids.shape[1], chunk)
    ]
    return torch.cat(out, dim=1)[0], {layer.keys.device.index for layer in cache.layers}


@torch.inference_mode()
def _run(dtype: torch.dtype, device_map, ids: torch.Tensor, cfg: ReAttentionConfig):
    model, _ = load_model(None, torch.device("cuda:0"), dtype, device_map)
    with patch(model, cfg):
        logits, devices = _prefill_logits(model, ids, cfg.chunk_size)
        tokens = greedy_continue(model, ids.to("cuda:0"), cfg.chunk_size, NEW_TOKENS)
    del model
    torch.cuda.empty_cache()
    return logits, devices, tokens


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def test_layers_split_over_two_gpus_match_one_gpu_in_bf16():
    from reattn_llm.runtime.models import load_tokenizer

    cfg = ReAttentionConfig(**SMALL_CONFIG_KWARGS)
    ids = _prompt_ids(load_tokenizer(None))
    assert ids.shape[1] > 3 * (cfg.global_size + cfg.local_size)  # the selection runs on most chunks
    ref, _, ref_tokens = _run(torch.float32, None, ids, cfg)
    one, one_devs, one_tokens = _run(torch.bfloat16, None, ids, cfg)
    n_layers = 30  # SmolLM2-135M
    two, two_devs, two_tokens = _run(torch.bfloat16, split_map(n_layers), ids, cfg)
    assert one_devs == {0} and two_devs == {0, 1}  # each layer's K/V on its own layer's card

    err_one, err_two, diff = _rel(one, ref), _rel(two, ref), _rel(two, one)
    print(f"err(one) {err_one:.2e}  err(split) {err_two:.2e}  ||split-one||/||one|| {diff:.2e}")
    assert err_one < 3e-2  # a bf16 error, so the bound below is meaningful
    assert err_two <= 1.25 * err_one + 1e-4
    assert diff <= 0.5 * err_one + 1e-4
    # greedy decode: the same 32 tokens after the same 1,600-token prompt
    assert two_tokens == one_tokens
    assert len(one_tokens) == NEW_TOKENS
    # the fp32 reference's tokens are reported, not asserted: bf16 may flip a near tie
    print(
        f"tokens equal to fp32's: {sum(a == b for a, b in zip(one_tokens, ref_tokens, strict=True))}/{NEW_TOKENS}"
    )


def test_engine_with_a_two_gpu_device_map_answers_as_one_gpu():
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.sampling import SamplingParams
    from tests.conftest import FILLER_PAGES, PLANTED_QUESTION

    cfg = ReAttentionConfig(**SMALL_CONFIG_KWARGS)
    doc = "\n".join(" ".join(page) for page in FILLER_PAGES)
    prompt = f"{doc}\n{PLANTED_QUESTION}"
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    one = Engine(None, device="cuda:0", config=cfg, progress=False, keep_prefix=False)
    a = one.complete(prompt, params)
    del one
    two = Engine(None, config=cfg, device_map=split_map(30), progress=False, keep_prefix=False)
    b = two.complete(prompt, params)
    assert {p.device.index for p in two.model.parameters()} == {0, 1}
    assert two.capacity().max_tokens > 0
    assert a.prompt_tokens == b.prompt_tokens > cfg.global_size + cfg.local_size
    assert b.text == a.text and b.completion_tokens == a.completion_tokens
