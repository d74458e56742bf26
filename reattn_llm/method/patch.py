"""Apply ReAttention to a stock transformers model, reversibly, without copying modeling code.

What ``patch(model, config)`` installs:

* a forward pre-hook on every ``self_attn`` that swaps ``position_embeddings`` for the identity
  (cos = 1, sin = 0: :func:`~reattn_llm.method.rope.identity_rope`, made once), so the stock code
  hands the cache and the attention function un-rotated queries and keys, exactly, and passes the
  cache on to the attention function (``reattn_cache``: transformers forwards the extra keyword),
  which reads the layer's rows through it; the layers' modeling module's ``apply_rotary_pos_emb``
  is wrapped to pass queries and keys through untouched when handed that identity pair
  (:func:`~reattn_llm.method.rope.skip_identity_rope`: no op per layer instead of 10);
* a pre-hook on the model's rotary module that computes the (unused) stock embeddings at
  position 0, so no position at or beyond the window is ever evaluated;
* ``config._attn_implementation = "reattention"``: the function in :mod:`reattn_llm.method.attention`,
  registered with ``AttentionInterface`` (and a mask function with ``AttentionMaskInterface``);
* the RMSNorm and gated-MLP modules' forwards replaced by one-kernel ones where the Triton backend
  runs (:func:`~reattn_llm.method.model_ops.fuse_model_ops`: the stock arithmetic, fewer launches);
* a pre-hook on the base model that supplies a :class:`ReAttentionCache` when the caller asks for
  a cache but passes none, and a ``generate`` wrapper that does the same for generation.

``unpatch`` (or leaving the ``with`` block) removes all of it and restores the stock model.

Gemma 3 mixes sliding-window layers (``config.layer_types``), which stay stock, with full-attention
layers, which get ReAttention: only the full layers get the ``self_attn`` pre-hook, the rotary
pre-hook zeroes positions only for the full layers' table (``layer_type="full_attention"``), the
registered attention and mask functions hand the sliding layers to the model's stock
implementation, and the cache keeps those layers' window only (:class:`SlidingLayer`).

Phi-3 (fused ``qkv_proj``): with a partial rotary (``partial_rotary_factor < 1``), a forward hook
on every ``qkv_proj`` puts the query and key head dims in the order of
:func:`~reattn_llm.method.rope.rotary_permutation` (values untouched), and the RoPE table is
widened to match, so the kernels' whole-head rotate-half RoPE applies the model's partial rotary
exactly (:mod:`reattn_llm.method.rope`). A config ``sliding_window`` below
``max_position_embeddings`` (Phi-3-mini-4k: 2047) is the model's attention window
(:func:`model_window`): the stock model attends over no more, so neither does the scope.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import Cache
from transformers.masking_utils import AttentionMaskInterface

from ..errors import ConfigError, UnsupportedModelError
from ..kv.cache import ReAttentionCache
from ..kv.storage import KVStorage
from .attention import ATTN_NAME, CACHE_KWARG, reattention_forward, reattention_mask, set_stock_sliding
from .config import ReAttentionConfig
from .families import FULL, attention_window, check_model_config, sliding_layers, sliding_windows, text_config
from .model_ops import fuse_model_ops
from .rope import RopeTable, identity_rope, rotary_width, skip_identity_rope
from .state import PatchState, SelectionRecorder

__all__ = [
    "PatchHandle",
    "PatchState",
    "SelectionRecorder",
    "check_supported",
    "make_cache",
    "model_window",
    "patch",
    "resolve_for_model",
    "unpatch",
]

_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        AttentionInterface.register(ATTN_NAME, reattention_forward)
        AttentionMaskInterface.register(ATTN_NAME, reattention_mask)
        _registered = True


def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "model", None)
    if base is not None and hasattr(base, "layers"):
        return base
    lm = getattr(base if base is not None else model, "language_model", None)
    if lm is not None and hasattr(lm, "layers"):  # Gemma3ForConditionalGeneration: its text model
        return lm
    if hasattr(model, "layers"):
        return model
    raise UnsupportedModelError(
        f"{type(model).__name__}: no decoder layers found (expected model.model.layers)."
    )


def check_supported(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless ReAttention can patch ``model`` exactly."""
    check_model_config(getattr(model, "config", None))
    base = _base_model(model)
    if not hasattr(base, "rotary_emb"):
        raise UnsupportedModelError(
            f"{type(model).__name__}: no shared rotary module (model.rotary_emb) found."
        )


def model_window(model_config: Any) -> int:
    """The trained context length: ``max_position_embeddings`` (of the text model, for Gemma 3), or a
    model-wide ``sliding_window`` below it (Phi-3-mini-4k: 2047; :func:`~.families.attention_window`)."""
    w, _ = attention_window(model_config)
    if not w:
        raise UnsupportedModelError(
            "the model config has no max_position_embeddings; pass ReAttentionConfig(window=...)."
        )
    return int(w)


def resolve_for_model(config: ReAttentionConfig, model_config: Any) -> ReAttentionConfig:
    """``config`` resolved against the model's trained window (:func:`model_window`), read from its
    config alone (no weights), with the scope kept within that window: a scope that reaches past it
    (a larger ``window``, or sizes that add up past it) is refused unless ``allow_extrapolation``.

    Raises:
        ConfigError: the scope passes the trained window; the message names sizes that fit and the opt-in.
    """
    trained = model_window(model_config)
    source = attention_window(model_config)[1]
    never = "RoPE positions it was never trained on"
    if source.startswith("sliding_window"):
        never = "distances the stock model never attends over"
    c = config.resolve(trained)
    if c.allow_extrapolation or c.mode == "full" or c.scope <= trained:
        return c
    g, n, span, local = c.global_size, c.max_spans, c.span_size, c.local_size
    over = c.scope - trained
    fixes = []
    if trained - g - local >= 0:  # type: ignore[operator]
        fixes.append(f"max_spans to {(trained - g - local) // span}")  # type: ignore[operator]
    if local - over >= c.chunk_size:  # type: ignore[operator]
        fixes.append(f"local_size to {local - over}")  # type: ignore[operator]
    fit = f"lower {' or '.join(fixes)}, or " if fixes else ""
    window = f" (window={c.window} is above it)" if c.window > trained else ""  # type: ignore[operator]
    raise ConfigError(
        f"The attention scope G + max_spans*span + L = {g} + {n}*{span} + {local} = {c.scope} reaches "
        f"{over} positions past the model's trained window of {trained} tokens ({source})"
        f"{window}: {never}. Fix: {fit}leave the sizes and window unset "
        "(they are fitted to the model), or pass allow_extrapolation=True to use these positions anyway."
    )


class PatchHandle:
    """A patched model; ``unpatch()`` (or the end of a ``with`` block) restores the stock model."""

    def __init__(self, model: nn.Module, state: PatchState | None) -> None:
        self.model = model
        self.state = state
        self._hooks: list[Any] = []
        self._saved_attn: Any = None
        self._attn_config: Any = getattr(model, "config", None)
        self.active = False

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpatch()

    def unpatch(self) -> None:
        """Remove every hook and restore the attention implementation and ``generate``."""
        if not self.active:
            return
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._attn_config._attn_implementation = self._saved_attn
        set_stock_sliding(self._attn_config, None)
        if "generate" in vars(self.model):
            del self.model.generate
        if self.state is not None:
            for layer in self.state.layers:
                if hasattr(layer, "_reattn_state"):
                    del layer._reattn_state
        if getattr(self.model, "_reattn_handle", None) is self:
            del self.model._reattn_handle
        self.active = False


def _attn_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``self_attn`` pre-hook: identity RoPE (un-rotated q/k), and the cache on to the attention function."""
    pe = kwargs.get("position_embeddings")
    if pe is None:
        raise RuntimeError("ReAttention expects position_embeddings as a keyword argument of self_attn.")
    kwargs["position_embeddings"] = identity_rope(*pe)
    kwargs[CACHE_KWARG] = kwargs.get("past_key_values")
    return args, kwargs


def patch(model: nn.Module, config: ReAttentionConfig | None = None) -> PatchHandle:
    """Apply ReAttention to a supported transformers causal LM in place.

    Args:
        model: a Llama / Mistral / Qwen2 / Qwen3 / Gemma 3 / Phi-3 model (``*ForCausalLM``, the
            base model, or Gemma 3's ``*ForConditionalGeneration``).
        config: sizes; unset ones are resolved against the model's window. ``mode="full"``
            leaves the model stock (the handle is a no-op), ``"streaming"`` keeps no middle spans.

    Returns:
        A :class:`PatchHandle`; use it as a context manager or call ``unpatch()``.
    """
    config = config or ReAttentionConfig()
    check_supported(model)
    existing = getattr(model, "_reattn_handle", None)
    if existing is not None:
        existing.unpatch()
    resolved = resolve_for_model(config, model.config)
    if resolved.mode == "full":
        return PatchHandle(model, None)
    _register()
    base = _base_model(model)
    sliding = sliding_layers(model.config)
    table = FULL if any(sliding) else None  # Gemma 3: the full layers' RoPE table
    partial = _partial_rotary(base, sliding)
    rope = RopeTable(base.rotary_emb, resolved.window, table, partial)  # type: ignore[arg-type]
    state = PatchState(config=resolved, rope=rope)
    patched = [layer.self_attn for i, layer in enumerate(base.layers) if not sliding[i]]
    orders = (
        [_QKVOrder(attn, rope.perm) for attn in patched] if rope.perm is not None else []
    )  # checked first
    handle = PatchHandle(model, state)
    handle._attn_config = attn_config = base.config  # the text model's config (== model.config for Llama)
    handle._saved_attn = attn_config._attn_implementation
    for attn in patched:  # sliding layers stay stock: delegated by set_stock_sliding
        attn._reattn_state = state
        state.layers.append(attn)
        handle._hooks.append(attn.register_forward_pre_hook(_attn_pre_hook, with_kwargs=True))
    for name in dict.fromkeys(type(attn).__module__ for attn in patched):
        skip = skip_identity_rope(name)
        if skip is not None:
            handle._hooks.append(skip)
    for attn, order in zip(patched, orders, strict=False):
        handle._hooks.append(attn.qkv_proj.register_forward_hook(order))
    handle._hooks.extend(fuse_model_ops(base, resolved.backend))  # RMSNorm, gated MLP: one kernel each

    def rotary_pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if state.rope.building:
            return None
        if table is not None and (args[2] if len(args) >= 3 else kwargs.get("layer_type")) != table:
            return None  # a sliding layers' table: stock positions (they only span the local window)
        if len(args) >= 2:
            args = (args[0], torch.zeros_like(args[1]), *args[2:])
        elif "position_ids" in kwargs:
            kwargs["position_ids"] = torch.zeros_like(kwargs["position_ids"])
        return args, kwargs

    handle._hooks.append(base.rotary_emb.register_forward_pre_hook(rotary_pre, with_kwargs=True))
    num_layers = len(base.layers)
    storage = KVStorage.from_config(resolved)
    windows = sliding_windows(model.config)

    def new_cache() -> ReAttentionCache:
        return ReAttentionCache(num_layers, storage=storage, sliding_windows=windows)

    def base_pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        pkv = kwargs.get("past_key_values")
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(model.config, "use_cache", True)
        if pkv is None and use_cache:
            kwargs["past_key_values"] = new_cache()
        elif isinstance(pkv, Cache) and any(
            s and not (i < len(sliding) and sliding[i])
            for i, s in enumerate(getattr(pkv, "is_sliding", []) or [])
        ):
            raise ValueError(
                "This cache drops old tokens (sliding-window layers), which ReAttention needs: pass "
                "reattn_llm.ReAttentionCache() or no cache at all."
            )
        return args, kwargs

    handle._hooks.append(base.register_forward_pre_hook(base_pre, with_kwargs=True))
    stock_generate = model.generate

    @functools.wraps(stock_generate)
    def generate(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = new_cache()
        return stock_generate(*args, **kwargs)

    model.generate = generate  # type: ignore[method-assign]
    if any(sliding):
        set_stock_sliding(attn_config, handle._saved_attn or "sdpa")
    attn_config._attn_implementation = ATTN_NAME
    model._reattn_handle = handle
    handle.active = True
    return handle


def unpatch(model: nn.Module) -> None:
    """Restore a model patched by :func:`patch` (no-op if it is not patched)."""
    handle = getattr(model, "_reattn_handle", None)
    if handle is not None:
        handle.unpatch()


def make_cache(model: nn.Module, reserve: int = 0, max_bytes: int | None = None) -> ReAttentionCache:
    """A fresh :class:`ReAttentionCache` for a patched ``model``, with its config's storage (fp8 / offload)."""
    handle = getattr(model, "_reattn_handle", None)
    state = None if handle is None else handle.state
    storage = None if state is None else KVStorage.from_config(state.config)  # None: an unpatched model
    n = text_config(model.config).num_hidden_layers
    return ReAttentionCache(
        n,
        reserve=reserve,
        max_bytes=max_bytes,
        storage=storage,
        sliding_windows=sliding_windows(model.config),
    )


def _partial_rotary(base: nn.Module, sliding: list[bool]) -> tuple[int, int] | None:
    """``(head_dim, rotary width)`` when the patched layers rotate fewer dims than their head and
    project q, k, v in one fused ``qkv_proj`` (Phi-3), which the dims' permutation hooks; else None
    (full rotary; a partial rotary without a fused projection keeps the model's layout, which the
    torch kernels rotate exactly and the Triton kernel hands to them)."""
    attn = next((layer.self_attn for i, layer in enumerate(base.layers) if not sliding[i]), None)
    head_dim = getattr(attn, "head_dim", None)
    if attn is None or not head_dim or not isinstance(getattr(attn, "qkv_proj", None), nn.Module):
        return None
    r = rotary_width(base.config, head_dim)
    return None if r >= head_dim else (int(head_dim), r)


class _QKVOrder:
    """Forward hook of a fused ``qkv_proj`` (``[.., (H + 2 Hkv) * D]`` out): every query and key head's
    dims in ``perm``'s order (:func:`~reattn_llm.method.rope.rotary_permutation`), values untouched."""

    def __init__(self, attn: nn.Module, perm: torch.Tensor) -> None:
        d = perm.numel()
        heads = attn.config.num_attention_heads
        kv = getattr(attn, "num_key_value_heads", None) or attn.config.num_key_value_heads
        out = getattr(attn.qkv_proj, "out_features", (heads + 2 * kv) * d)
        if out != (heads + 2 * kv) * d:
            raise UnsupportedModelError(
                f"qkv_proj gives {out} features, not (heads {heads} + 2 x kv heads {kv}) x head_dim {d}: "
                "an attention layout ReAttention does not know."
            )
        qk = (torch.arange(heads + kv)[:, None] * d + perm[None]).flatten()
        self.index = torch.cat((qk, torch.arange((heads + kv) * d, out)))
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        idx = self._on.get(out.device)
        if idx is None:
            idx = self._on[out.device] = self.index.to(out.device)
        return out.index_select(-1, idx)
