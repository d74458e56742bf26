"""The engine: one model in memory, an explicit generation loop, shared by every wrapper.

Read it in one sitting: :meth:`Engine.prefill` feeds the prompt in chunks (progress bar: tokens,
tokens/s, ETA), :meth:`Engine.decode_one_token` runs one step (or a CUDA graph replays it:
:mod:`~reattn_llm.runtime.graphs`), and :meth:`Engine.generate` returns the answer as a
:class:`~reattn_llm.runtime.stream.Stream` of text deltas: it samples, stops on EOS, a stop string
or the token budget, and ends with a :class:`~reattn_llm.runtime.stream.Completion`.

Requests take turns on the model: each unit of model work (a prefill, a decode step) holds the
engine's first-come, first-served lock, and each request owns its cache, so a stream suspended
between deltas never blocks another request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Generator
from typing import Any

import torch

from ..kv.cache import ReAttentionCache
from ..method.chunks import engine_forward, plan_prefill, prefill_chunk, prompt_reusable
from ..method.config import ReAttentionConfig, reusable_length
from ..method.patch import PatchHandle, make_cache, patch, resolve_for_model
from .capacity import Capacity, check_fits, engine_capacity
from .citations import cite
from .fifo import FifoLock, Turn
from .graphs import EagerSteps, engine_decoder
from .models import (
    DEFAULT_MODEL,
    effective_window,
    is_default,
    load_config,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from .prefix import CacheSpec, PrefixStore, load_prefix, save_prefix
from .prefix_store import DocumentStore
from .prompts import EncodedPrompt, Prompt, QuestionStart, check_prompt, document_ids, encode_prompt
from .request import PrefillProgress, ProgressFn, Request, freed_after_oom
from .sampling import AnswerText, Sampler, SamplingParams, eos_ids
from .stream import Completion, Stream

__all__ = ["Completion", "Engine", "SamplingParams", "Stream"]


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
        device_map: split the layers across devices (accelerate's ``"auto"``, ``"balanced"``, a dict).
        prefix_store: a :class:`~reattn_llm.runtime.prefix_store.DocumentStore`: prefilled documents
            kept on disk for every engine and process of the same model and config (CLI default).

    Construction is cheap; weights load on first use (:meth:`load`). Wrappers share one engine per model.
    """

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
        prefix_store: DocumentStore | None = None,
    ) -> None:
        if max_cache_bytes is not None and max_cache_bytes <= 0:
            raise ValueError(f"max_cache_bytes={max_cache_bytes}: must be positive (or None for no cap).")
        self.max_cache_bytes = max_cache_bytes
        self.model_id = model
        self.prefixes = PrefixStore(enabled=keep_prefix, disk=prefix_store, spec=lambda: CacheSpec.of(self))
        self.last_prefill_tokens = 0
        self.last: Completion | None = None  # the latest finished answer
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

    # -- loading -------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._load_lock:
                if self._tokenizer is None:
                    load_config(self.model_id)  # refuse unsupported models before anything heavy
                    self._tokenizer = load_tokenizer(self.model_id)
        return self._tokenizer

    @property
    def config(self) -> ReAttentionConfig:
        """The resolved ReAttention config (reads only the model's config, not its weights)."""
        if self._config is None:
            cfg = self.user_config
            measured = effective_window(self.model_id)
            if measured is not None and not cfg.sizes_given:  # sized to what the model reads well
                cfg = dataclasses.replace(cfg, effective_window=measured)
            self._config = resolve_for_model(cfg, load_config(self.model_id))
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
        """Token ids and the exact text they encode (a chat template for message lists, and for a string with ``chat``)."""
        enc = encode_prompt(self.tokenizer, prompt, chat, question_start=None, require_text=False)
        return enc.ids, enc.text

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under this model's tokenizer (no template)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def capacity(self) -> Capacity:
        """Tokens this model can hold on this device (a kept prefix counts as free: reused or freed first)."""
        kept = None if self.prefixes.prefix is None else self.prefixes.prefix.cache
        shape = load_config(self.model_id)
        args = (shape, self.device, self.dtype, self.config, self._model, self.device_map is not None)
        return engine_capacity(*args, max_bytes=self.max_cache_bytes, kept=kept)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise :class:`ContextTooLongError` before any prefill if the request cannot fit."""
        check_fits(self.capacity(), prompt_tokens, max_new_tokens, self.device)

    def prepare(
        self,
        prompt: str | list[dict[str, str]] | EncodedPrompt,
        params: SamplingParams,
        *,
        chat: bool = True,
        question_start: QuestionStart = "auto",
    ) -> EncodedPrompt:
        """``prompt`` tokenized as :meth:`generate` reads it (and takes in its place), once it fits
        ``params``' cap and the device (no weights loaded): a front end tokenizes each prompt once."""
        enc = prompt
        if not isinstance(enc, EncodedPrompt):
            enc = encode_prompt(self.tokenizer, enc, chat, question_start, self.prefill_chunk)
        params.check_prompt(len(enc.ids))  # a wrapper's cap (max_input_tokens / context_window)
        self.check_fits(len(enc.ids), params.max_new_tokens)
        return enc

    # -- the loop ------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self,
        ids: torch.Tensor,
        cache: ReAttentionCache,
        on_progress: ProgressFn | None = None,
        start: int = 0,
        tail: int | None = None,
        question: int | None = None,
        answer: bool = True,
    ) -> torch.Tensor:
        """Feed ``ids [1, T]`` from ``start`` (a multiple of the chunk: the cache already holds
        ``ids[:, :start]``) in chunks of ``chunk_size``: with ``question`` (the token where the
        question starts, >= ``start``) the document on the grid and the question as its own chunk,
        else the last ``tail_size`` tokens apart (:func:`~reattn_llm.method.config.prefill_bounds`),
        the chunks joined in forwards of :attr:`prefill_forward` tokens
        (:func:`~reattn_llm.method.chunks.plan_prefill`; ``answer``: the last chunk is the answer's,
        False for a document alone); return the last logits ``[1, V]``."""
        total, chunk = ids.shape[1], self.prefill_chunk
        tail = self.config.tail_size if tail is None else tail
        logits = None
        self.last_prefill_tokens = total - start
        state = self._handle.state if self._handle is not None else None
        forwards = plan_prefill(
            total, chunk, tail, self.prefill_forward, question, start, answer, cache.cut_at_forward_ends
        )
        with PrefillProgress(total - start, self.progress and total - start > chunk, on_progress) as progress:
            for f in forwards:
                piece = ids[:, start + f.start : start + f.end]
                with state.running(f) if state is not None else contextlib.nullcontext():
                    out = self.model(input_ids=piece, past_key_values=cache, use_cache=True, logits_to_keep=1)
                logits = out.logits[:, -1].to(self.device)  # from the last layer's device (device_map)
                progress.update(f.end)
        assert logits is not None  # an empty prompt is refused before any prefill
        return logits

    @torch.inference_mode()
    def decode_one_token(self, token: torch.Tensor, cache: ReAttentionCache) -> torch.Tensor:
        """One step: ``token [1, 1]`` -> next logits ``[1, V]``."""
        out = self.model(input_ids=token, past_key_values=cache, use_cache=True)
        return out.logits[:, -1].to(self.device)

    def generate(
        self,
        prompt: str | list[dict[str, str]] | EncodedPrompt,
        params: SamplingParams | None = None,
        *,
        chat: bool = True,
        cite_sources: bool = False,
        on_progress: ProgressFn | None = None,
        question_start: QuestionStart = "auto",
    ) -> Stream:
        """The answer to ``prompt`` as a :class:`Stream` of text deltas ending in a :class:`Completion`
        (also kept as :attr:`last`). Nothing runs until the stream is read; a prompt that cannot
        fit raises :class:`ContextTooLongError` then, before any prefill. Read delta by delta, the
        request takes the engine for each unit of work (other requests may run between its
        deltas); :meth:`Stream.complete` keeps it from start to end. ``cite_sources`` records
        which prompt tokens the answer's selections drew on (``Completion.citations``).
        ``question_start``: where the question begins (:mod:`~reattn_llm.runtime.prompts`; by
        default the last line of the last user turn), prefilled as a chunk of its own; both are
        applied already to a ``prompt`` that :meth:`prepare` returned."""
        if not isinstance(prompt, EncodedPrompt):
            check_prompt(prompt)  # an empty or blank prompt is refused now, not when the stream is read
        turn = Turn(self._lock)
        params = params or SamplingParams()
        answer = self._answer(prompt, params, chat, cite_sources, on_progress, turn, question_start)
        return Stream(answer, turn)

    def _answer(
        self,
        prompt: str | list[dict[str, str]] | EncodedPrompt,
        params: SamplingParams,
        chat: bool,
        cite_sources: bool,
        on_progress: ProgressFn | None,
        turn: Turn,
        question_start: QuestionStart = "auto",
    ) -> Generator[str, None, Completion]:
        enc = self.prepare(prompt, params, chat=chat, question_start=question_start)
        ids, text, question = enc.ids, enc.text, enc.question
        self.load()
        request = Request(turn, self._handle.state if self._handle is not None else None)
        answer = AnswerText(lambda out: self.tokenizer.decode(out, skip_special_tokens=True), params.stop)
        eos = eos_ids(self.model.generation_config, self.tokenizer)
        sampler = Sampler(params, ids, self.device, self.tokenizer, eos)  # transformers' processors, seeded
        finish = "length"

        def progress(done: int, total: int, elapsed: float) -> None:
            turn.check()  # a cancelled request stops between prefill forwards
            if on_progress is not None:
                on_progress(done, total, elapsed)

        cache, steps = None, EagerSteps(self, None)
        try:
            t0 = time.perf_counter()
            with request:
                cache, start = self._cache_for(ids, len(ids) + params.max_new_tokens)
                if question is not None and start > question:
                    question = None  # a kept prefix reaches into this question: the tail rule instead
                logits = self.prefill(
                    torch.tensor([ids], device=self.device), cache, progress, start=start, question=question
                )
            t1 = time.perf_counter()
            if cite_sources:
                request.record_selections()  # the answer's selections only, not the prompt's
            steps = engine_decoder(self, cache, cite_sources)  # CUDA graphs, or the eager step
            for _ in range(params.max_new_tokens):
                token = sampler.next(logits)
                if token in eos:
                    finish = "stop"
                    break
                delta = answer.add(token)
                if delta:
                    yield delta
                if answer.stopped:
                    finish = "stop"
                    break
                if len(answer.ids) == params.max_new_tokens:
                    break
                with request:
                    logits = steps.step(torch.tensor([[token]], device=self.device))
            steps.close()  # the cache's rows counted again, for the kept prefix
            rest = answer.flush()  # the tail held back for stop strings, after EOS or the budget
            t2 = time.perf_counter()
            with turn:
                reusable = prompt_reusable(len(ids), self.prefill_chunk, self.config.tail_size, question)
                self.prefixes.keep(ids, cache, reusable)
            cache = None
            if rest:
                yield rest
        except torch.OutOfMemoryError as e:
            cache = None
            self.prefixes.forget()
            raise freed_after_oom(e, len(ids), self.device) from e
        finally:
            steps.close()  # the cache back to eager steps
            cache = None  # a kept prefix holds its own reference
        counts = request.selection_counts(len(ids))
        self.last = Completion(
            text=answer.text,
            prompt_tokens=len(ids),
            completion_tokens=len(answer.ids),
            finish_reason=finish,
            prefill_seconds=t1 - t0,
            decode_seconds=t2 - t1,
            model_name=self.model_name,
            citations=[] if counts is None else cite(text, self.tokenizer, ids, counts, 5, enc.question),
            max_position=request.largest_position(default=len(ids) + len(answer.ids) - 1),
        )
        return self.last

    def complete(self, prompt: Prompt, params: SamplingParams | None = None, **kw: Any) -> Completion:
        """The whole answer: :meth:`generate` run to its end (see :meth:`Stream.complete`)."""
        return self.generate(prompt, params, **kw).complete()

    # -- reusable prefixes ---------------------------------------------------------------------
    @property
    def prefill_chunk(self) -> int:
        """Tokens per prefill chunk (the config's; :data:`~reattn_llm.method.chunks.STOCK_CHUNK` for the
        stock baseline)."""
        return prefill_chunk(self.config)

    @property
    def prefill_forward(self) -> int:
        """Tokens per prefill forward: chunks joined up to the config's ``prefill_forward``
        (:func:`~reattn_llm.method.chunks.engine_forward`, :func:`~reattn_llm.method.chunks.plan_forwards`)."""
        return engine_forward(self.config, self.prefill_chunk, self.device.type)

    def _cache_for(self, ids: list[int], reserve: int) -> tuple[ReAttentionCache, int]:
        """A cache for ``ids`` that the request owns: the kept prefix when it shares a reusable
        beginning with ``ids`` (and how many tokens that is), else a fresh one."""
        cache, n = self.prefixes.take(ids, self.prefill_chunk)
        if cache is None:
            return make_cache(self.model, reserve=reserve, max_bytes=self.max_cache_bytes), 0
        cache.reserve(reserve)
        return cache, n

    def forget_prefix(self) -> None:
        """Free the kept K/V of the last prompt."""
        self.prefixes.forget()

    @torch.inference_mode()
    def warm(self, text: Any, chat: bool = True) -> int:
        """Prefill a document alone (as the start of a later prompt ``text + question``) and keep
        it; returns the tokens that later prompts can reuse. ``text``: a string or a Document."""
        if not isinstance(text := getattr(text, "text", text), str):  # a Document gives its .text
            raise TypeError(f"warm() takes the document's text or a Document, not {type(text).__name__}.")
        ids = document_ids(self.tokenizer, text, chat)
        with self._lock:
            cache, start = self._cache_for(ids, len(ids))
            if start < len(ids):
                self.prefill(
                    torch.tensor([ids], device=self.device), cache, start=start, tail=0, answer=False
                )
            reusable = reusable_length(len(ids), self.prefill_chunk)
            self.prefixes.keep(ids, cache, reusable)
        return reusable

    def save_prefix(self, path: str) -> int:
        """Save the kept prefix (see :meth:`warm`) to ``path``; returns the tokens saved."""
        with self._lock:
            prefix = self.prefixes.prefix
            if prefix is None or prefix.reusable == 0:
                raise ValueError(
                    "No reusable document prefix to save: call warm(document) (or ask once) first."
                )
            save_prefix(prefix, path, (spec := CacheSpec.of(self)).meta, spec.layout)
            return prefix.reusable

    def load_prefix(self, path: str) -> int:
        """Load a prefix saved by :meth:`save_prefix` (checked against this model and config)."""
        prefix = load_prefix(path, CacheSpec.of(self))
        with self._lock:
            self.prefixes.prefix = prefix
        return prefix.reusable
