"""Decode steps without per-layer host work: each bucket of steps replayed from one CUDA graph.

An eager decode step launches every kernel of every layer from Python (thousands per token for an
8B model), and at these sizes the host, not the GPU, sets the pace. A captured step is one
``graph.replay()``. What a graph needs is a step whose shapes, addresses and host-side numbers do
not change, and a decode step's do: the cache grows by a row, the middle by a row. So steps run
**static** in buckets of ``bucket`` steps (:class:`~reattn_llm.method.state.StaticStep`):

* the middle that every step of a bucket scores is fixed, ``[G, G + M)`` with
  ``M = end - G - L'`` (``end``: the bucket's last step's row count, ``L'``: the decode local window);
* each step's local rows are ``[G + M, end)``, those not written yet masked, so the local window
  holds ``L' - (end - T)`` rows at step ``T``: up to ``bucket - 1`` fewer than a per-step window at
  a bucket's first step, never more (the scope's bound holds);
* the cache views reach ``end`` and a step writes its K/V at a device row
  (:meth:`~reattn_llm.kv.layer.KVLayer.hold_static`: dense rows, and fp8 rows on the device); the
  host advances its counts after.

The first step of a bucket runs eagerly (it compiles what it needs and is the warm-up the capture
wants), then the bucket's graph is captured and replayed by the others. The eager static step and
the replay compute the same thing, which ``tests/test_graphs.py`` checks on the GPU; with
``capture=False`` the decoder runs every step eagerly in the same static way (the CPU's path, and
the reference). Two-level selection runs static too (its block summaries cover the bucket's fixed
middle, computed by the bucket's eager first step, read in place after). Steps that sync on
purpose or keep host state stay eager: see :func:`unsupported`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..kv.dense import DenseLayer
from ..kv.tiered import TieredLayer
from ..method.state import PatchState, StaticStep

#: Decode steps per captured graph (a bucket) at most: more steps re-capture less often (a capture
#: and the bucket's eager first step cost about ten replayed steps), but the first steps of a
#: bucket see a shorter local window (at most ``bucket - 1`` rows fewer); see :func:`bucket_for`.
DEFAULT_BUCKET = 128


def bucket_for(local: int) -> int:
    """The engine's bucket for a decode local window of ``local`` rows: ``local // 16`` (a
    bucket's first step loses at most a sixteenth of its local rows), at most
    :data:`DEFAULT_BUCKET`, at least 1. The Llama-3.1-8B shape with the paper's scope (2,048 local
    rows while decoding) gets 128, the default model's scope (512) 32."""
    return max(1, min(DEFAULT_BUCKET, local // 16))


def unsupported(cache: Any, state: PatchState) -> str | None:
    """Why decode steps of this model and cache cannot run static, or None when they can."""
    cfg = state.config
    layers = getattr(cache, "layers", [])
    if not layers:
        return "the cache holds no layers yet (prefill the prompt first)"
    if not all(isinstance(layer, (DenseLayer, TieredLayer)) for layer in layers):
        return "the cache has sliding-window layers (Gemma 3), which keep only their window"
    if any(isinstance(layer, TieredLayer) and layer.storage.offload != "none" for layer in layers):
        return "offloaded rows are read from host memory, with a sync per layer on purpose"
    if len({layer.keys.device for layer in layers if layer.keys is not None}) > 1:
        return "the layers lie on several devices (device_map)"
    if cfg.mode != "reattention":
        return f"mode={cfg.mode!r} (static steps are for ReAttention's selection)"
    if cfg.decode_spans == "running":
        return "decode_spans='running' carries each step's votes to the next on the host"
    if state.recorder is not None or state.observers:
        return "citations and observers read every step on the host"
    if state.rope.perm is not None:
        return "a partial-rotary model permutes head dims with a host index"
    return None


class EagerSteps:
    """The engine's plain decode steps behind :class:`GraphDecoder`'s ``step`` / ``close``."""

    def __init__(self, engine: Any, cache: Any) -> None:
        self.engine, self.cache = engine, cache

    def step(self, token: torch.Tensor) -> torch.Tensor:
        return self.engine.decode_one_token(token, self.cache)

    def close(self) -> None:
        pass


def engine_decoder(engine: Any, cache: Any, cite: bool) -> GraphDecoder | EagerSteps:
    """How an engine decodes an answer: from CUDA graphs when its config allows them
    (``cuda_graphs``, the default) and they can run here (a CUDA device, no citations, nothing
    :func:`unsupported` names), else eager steps (:meth:`~reattn_llm.runtime.engine.Engine.decode_one_token`)."""
    state = engine._handle.state if engine._handle is not None else None
    if (
        state is None
        or not state.config.cuda_graphs
        or engine.device.type != "cuda"
        or cite
        or unsupported(cache, state) is not None
    ):
        return EagerSteps(engine, cache)
    return GraphDecoder(engine.model, cache, state)


class GraphDecoder:
    """Decode steps in buckets of ``bucket``, each bucket's steps replayed from one CUDA graph.

    Args:
        model: the patched model.
        cache: its :class:`~reattn_llm.kv.cache.ReAttentionCache` holding the prompt.
        state: the model's :class:`~reattn_llm.method.state.PatchState`.
        bucket: steps per bucket (at most the decode local window); default :func:`bucket_for`.
        capture: capture graphs (CUDA); False runs every step eagerly, static all the same.

    Use as a context manager (or call :meth:`close`): leaving it hands the cache back with its
    rows counted, ready for eager steps, prefix reuse or cropping.
    """

    def __init__(
        self, model: Any, cache: Any, state: PatchState, bucket: int | None = None, capture: bool = True
    ) -> None:
        reason = unsupported(cache, state)
        if reason is not None:
            raise ValueError(f"decode steps cannot run static here: {reason}; decode eagerly instead.")
        cfg = state.config
        first = cache.layers[0]  # the answer's first step decides (past the limit, it stays so)
        local, _ = cfg.decode_sizes(pinned=first.pinned is not None, total=first.length + 1)
        bucket = bucket_for(local) if bucket is None else bucket
        if not 1 <= bucket <= local:
            raise ValueError(f"bucket={bucket}: use 1 <= bucket <= {local}, the decode local window.")
        self.model, self.cache, self.state, self.bucket = model, cache, state, bucket
        self.local = local
        self.capture = capture
        self.length = cache.layers[0].length  # rows written (the host's count)
        device = cache.layers[0].keys.device
        self._token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self._row = torch.zeros(1, dtype=torch.long, device=device)
        self._step = StaticStep(
            torch.zeros(1, dtype=torch.long, device=device),
            0,
            torch.full((1,), -1, dtype=torch.long, device=device),
        )
        self._graph: Any = None
        self._logits: torch.Tensor | None = None
        self._end = -1
        self.captures = 0

    def _static_ok(self, total: int) -> bool:
        """Whether a bucket starting at step ``total`` runs static: its end (``total + bucket - 1``
        rows) leaves a middle of at least one row, and this step is already past ``G + L``, where
        the attention stops being stock full attention (else the step runs eagerly)."""
        g = self.state.config.global_size
        return total + self.bucket - 1 - g - self.local >= 1 and total > g + self.state.config.local_size  # type: ignore[operator]

    def _hold(self, end: int | None) -> None:
        """Put every layer in static mode for a bucket ending at ``end`` rows, or (None) back to
        eager with :attr:`length` rows."""
        for layer in self.cache.layers:
            layer.hold_static(None if end is None else self._row, end or 0, self.length)
        if end is not None:
            self._step.middle = end - self.state.config.global_size - self.local  # type: ignore[operator]
        self._end = -1 if end is None else end

    def _forward(self) -> torch.Tensor:
        out = self.model(input_ids=self._token, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1]

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """One decode step: ``token [1, 1]`` (on the device) -> the next logits ``[1, V]``.

        The model's attention runs static only during the call (``state.static``), so another
        request's steps on the same model between two of these stay eager."""
        total = self.length + 1
        self._token.copy_(token.reshape(1, 1))
        self._row.fill_(total - 1)
        self._step.total.fill_(total)
        if total > self._end:  # a new bucket: an eager static step, then capture the others
            self._graph = self._logits = None  # the old graph and its pool go before the next capture
            if not self._static_ok(total):  # too short for a middle: one plain eager step
                if self._end >= 0:
                    self._hold(None)
                self.length = total
                return self._forward()
            self._hold(total + self.bucket - 1)
        self.state.static = self._step
        try:
            if self._graph is not None:
                self._graph.replay()
                logits = self._logits
            else:
                logits = self._forward()
                if self.capture and total == self._end - self.bucket + 1 and total < self._end:
                    self._capture()
        finally:
            self.state.static = None
            if self.state.track_positions:  # what the static steps applied, for max_position
                self.state._pending.append(self._step.max_position.clone())
        self.length = total
        return logits.clone()  # type: ignore[union-attr]

    def _capture(self) -> None:
        """Capture the bucket's step. A capture that fails (something in the step the graph cannot
        hold) is reported once and the decoder goes on with the same static steps run eagerly: the
        answer does not depend on it."""
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._logits = self._forward()
        except Exception as e:  # any capture error: keep decoding without graphs
            self._graph = self._logits = None
            self.capture = False
            warnings.warn(
                f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding on without graphs. "
                "Pass ReAttentionConfig(cuda_graphs=False) to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self._graph = graph
        self.captures += 1

    def close(self) -> None:
        """Back to eager decoding: the layers hold :attr:`length` rows, the graph is freed."""
        if self._end >= 0:
            self._hold(None)
        self._graph = self._logits = None

    def __enter__(self) -> GraphDecoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
