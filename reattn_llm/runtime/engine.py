"""The engine: one model in memory, an explicit generation loop, shared by every wrapper.

Read it in one sitting: :meth:`Engine.prefill` feeds the prompt in chunks (with a progress
bar: tokens, tokens/s, ETA), :meth:`Engine.decode_one_token` runs one step, and
:meth:`Engine.generate` loops, sampling, stopping on EOS, on stop strings or on the token
budget, and streams text deltas. Requests are served one at a time in arrival order.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import ContextTooLongError, OutOfMemoryError
from ..kv.cache import ReAttentionCache
from ..kv.storage import KVStorage
from ..method.config import ReAttentionConfig, chunk_bounds
from ..method.patch import PatchHandle, SelectionRecorder, make_cache, model_window, patch
from .capacity import Capacity, estimate_capacity, estimate_capacity_split
from .citations import Citation, cite
from .fifo import FifoLock
from .models import (
    DEFAULT_MODEL,
    is_default,
    load_config,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from .prefix import Prefix, grid_length, load_prefix, save_prefix

#: Engine settings the LangChain and LlamaIndex wrappers expose as fields of the same names.
WRAPPER_SETTINGS = ("device", "dtype", "config", "progress", "device_map")

ProgressFn = Callable[[int, int, float], None]


@dataclass
class SamplingParams:
    """Decoding settings. ``temperature == 0`` is greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 = off).")
        self.stop = [s for s in (self.stop or []) if s]


@dataclass
class Completion:
    """One answer and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    prefill_seconds: float
    decode_seconds: float
    model_name: str
    citations: list[Citation] = field(default_factory=list)
    max_position: int = -1


class Engine:
    """A loaded model with ReAttention applied, and the generation loop.

    Args:
        model: Hub id or local folder; None for the embedded default (SmolLM2-135M-Instruct).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU) or a dtype / name.
        config: ReAttention sizes; default: the paper's, scaled to the model's window.
        progress: show a prefill progress bar for prompts longer than one chunk.
        keep_prefix: keep the last prompt's K/V so that the next prompt sharing its beginning
            (the same document, another question) prefills only its own tokens.
        max_cache_bytes: cap on the KV cache of one request (default: device memory is the cap).

    Construction is cheap; weights load on first use (:meth:`load`).
    """

    _shared: ClassVar[dict[tuple, Engine]] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        config: ReAttentionConfig | None = None,
        progress: bool = True,
        keep_prefix: bool = True,
        max_cache_bytes: int | None = None,
        device_map: str | dict[str, Any] | None = None,
    ) -> None:
        if max_cache_bytes is not None and max_cache_bytes <= 0:
            raise ValueError(f"max_cache_bytes={max_cache_bytes}: must be positive (or None for no cap).")
        self.max_cache_bytes = max_cache_bytes
        self.model_id = model
        self.keep_prefix = keep_prefix
        self._prefix: Prefix | None = None
        self.last_prefill_tokens = 0
        self.model_name = DEFAULT_MODEL if is_default(model) else str(model)
        self.device_map = device_map
        if device_map is not None and (device is None or str(device) == "auto"):
            device = "cuda:0" if torch.cuda.is_available() else "cpu"  # where the embeddings (the inputs) go
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.user_config = config or ReAttentionConfig()
        self.progress = progress
        self._model: Any = None
        self._tokenizer: Any = None
        self._handle: PatchHandle | None = None
        self._config: ReAttentionConfig | None = None
        self._load_lock = threading.Lock()
        self._lock = FifoLock()

    @classmethod
    def shared_for(cls, model: str | None, wrapper: Any) -> Engine:
        """:meth:`shared` with the engine settings a wrapper carries as fields (:data:`WRAPPER_SETTINGS`)."""
        return cls.shared(model, **{name: getattr(wrapper, name) for name in WRAPPER_SETTINGS})

    @classmethod
    def shared(cls, model: str | None = None, **kwargs: Any) -> Engine:
        """One engine per (model, device, dtype, config): every wrapper reuses the same weights."""
        probe = cls(model, **kwargs)
        key = (
            probe.model_name,
            str(probe.device),
            str(probe.dtype),
            probe.user_config,
            repr(probe.device_map),
        )
        with cls._shared_lock:
            return cls._shared.setdefault(key, probe)

    # -- loading -------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._load_lock:
                if self._tokenizer is None:
                    self._tokenizer = self._model_tokenizer() if self._model is None else self._tokenizer
        return self._tokenizer

    def _model_tokenizer(self) -> Any:
        load_config(self.model_id)  # refuse unsupported models before anything heavy
        return load_tokenizer(self.model_id)

    @property
    def config(self) -> ReAttentionConfig:
        """The resolved ReAttention config (reads only the model's config, not its weights)."""
        if self._config is None:
            self._config = self.user_config.resolve(model_window(load_config(self.model_id)))
        return self._config

    @property
    def model(self) -> Any:
        self.load()
        return self._model

    def load(self) -> Engine:
        """Load weights and apply ReAttention (once)."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    cfg = self.config
                    model, tok = load_model(self.model_id, self.device, self.dtype, self.device_map)
                    if self.device_map is not None:
                        self.device = model.get_input_embeddings().weight.device
                    self._handle = patch(model, cfg)
                    self._tokenizer = tok
                    self._model = model
        return self

    # -- prompts and sizes ---------------------------------------------------------------------
    def encode(self, prompt: str | list[dict[str, str]], chat: bool = True) -> tuple[list[int], str]:
        """Token ids and the exact text they encode: a chat template is applied to message
        lists, and to a plain string when ``chat`` is true and the tokenizer has one."""
        tok = self.tokenizer
        if isinstance(prompt, list) or (chat and getattr(tok, "chat_template", None)):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = prompt
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return list(ids), text

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under this model's tokenizer (no template)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def capacity(self) -> Capacity:
        """How many tokens this model can hold on this device (KV bytes per token vs memory)."""
        if self.device_map is not None and self._model is not None:
            layers = self._model.get_decoder().layers
            devices = [next(layer.parameters()).device for layer in layers]
            cap = estimate_capacity_split(load_config(self.model_id), devices, self.dtype, self.config)
        else:
            cap = estimate_capacity(
                load_config(self.model_id),
                self.device,
                self.dtype,
                self.config,
                weights_loaded=self._model is not None,
            )
        if self.max_cache_bytes is not None:
            cap = dataclasses.replace(
                cap, max_tokens=min(cap.max_tokens, self.max_cache_bytes // cap.kv_bytes_per_token)
            )
        return cap

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise :class:`ContextTooLongError` before any prefill if the request cannot fit."""
        cap = self.capacity()
        need = prompt_tokens + max_new_tokens
        if need > cap.max_tokens:
            raise ContextTooLongError(
                f"The prompt has {prompt_tokens} tokens (+{max_new_tokens} to generate = {need}), but this model "
                f"holds at most {cap.max_tokens} tokens on {self.device} ({cap.explain()}). Shorten the document, "
                "lower max_new_tokens, or use a device with more memory."
            )

    # -- the loop ------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self,
        ids: torch.Tensor,
        cache: ReAttentionCache,
        on_progress: ProgressFn | None = None,
        start: int = 0,
        tail: int | None = None,
    ) -> torch.Tensor:
        """Feed ``ids [1, T]`` from ``start`` (a multiple of the chunk: the cache already holds
        ``ids[:, :start]``) in chunks of ``chunk_size``, the last ``tail_size`` tokens apart;
        return the last logits ``[1, V]``."""
        total = ids.shape[1]
        cfg = self.config
        chunk = self.prefill_chunk
        tail = cfg.tail_size if tail is None else tail
        bar = self._bar(total - start)
        t0 = time.perf_counter()
        logits = None
        self.last_prefill_tokens = total - start
        try:
            for s, e in chunk_bounds(total - start, chunk, tail):
                s, e = s + start, e + start
                piece = ids[:, s:e]
                out = self.model(input_ids=piece, past_key_values=cache, use_cache=True, logits_to_keep=1)
                logits = out.logits[:, -1].to(self.device)  # from the last layer's device (device_map)
                done = e
                if bar is not None:
                    bar.update(piece.shape[1])
                if on_progress is not None:
                    on_progress(done - start, total - start, time.perf_counter() - t0)
        finally:
            if bar is not None:
                bar.close()
        assert logits is not None  # total >= 1 is checked by generate()
        return logits

    @property
    def prefill_chunk(self) -> int:
        """Tokens per prefill forward (the config's chunk; 2048 for the stock baseline)."""
        return self.config.chunk_size if self.config.mode != "full" else 2048  # type: ignore[return-value]

    # -- reusable prefixes ---------------------------------------------------------------------
    def _cache_for(self, ids: list[int], reserve: int) -> tuple[ReAttentionCache, int]:
        """A cache holding the longest reusable prefix of ``ids`` (and how many tokens that is)."""
        prefix, self._prefix = self._prefix, None
        if prefix is not None and self.keep_prefix:
            n = prefix.reuse_length(ids, self.prefill_chunk)
            if n > 0:
                for layer in prefix.cache.layers:
                    layer.crop(n)  # type: ignore[union-attr]
                prefix.cache.reserve(reserve)
                return prefix.cache, n
        del prefix
        return make_cache(self.model, reserve=reserve, max_bytes=self.max_cache_bytes), 0

    def _keep(self, ids: list[int], cache: ReAttentionCache, reusable: int) -> None:
        if self.keep_prefix:
            self._prefix = Prefix(ids=list(ids), reusable=reusable, cache=cache)

    def forget_prefix(self) -> None:
        """Free the kept K/V of the last prompt."""
        self._prefix = None

    def _meta(self) -> dict[str, str]:
        return {"model": self.model_name, "dtype": str(self.dtype), "config": repr(self.config)}

    @torch.inference_mode()
    def warm(self, text: str, chat: bool = True) -> int:
        """Prefill a document alone (as the start of a later prompt ``text + question``) and keep
        it; returns the tokens that later prompts can reuse."""
        a, _ = self.encode(text + "\n\nA", chat=chat)
        b, _ = self.encode(text + "\n\nB", chat=chat)
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        ids = a[:n]
        with self._lock:
            cache, start = self._cache_for(ids, len(ids))
            try:
                if start < len(ids):
                    self.prefill(torch.tensor([ids], device=self.device), cache, start=start, tail=0)
            except BaseException:
                del cache
                raise
            reusable = (len(ids) // self.prefill_chunk) * self.prefill_chunk
            self._keep(ids, cache, reusable)
        return reusable

    def save_prefix(self, path: str) -> int:
        """Save the kept prefix (see :meth:`warm`) to ``path``; returns the tokens saved."""
        with self._lock:
            if self._prefix is None or self._prefix.reusable == 0:
                raise ValueError(
                    "No reusable document prefix to save: call warm(document) (or ask once) first."
                )
            save_prefix(self._prefix, path, self._meta())
            return self._prefix.reusable

    def load_prefix(self, path: str) -> int:
        """Load a prefix saved by :meth:`save_prefix` (checked against this model and config)."""
        prefix = load_prefix(path, self._meta(), self.device, KVStorage.from_config(self.config))
        with self._lock:
            self._prefix = prefix
        return prefix.reusable

    @torch.inference_mode()
    def decode_one_token(self, token: torch.Tensor, cache: ReAttentionCache) -> torch.Tensor:
        """One step: ``token [1, 1]`` -> next logits ``[1, V]``."""
        return (
            self.model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1].to(self.device)
        )

    def generate(
        self,
        prompt: str | list[dict[str, str]],
        params: SamplingParams | None = None,
        *,
        chat: bool = True,
        cite_sources: bool = False,
        on_progress: ProgressFn | None = None,
    ) -> Iterator[str]:
        """Stream the answer's text deltas; the final :class:`Completion` is the generator's
        return value (``StopIteration.value``), also kept as :attr:`last`."""
        params = params or SamplingParams()
        ids, text = self.encode(prompt, chat=chat)
        if not ids:
            raise ValueError("The prompt is empty: give the model some text to read.")
        self.check_fits(len(ids), params.max_new_tokens)
        with self._lock:
            completion = yield from self._generate_locked(ids, text, params, cite_sources, on_progress)
        self.last = completion
        return completion

    def _generate_locked(
        self,
        ids: list[int],
        text: str,
        params: SamplingParams,
        cite_sources: bool,
        on_progress: ProgressFn | None,
    ) -> Iterator[str]:
        self.load()
        tok = self.tokenizer
        state = self._handle.state if self._handle is not None else None
        cache, start = self._cache_for(ids, len(ids) + params.max_new_tokens)
        gen = torch.Generator(device=self.device)
        if params.seed is not None:
            gen.manual_seed(params.seed)
        eos = self._eos_ids()
        out_ids: list[int] = []
        emitted = ""
        finish = "length"
        recorder = None
        try:
            t0 = time.perf_counter()
            logits = self.prefill(torch.tensor([ids], device=self.device), cache, on_progress, start=start)
            t1 = time.perf_counter()
            if cite_sources and state is not None:
                recorder = state.recorder = SelectionRecorder()
            hold = max((len(s) for s in params.stop), default=1) - 1
            for _ in range(params.max_new_tokens):
                nxt = self._sample(logits, params, gen)
                if nxt in eos:
                    finish = "stop"
                    break
                out_ids.append(nxt)
                full = tok.decode(out_ids, skip_special_tokens=True)
                cut = _first_stop(full, params.stop)
                if cut is not None:
                    full, finish = full[:cut], "stop"
                    if len(full) > len(emitted):
                        yield full[len(emitted) :]
                    emitted = full
                    break
                safe = len(full) - hold
                if full.endswith("\ufffd"):
                    safe = min(safe, len(full) - 1)
                if safe > len(emitted):
                    yield full[len(emitted) : safe]
                    emitted = full[:safe]
                if len(out_ids) == params.max_new_tokens:
                    break
                logits = self.decode_one_token(torch.tensor([[nxt]], device=self.device), cache)
            else:
                full = emitted
            if finish == "length":
                full = tok.decode(out_ids, skip_special_tokens=True)
                if len(full) > len(emitted):
                    yield full[len(emitted) :]
                emitted = full
            t2 = time.perf_counter()
            citations: list[Citation] = []
            if recorder is not None and recorder.counts is not None:
                citations = cite(text, tok, ids, recorder.counts[: len(ids)].float().cpu())
            self._keep(ids, cache, grid_length(len(ids), self.prefill_chunk, self.config.tail_size))
            return Completion(
                text=emitted,
                prompt_tokens=len(ids),
                completion_tokens=len(out_ids),
                finish_reason=finish,
                prefill_seconds=t1 - t0,
                decode_seconds=t2 - t1,
                model_name=self.model_name,
                citations=citations,
                max_position=state.largest_position() if state is not None else len(ids) + len(out_ids) - 1,
            )
        except torch.OutOfMemoryError as e:
            cache = None  # type: ignore[assignment]
            self._prefix = None
            if e.__traceback__ is not None and e.__traceback__.tb_next is not None:
                traceback.clear_frames(e.__traceback__.tb_next)  # frames below still hold the cache
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemoryError(
                f"Ran out of memory with {len(ids)} prompt tokens on {self.device}; the request's cache was freed. "
                "Use a shorter document, a smaller local_size/chunk_size, or a device with more memory."
            ) from e
        finally:
            if state is not None:
                state.recorder = None
            cache = None  # type: ignore[assignment]  # a kept prefix holds its own reference

    def complete(
        self, prompt: str | list[dict[str, str]], params: SamplingParams | None = None, **kw: Any
    ) -> Completion:
        """Run :meth:`generate` to the end and return the :class:`Completion`."""
        it = self.generate(prompt, params, **kw)
        while True:
            try:
                next(it)
            except StopIteration as stop:
                return stop.value

    # -- helpers -------------------------------------------------------------------------------
    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(int(i) for i in src)
        return ids

    @staticmethod
    def _sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
        logits = logits[0].float()
        if p.temperature == 0:
            return int(logits.argmax())
        logits = logits / p.temperature
        if p.top_k:
            kth = logits.topk(min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if p.top_p < 1:
            sp, si = probs.sort(descending=True)
            keep = sp.cumsum(0) - sp < p.top_p
            probs = torch.zeros_like(probs).scatter_(0, si[keep], sp[keep])
        return int(torch.multinomial(probs, 1, generator=gen))

    def _bar(self, total: int) -> Any:
        if not self.progress or total <= (self.config.chunk_size or 0):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="tok", unit_scale=True, desc="prefill", leave=False, dynamic_ncols=True)


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None
