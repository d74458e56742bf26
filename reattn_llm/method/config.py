"""``ReAttentionConfig``: the sizes of the bounded attention scope, with the paper's defaults.

Every forward attends to ``[ global (G) | selected spans (<= max_spans * span) | local (L) ]``
and the scope is bounded by construction: ``G + max_spans * span + L <= window``, where the
window is the model's trained length. Unset sizes are filled in by :meth:`ReAttentionConfig.resolve`
from the window: the paper's defaults (G 32, span 32, k 4, L 4096, 127 spans: an 8192-token
scope) for windows of 8192 and more, and for a smaller window W: L = W/2 and as many spans as fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import ConfigError
from ..kernels import MAX_TOP_K
from .chunks import chunk_bounds, prefill_bounds, reusable_length

__all__ = ["ReAttentionConfig", "chunk_bounds", "prefill_bounds", "reusable_length"]

Mode = Literal["reattention", "streaming", "full"]
Backend = Literal["auto", "triton", "torch"]
Selection = Literal["exact", "two_level"]
KVDtype = Literal["model", "fp8"]
Offload = Literal["none", "values", "keys_values"]
Scoring = Literal["expected", "raw"]
DecodeSpans = Literal["own", "question", "both", "running", "union"]
VotePooling = Literal["span", "hit"]
ExactAnswer = Literal["all", "question", "none"]

PAPER_SCOPE = 8192
PAPER_GLOBAL = 32
PAPER_SPAN = 32
PAPER_LOCAL = 4096
PAPER_TOP_K = 4
MAX_PREFILL_CHUNK = 1024
CANDIDATES_PER_SPAN = 4
DECODE_EXTRA_UNTIL = 1 << 18
LEVEL1_STRIDE = 8
#: Fields that are positive integers (or None: their default).
_POSITIVE = "candidate_blocks block_size level1_stride prefill_forward global_size local_size".split()
_POSITIVE += "query_stride span_size top_k prompt_top_k chunk_size window effective_window".split()
#: ``(field, least value, what it must be)`` of every integer field (None: its default, not in _NEEDED).
_COUNTS = (
    *((name, 1, "a positive integer (or None for the default)") for name in _POSITIVE),
    ("tail_size", 0, "an integer >= 0 (0 turns it off)"),
    ("decode_extra_spans", 0, "an integer >= 0 (or None for the default)"),
    ("decode_extra_until", 1, "a positive number of tokens, or None (no limit)"),
    ("span_shift", 0, "an integer >= 0 (0 centres spans on their hits)"),
    ("max_spans", 0, "an integer >= 0 (0 means streaming)"),
)
_NEEDED = ("tail_size", "span_shift")
#: The option fields and their allowed values, from the Literal types above (one spelling).
_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": get_args(Mode),
    "backend": get_args(Backend),
    "selection": get_args(Selection),
    "kv_dtype": get_args(KVDtype),
    "offload": get_args(Offload),
    "scoring": get_args(Scoring),
    "decode_spans": get_args(DecodeSpans),
    "vote_pooling": get_args(VotePooling),
    "exact_answer": get_args(ExactAnswer),  # or None: the default
}


@dataclass(frozen=True)
class ReAttentionConfig:
    """How ReAttention bounds every attention call.

    Attributes:
        global_size: G, the first tokens every query always sees (attention sinks).
        local_size: L, the last tokens every query always sees (holds the current chunk).
        span_size: tokens of one selected span, centred on a top-k hit.
        top_k: hits per (query head, query token) in the position-agnostic scoring, at most 32
            (``kernels.MAX_TOP_K``, the Triton kernel's limit).
        prompt_top_k: hits per (query head, query token) for prompt chunks (more than one query);
            default ``top_k`` (decode steps keep it: more hits drown a step's good ones). No better on
            the CPU needles, too slow at 1M (Run 7).
        max_spans: spans kept per layer per forward (the most-voted hits). 0 = streaming.
        chunk_size: queries per prefill chunk (and per in-layer split of a long forward); <= L.
        tail_size: the last tokens of a prompt (at most this many) form a chunk of their own, so the
            selection that feeds the first answer token is voted by the question alone. 0: off.
        prefill_forward: the most prompt tokens the engine feeds in one model forward (default 8192 on a
            GPU; one chunk on the CPU and with fp8 or offload: ``method.chunks.engine_forward``):
            consecutive chunks join (``method.chunks.plan_forwards``; a prompt's short last chunks with
            the whole ones before them), the layers split them back, each selecting as if fed alone.
        window: the trained context W that positions stay under; default ``max_position_embeddings``.
        effective_window: the longest context the model reads well (its own in-window accuracy
            holds), which sizes the scope: G + max_spans * span + L <= min(window, effective_window),
            L half of it. Default: 8192, the paper's scope; the engine fills in a model's measured
            value (``reattn calibrate``; the embedded default ships its own) unless sizes are given.
        scoring: how middle keys are ranked: ``"expected"`` (default) scores ``q' . k`` with the
            query rotated by RoPE averaged over the distances a selected span takes in the scope
            (``L`` to ``L + max_spans * span``), so the score estimates the logit the key will get
            there and RoPE's fast-turning dimensions stop deciding; ``"raw"``, the paper's ``q . k``
            of un-rotated vectors (the distance-0 logit).
        decode_spans: what a decode step (one new token) selects. ``"union"`` (default): all the
            span centres that the prompt's last forward (the question, prefilled as its own chunk)
            selected, plus up to ``decode_extra_spans`` spans of the step's own hits (most voted,
            then best ranked), paid for by a local window shorter by as many tokens while
            decoding, so the scope's bound is unchanged: the question's votes find the fact, the
            answer's own words keep what it needs next. ``"own"``: each decode step selects alone
            (the paper); ``"question"``: only the question's centres, nothing scored; ``"both"``:
            the question's most voted half and the step's own hits in the other half; ``"running"``:
            each decode step adds its own hits to the votes the question and the earlier steps cast
            (the ``2 * max_spans`` most voted are remembered). BENCHMARKS.md compares them on RULER.
        decode_extra_spans: with ``decode_spans="union"``, the spans a decode step adds for its own
            hits; decoding then attends to the last ``local_size - decode_extra_spans * span_size``
            tokens instead of ``local_size``. Default: half the local window's worth of spans.
        decode_extra_until: the longest cache (tokens) at which ``"union"`` decode steps still add
            spans of their own hits; past it they keep the question's spans and the whole local window,
            and score no key. Among a million keys a step's own top hits are decoys: on RULER's
            niah_single_2 two own spans lost a 1M sample the question's spans found, while at 128K they
            found 10/10 against 8/10 (BENCHMARKS.md, Run 12). Default 262,144; None: always.
        span_shift: tokens by which each span moves past its hit: a hit at c selects
            ``[c + span_shift - span_size // 2, c + span_shift - span_size // 2 + span_size)`` (the hit
            capped at the middle's last token first). 0 centres the span on the hit (the paper); up to
            ``span_size // 2`` puts more of the span after the hit, where a fact's value follows the words
            a question matches ("... magic number for X is: 9375710": a centred span of 32 tokens on
            "special" ends 16 tokens later, inside the number).
        vote_pooling: how a prompt chunk's hits choose its spans. ``"span"`` (default): a centre is
            worth all the hits its span covers, and centres are the local maxima of that (spans never
            overlap), so a fact that the question's words hit at several of its tokens outvotes a
            single frequent token ("the", a full stop) that many queries hit. ``"hit"`` (the paper):
            the most voted hit positions become span centres. Decode steps rank their few hits per
            hit either way, and ``decode_spans="running"`` (whose steps add to the prompt's votes)
            always counts per hit. BENCHMARKS.md compares them on RULER and on CPU needles.
        mode: ``"reattention"``; ``"streaming"`` (global + local only, StreamingLLM);
            ``"full"`` (the stock model, full attention: the baseline).
        backend: kernels: ``"auto"`` (Triton on CUDA, torch on CPU), ``"triton"`` or ``"torch"``.
        selection: ``"exact"`` scores every middle key (the paper); ``"two_level"`` first ranks
            blocks of keys from per-block summaries (Quest's min/max bound of q.k blended with the mean
            key's score), then scores exactly only the keys of the best ``candidate_blocks`` blocks per
            KV head (:mod:`reattn_llm.method.two_level`): about ``block_size`` times less scoring at
            long contexts, approximate (85% of the exact hits kept), so the answer's own forwards
            score exactly by default (``exact_answer``; RULER: BENCHMARKS.md, "Two-level selection").
        candidate_blocks: blocks per KV head that two-level selection scores exactly; default
            ``4 * max_spans`` (:attr:`candidates`). When they cover the whole middle, the result is
            the exact selection's.
        block_size: keys per summarised block for two-level selection; default ``span_size``.
        level1_stride: two-level level 1 ranks a full chunk's blocks from every ``level1_stride``-th query
            that scores (level 2 scores them all): default 8, 8x cheaper, recall on real keys unmoved.
        query_stride: a document chunk's hits (its span votes) come from every ``query_stride``-th
            query, exactly or two-level; the answer's chunk (the question) and decode steps use all. 1
            (default): all; 2 halves the scoring and keeps 88% of the scope's tokens (BENCHMARKS.md).
        exact_answer: with ``selection="two_level"``, the forwards an answer is read from that score
            exactly: ``"all"``, the question (the prompt's last chunk, :func:`~.chunks.plan_forwards`:
            the question, or its last ``tail_size`` tokens) and each decode step; ``"question"``;
            ``"none"``. Every document chunk, a short remainder too, stays two-level. RULER's
            niah_single_2 (one H200): 100 at 32K and 128K with ``"all"``, as exact selection, 55 and 30
            with ``"none"``. None (default): ``"all"``, or ``"question"`` with ``offload="keys_values"``
            (K streamed from host once per question, not for every token).
        kv_dtype: storage of the cached K/V outside the global and recent rows: ``"model"`` (the
            model's dtype, exact) or ``"fp8"`` (float8 e4m3 with one scale per token and KV head:
            half the bytes of bf16; selection and the selected spans read the rounded values,
            the global and local rows stay exact; :mod:`reattn_llm.kv.tiered`).
        offload: ``"none"``; ``"values"`` keeps every cached V in (pinned) host memory and fetches
            only the selected spans per forward; ``"keys_values"`` does the same for K, which needs
            ``selection="two_level"`` (level 1 reads per-block summaries kept on the device, level 2
            fetches only the candidate blocks' keys).
        cuda_graphs: on a CUDA device, run the engine's decode steps static and replay them from CUDA
            graphs (:mod:`reattn_llm.runtime.graphs`): one launch per step instead of thousands (the 8B
            shape's step 10 ms instead of 74 at 32K on one H200). Each bucket of steps (a sixteenth of
            the decode local window, at most 128) keeps one middle, its first steps up to a sixteenth
            fewer local rows. On by default (RULER's answers hold); False decodes eagerly, as the CPU,
            citations and offload do; fp8 rows on the device decode from graphs too.
        allow_extrapolation: let the scope reach RoPE positions at or past the model's trained
            window (``max_position_embeddings``), with a larger ``window`` or sizes that add up past
            it. Off by default: such a config is refused when it meets the model (``patch``, the
            engine's config, before weights load), since positions the model was never trained on
            degrade its answers.
    """

    global_size: int | None = None
    local_size: int | None = None
    span_size: int | None = None
    top_k: int = PAPER_TOP_K
    prompt_top_k: int | None = None
    max_spans: int | None = None
    chunk_size: int | None = None
    tail_size: int = 16
    prefill_forward: int | None = None
    window: int | None = None
    mode: Mode = "reattention"
    backend: Backend = "auto"
    selection: Selection = "exact"
    candidate_blocks: int | None = None
    block_size: int | None = None
    level1_stride: int = LEVEL1_STRIDE
    query_stride: int = 1
    exact_answer: ExactAnswer | None = None
    kv_dtype: KVDtype = "model"
    offload: Offload = "none"
    effective_window: int | None = None
    scoring: Scoring = "expected"
    decode_spans: DecodeSpans = "union"
    decode_extra_spans: int | None = None
    decode_extra_until: int | None = DECODE_EXTRA_UNTIL
    span_shift: int = 0
    vote_pooling: VotePooling = "span"
    allow_extrapolation: bool = False
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        for flag in ("allow_extrapolation", "cuda_graphs"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag}={getattr(self, flag)!r}: must be True or False.")
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed and (value is not None or name != "exact_answer"):  # None: its default
                raise ConfigError(f"{name}={value!r} is not one of {allowed}.")
        if self.offload == "keys_values" and self.selection != "two_level":
            raise ConfigError(
                "offload='keys_values' needs selection='two_level': exact selection reads every middle key "
                "per forward, which from host memory would cost a full PCIe transfer of K each step. Use "
                "offload='values' (K stays on the device), or add selection='two_level'."
            )
        if self.exact_answer == "all" and self.offload == "keys_values":
            raise ConfigError(
                "exact_answer='all' with offload='keys_values' would stream every key from host memory for "
                "each decode step: use exact_answer='question' (the default there), or offload='values'."
            )
        if (self.kv_dtype != "model" or self.offload != "none") and self.mode == "full":
            raise ConfigError(
                f"kv_dtype={self.kv_dtype!r} / offload={self.offload!r} apply to ReAttention's cache; mode='full' "
                "is the stock model's attention: use mode='reattention' (or 'streaming'), or the defaults."
            )
        for name, low, hint in _COUNTS:
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
            if not ok and (value is not None or name in _NEEDED):
                raise ConfigError(f"{name}={value!r}: must be {hint}.")
        for name, k in (("top_k", self.top_k), ("prompt_top_k", self.prompt_top_k or 0)):
            if k > MAX_TOP_K:
                raise ConfigError(
                    f"{name}={k} is above {MAX_TOP_K}, the most hits per query the Triton top-k kernel keeps "
                    f"(backend='auto' uses it on CUDA): use {name} <= {MAX_TOP_K}, and raise span_size or "
                    "max_spans to select more."
                )
        extra = self.decode_extra_spans
        if extra and self.decode_spans != "union":
            raise ConfigError(
                f"decode_extra_spans={extra} applies only to decode_spans='union' (it is {self.decode_spans!r}): "
                "add decode_spans='union', or leave decode_extra_spans unset."
            )
        if self.is_resolved:
            self._check_complete(self)

    def hits_for(self, queries: int) -> int:
        """Hits per (query head, query) for a forward of ``queries`` queries: ``top_k`` for a decode
        step, ``prompt_top_k`` (when set) for a prompt chunk."""
        return self.top_k if queries == 1 or self.prompt_top_k is None else self.prompt_top_k

    def two_level_for(self, queries: int, answer: bool | None = None) -> bool:
        """Whether a chunk of ``queries`` queries selects two-level. ``answer``: it is the chunk an
        answer is read from (the prompt's last, :class:`~reattn_llm.method.chunks.Forward`); False: a
        document's; None (not said): a chunk shorter than ``chunk_size`` is (a forward's tail)."""
        if self.selection != "two_level":
            return False
        mode = self.exact_answer or ("question" if self.offload == "keys_values" else "all")
        if queries == 1:  # a decode step
            return mode != "all"
        return not (mode != "none" and self._answers(queries, answer))

    def strides_for(self, queries: int, answer: bool | None = None) -> tuple[int, int]:
        """``(query_stride, level1_stride)``: a document chunk's hits from every ``query_stride``-th
        query, level 1 from every ``level1_stride``-th of those; the answer's chunk (``answer`` as in
        :meth:`two_level_for`) and decode steps use every query: ``(1, 1)``."""
        if queries == 1 or self._answers(queries, answer):
            return (1, 1)
        return (self.query_stride or 1, self.level1_stride or LEVEL1_STRIDE)

    def _answers(self, queries: int, answer: bool | None) -> bool:
        return queries < (self.chunk_size or 0) if answer is None else answer

    @property
    def is_resolved(self) -> bool:
        """True once every size is a concrete number (see :meth:`resolve`)."""
        return None not in (
            self.global_size,
            self.local_size,
            self.span_size,
            self.max_spans,
            self.chunk_size,
            self.window,
        )

    @property
    def scope(self) -> int:
        """The most keys one query can see: ``G + max_spans * span + L`` (needs a resolved config)."""
        if not self.is_resolved:
            raise ConfigError("scope needs a resolved config: call resolve(window) first.")
        return self.global_size + self.max_spans * self.span_size + self.local_size  # type: ignore[operator]

    def decode_sizes(self, pinned: bool, total: int = 0) -> tuple[int, int]:
        """``(local, spans)`` of a one-token (decode) forward over ``total`` cached tokens: with
        ``decode_spans="union"``, the question's centres remembered (``pinned``) and ``total`` at most
        ``decode_extra_until``, ``decode_extra_spans`` more spans and a local window shorter by their
        tokens; else ``(local_size, max_spans)``. Needs a resolved config."""
        until = self.decode_extra_until
        union = pinned and self.decode_spans == "union" and (until is None or total <= until)
        extra = (self.decode_extra_spans or 0) if union else 0
        return self.local_size - extra * self.span_size, self.max_spans + extra  # type: ignore[operator]

    @property
    def sizes_given(self) -> bool:
        """True when the user set any size of the scope (the engine then keeps them as given)."""
        names = ("global_size", "local_size", "span_size", "max_spans", "effective_window")
        return any(getattr(self, n) is not None for n in names)

    @property
    def summary_block(self) -> int:
        """Keys per summarised block of two-level selection: ``block_size``, else ``span_size``."""
        if self.block_size is not None:
            return self.block_size
        if self.span_size is None:
            raise ConfigError("summary_block needs span_size or block_size: call resolve(window) first.")
        return self.span_size

    @property
    def candidates(self) -> int:
        """Blocks per KV head scored exactly by two-level selection: ``candidate_blocks``, else
        ``4 * max_spans`` (at least 1)."""
        if self.candidate_blocks is not None:
            return self.candidate_blocks
        if self.max_spans is None:
            raise ConfigError("candidates needs max_spans or candidate_blocks: call resolve(window) first.")
        return max(1, CANDIDATES_PER_SPAN * self.max_spans)

    def resolve(self, model_window: int | None = None) -> ReAttentionConfig:
        """Fill every unset size from the window and validate; returns a new, complete config.

        Args:
            model_window: the model's ``max_position_embeddings``; ignored when ``window`` is set
                (:func:`~reattn_llm.method.patch.resolve_for_model` also keeps the scope within it).
        """
        window = self.window or model_window
        if window is None or window < 8:
            raise ConfigError(
                f"window={window!r}: give ReAttentionConfig(window=...) the model's trained context length "
                "(at least 8 tokens)."
            )
        if self.effective_window is not None and self.effective_window < 8:
            raise ConfigError(f"effective_window={self.effective_window}: must be at least 8 tokens.")
        scope = min(window, self.effective_window or PAPER_SCOPE)
        g = self.global_size if self.global_size is not None else min(PAPER_GLOBAL, max(1, scope // 16))
        span = self.span_size if self.span_size is not None else min(PAPER_SPAN, max(1, scope // 16))
        local = self.local_size if self.local_size is not None else scope // 2
        if self.mode == "streaming":
            spans = 0
        elif self.max_spans is not None:
            spans = self.max_spans
        else:
            spans = max(0, (scope - g - local) // span)
        chunk = self.chunk_size if self.chunk_size is not None else max(1, min(MAX_PREFILL_CHUNK, local // 2))
        extra = self.decode_extra_spans
        if extra is None and self.decode_spans == "union":
            extra = local // (2 * span) if spans else 0
        resolved = dataclasses.replace(
            self,
            global_size=g,
            local_size=local,
            span_size=span,
            max_spans=spans,
            chunk_size=chunk,
            window=window,
            decode_extra_spans=extra,
        )
        self._check_complete(resolved)
        return resolved

    @staticmethod
    def _check_complete(c: ReAttentionConfig) -> None:
        scope = c.scope
        if scope > c.window:  # type: ignore[operator]
            over = scope - c.window  # type: ignore[operator]
            raise ConfigError(
                f"The attention scope G + max_spans*span + L = {c.global_size} + {c.max_spans}*{c.span_size} + "
                f"{c.local_size} = {scope} exceeds the window {c.window} by {over}: lower max_spans to "
                f"{max(0, (c.window - c.global_size - c.local_size) // c.span_size)} "  # type: ignore[operator]
                f"or local_size to {max(0, c.local_size - over)}, or raise window if the model was trained longer."
            )
        if c.decode_extra_spans and c.decode_extra_spans * c.span_size >= c.local_size:  # type: ignore[operator]
            raise ConfigError(
                f"decode_extra_spans={c.decode_extra_spans} spans of {c.span_size} leave no local window of "
                f"local_size={c.local_size} while decoding: use decode_extra_spans <= "
                f"{(c.local_size - 1) // c.span_size}."  # type: ignore[operator]
            )
        if c.span_shift > c.span_size // 2:  # type: ignore[operator]
            raise ConfigError(
                f"span_shift={c.span_shift} would move spans of {c.span_size} tokens off their hits: use "
                f"span_shift <= {c.span_size // 2} (span_size // 2), or raise span_size."  # type: ignore[operator]
            )
        if c.chunk_size > c.local_size:  # type: ignore[operator]
            raise ConfigError(
                f"chunk_size={c.chunk_size} is larger than local_size={c.local_size}: the local window must hold the "
                f"current chunk; use chunk_size <= {c.local_size}."
            )
