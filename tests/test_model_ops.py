"""The model's RMSNorm and gated MLP fused (``method.model_ops``): the twins are the stock modules'
arithmetic bit for bit, the swap is reversible, and it stays off where the Triton backend does not
run. The Triton kernels against the twins (and the fused default model's logits against stock)
run under the interpreter in ``tests/kernel_cases.py`` (``rms_norm_*``, ``gated_*``,
``model_ops_models``); on the GPU, the last test here."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.kernels import gated_act_torch, rms_norm_torch
from reattn_llm.method import model_ops
from reattn_llm.method.model_ops import activation_name, fuse_model_ops

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3"]


def _gemma3_modules():
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP, Gemma3RMSNorm

    cfg = Gemma3TextConfig(hidden_size=48, intermediate_size=80, hidden_activation="gelu_pytorch_tanh")
    norm = Gemma3RMSNorm(48, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    return norm, Gemma3MLP(cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", [*FAMILIES, "gemma3"])
def test_the_twins_are_the_stock_modules_arithmetic_bit_for_bit(family: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    if family == "gemma3":
        norm, mlp = _gemma3_modules()
    else:
        model = tiny_model(family, heads=4, kv_heads=2, head_dim=16, layers=1)
        norm, mlp = model.model.layers[0].input_layernorm, model.model.layers[0].mlp
        torch.nn.init.normal_(norm.weight)
    norm, mlp = norm.to(dtype), mlp.to(dtype)
    x = torch.randn(3, 5, norm.weight.shape[0], dtype=dtype) * 3
    name = type(norm).__name__
    assert (name in model_ops.LLAMA_NORMS) != (name in model_ops.GEMMA_NORMS), name
    gemma = name in model_ops.GEMMA_NORMS
    eps = norm.eps if gemma else norm.variance_epsilon
    twin = rms_norm_torch(x, norm.weight, eps, 1.0 if gemma else 0.0, not gemma)
    with torch.no_grad():
        assert torch.equal(twin, norm(x))
        fused = type(mlp).__name__ in model_ops.FUSED_GATE_UP_MLPS
        act_fn = mlp.activation_fn if fused else mlp.act_fn
        act = activation_name(act_fn)
        assert act is not None, type(act_fn)
        h = torch.randn(2, 7, x.shape[-1], dtype=dtype)
        gate, up = mlp.gate_up_proj(h).chunk(2, -1) if fused else (mlp.gate_proj(h), mlp.up_proj(h))
        assert torch.equal(mlp.down_proj(gated_act_torch(gate, up, act)), mlp(h))


def test_fusing_swaps_every_known_module_and_remove_restores_them() -> None:
    model = tiny_model("llama", heads=4, kv_heads=2, head_dim=16, layers=3)
    ids = torch.randint(0, 512, (1, 21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        swaps = fuse_model_ops(model.model, "auto")
        kinds = sorted(type(s.module).__name__ for s in swaps)
        assert kinds == ["LlamaMLP"] * 3 + ["LlamaRMSNorm"] * 7  # 2 a layer + the final norm
        assert all("forward" in vars(s.module) for s in swaps)
        # on the CPU the Triton backend does not run: every fused forward hands over to the stock one
        assert torch.equal(model(ids).logits, want)
        for s in swaps:
            s.remove()
    assert not any("forward" in vars(m) for m in model.modules())


def test_patch_fuses_unless_the_torch_backend_or_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("qwen3", heads=4, kv_heads=2, head_dim=16, layers=2, window=128)

    def swapped() -> int:
        return sum("forward" in vars(m) for m in model.modules())

    cfg = dict(global_size=4, local_size=32, span_size=4, max_spans=5, chunk_size=16)
    with patch(model, ReAttentionConfig(**cfg)):
        assert swapped() == 2 * (2 + 2) + 1 + 2  # per layer: 2 norms + q/k norms; final norm; 2 MLPs
    assert swapped() == 0
    with patch(model, ReAttentionConfig(backend="torch", **cfg)):
        assert swapped() == 0
    monkeypatch.setattr(model_ops, "FUSE", False)
    with patch(model, ReAttentionConfig(**cfg)):
        assert swapped() == 0


def test_modules_whose_forward_is_already_wrapped_are_left_alone() -> None:
    """accelerate's ``device_map`` hooks replace a module's forward on the instance: fusing must
    neither drop that wrapper nor delete it on removal."""
    model = tiny_model("llama", heads=4, kv_heads=2, head_dim=16, layers=1)
    mlp = model.model.layers[0].mlp
    stock = mlp.forward

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return stock(x)

    mlp.forward = wrapped
    swaps = fuse_model_ops(model.model, "auto")
    assert mlp not in {s.module for s in swaps} and len(swaps) == 3  # the norms only
    for s in swaps:
        s.remove()
    assert mlp.forward is wrapped


def test_unknown_activations_keep_the_stock_mlp() -> None:
    model = tiny_model("llama", heads=4, kv_heads=2, head_dim=16, layers=1, hidden_act="relu")
    kinds = {type(s.module).__name__ for s in fuse_model_ops(model.model, "auto")}
    assert kinds == {"LlamaRMSNorm"}
    assert activation_name(torch.nn.GELU()) is None and activation_name(torch.nn.GELU("tanh")) == "gelu_tanh"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_the_fused_ops_keep_the_default_models_logits() -> None:
    """The default model in bf16 on the GPU, patched with and without the fused norms and MLPs, each
    against the same model in fp32 (stock ops): the fused path strays from fp32 no further than the
    stock bf16 path does (bf16's own rounding through 30 layers is the tolerance, as in
    ``test_cudnn_prefix``), and picks fp32's next token as often."""
    from reattn_llm.runtime.models import load_model

    out = {}
    for dtype, fuses in ((torch.float32, (False,)), (torch.bfloat16, (False, True))):
        model, _ = load_model(None, torch.device("cuda"), dtype)
        ids = torch.randint(
            3, model.config.vocab_size, (1, 300), generator=torch.Generator().manual_seed(0)
        ).cuda()
        for fuse in fuses:
            model_ops.FUSE = fuse
            try:
                with torch.no_grad(), patch(model, ReAttentionConfig()):
                    out[dtype, fuse] = model(ids).logits.float()
            finally:
                model_ops.FUSE = True
        del model
    ref = out[torch.float32, False]
    err_stock = (out[torch.bfloat16, False] - ref).abs().max().item()
    err_fused = (out[torch.bfloat16, True] - ref).abs().max().item()
    print(f"max |logit - fp32|: stock bf16 {err_stock:.4f}, fused bf16 {err_fused:.4f}")
    assert err_fused <= 1.5 * err_stock, (err_fused, err_stock)
    agree = {
        f: (out[torch.bfloat16, f].argmax(-1) == ref.argmax(-1)).float().mean().item() for f in (False, True)
    }
    print(f"next token as fp32's: stock bf16 {agree[False]:.3f}, fused bf16 {agree[True]:.3f}")
    assert agree[True] >= agree[False] - 0.02, agree
