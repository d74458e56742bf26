"""The model's own small ops fused on the GPU: RMSNorm and the gated MLP's activation.

ReAttention bounds the attention; the rest of a decoder layer stays the stock model's, and two of
its parts run as chains of small kernels: every RMSNorm as about eight (a cast, ``pow``, ``mean``,
``+ eps``, ``rsqrt``, two products and a cast back) and the MLP's ``act(gate) * up`` as two with
an intermediate the size of the MLP's hidden states between them. In a decode step, whose
kernels each take a few microseconds, the norms alone are some 500 of a 32-layer model's launches;
in an 8,192-token prefill forward they move about 2 GB a layer. :func:`fuse_model_ops` gives the
patched model's RMSNorm and gated-MLP modules a forward that runs one kernel instead
(:func:`~reattn_llm.kernels.rms_norm`, :func:`~reattn_llm.kernels.gated_act`), with the stock
arithmetic (the same rounding points; only the mean's summation order differs).

Which modules: the classes whose forward is known to be that arithmetic (:data:`LLAMA_NORMS`,
:data:`GEMMA_NORMS`, :data:`GATED_MLPS`, :data:`FUSED_GATE_UP_MLPS`, checked against the stock
modules by ``tests/test_model_ops.py``), and an MLP only when its activation is SiLU or GELU's tanh
approximation; a module whose forward is already replaced on the instance (accelerate's device
hooks under ``device_map``) is left alone. A fused forward runs where the Triton backend would
(``ReAttentionConfig.backend``: CUDA tensors, or Triton's interpreter), outside autograd (no
backward: with gradients on, the stock forward runs); anywhere else the module's own forward
runs. ``unpatch`` restores the modules. :data:`FUSE` switches it off for A/B measurements
(``benchmarks/kernels.py --stock-ops``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..kernels import gated_act, resolve_backend, rms_norm
from ..kernels._triton_utils import MAX_NORM_WIDTH, interpreting

__all__ = ["FUSE", "FUSED_GATE_UP_MLPS", "GATED_MLPS", "GEMMA_NORMS", "LLAMA_NORMS", "fuse_model_ops"]

#: Off: the patched model keeps every stock RMSNorm and MLP forward (the A/B baseline).
FUSE = True
#: ``weight * (x * r).to(dtype)``: eps in ``variance_epsilon``
LLAMA_NORMS = frozenset(
    {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm", "SmolLM3RMSNorm"}
)
#: ``((x * r) * (1 + weight)).to(dtype)`` in fp32: eps in ``eps``
GEMMA_NORMS = frozenset({"Gemma3RMSNorm"})
#: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``
GATED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Gemma3MLP", "SmolLM3MLP"})
#: ``gate, up = gate_up_proj(x).chunk(2, -1); down_proj(up * activation_fn(gate))``
FUSED_GATE_UP_MLPS = frozenset({"Phi3MLP"})


class _Swap:
    """A module's forward replaced by ``forward`` (an instance attribute); ``remove()`` restores it."""

    def __init__(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        self.module, self.forward = module, forward
        module.forward = forward  # type: ignore[method-assign]

    def remove(self) -> None:
        if self.module.__dict__.get("forward") is self.forward:
            del self.module.forward


def activation_name(act: nn.Module) -> str | None:
    """``"silu"`` or ``"gelu_tanh"`` for a transformers activation module the kernel computes, else None."""
    if isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation":
        return "silu"
    if type(act).__name__ == "GELUTanh":
        return "gelu_tanh"
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return "gelu_tanh"
    return None


def fuse_model_ops(model: nn.Module, backend: str = "auto") -> list[_Swap]:
    """Give ``model``'s known RMSNorm and gated-MLP modules a one-kernel forward (see the module
    docstring). ``backend="torch"`` (or :data:`FUSE` off) changes nothing.

    Returns:
        One handle per replaced forward; ``remove()`` restores each (``PatchHandle`` does on unpatch).
    """
    if not FUSE or backend == "torch":
        return []
    swaps = []
    for module in model.modules():
        name = type(module).__name__
        # a forward already replaced on the instance (accelerate's device hooks, another patch): left alone
        if "forward" in vars(module):
            continue
        if name in LLAMA_NORMS or name in GEMMA_NORMS:
            swaps.append(_Swap(module, _norm_forward(module, backend, gemma=name in GEMMA_NORMS)))
        elif name in GATED_MLPS or name in FUSED_GATE_UP_MLPS:
            act = activation_name(getattr(module, "act_fn" if name in GATED_MLPS else "activation_fn", None))
            if act is not None:
                swaps.append(
                    _Swap(module, _mlp_forward(module, backend, act, fused=name in FUSED_GATE_UP_MLPS))
                )
    return swaps


def _kernel_backend(backend: str, module: nn.Module, x: torch.Tensor) -> str | None:
    """``"triton"`` when the fused kernel runs on ``x`` for ``module``, else None (the stock forward)."""
    if x.device.type != "cuda" and not (interpreting() and backend == "triton"):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        return None  # no backward here: autograd keeps the stock ops
    return "triton" if resolve_backend(backend, x.device) == "triton" else None


def _norm_forward(module: nn.Module, backend: str, gemma: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    stock = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        w = module.weight
        kb = _kernel_backend(backend, module, x)
        if kb is None or x.shape[-1] > MAX_NORM_WIDTH or x.stride(-1) != 1 or w.device != x.device:
            return stock(x)
        if gemma:
            return rms_norm(x, w, module.eps, 1.0, False, backend=kb)
        return rms_norm(x, w, module.variance_epsilon, backend=kb)

    return forward


def _mlp_forward(
    module: nn.Module, backend: str, act: str, fused: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    stock = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        kb = _kernel_backend(backend, module, x)
        if kb is None:
            return stock(x)
        if fused:
            gate, up = module.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = module.gate_proj(x), module.up_proj(x)
        if gate.dtype != up.dtype or gate.shape != up.shape:  # the kernel's pair only; else as stock
            act_fn = module.activation_fn if fused else module.act_fn
            return module.down_proj(up * act_fn(gate) if fused else act_fn(gate) * up)
        return module.down_proj(gated_act(gate, up, act, backend=kb))

    return forward
