"""Constrained decoding: answers that follow a JSON schema (or are any JSON object), token by token.

The constraint is xgrammar's (``pip install 'reattn-llm[structured]'``), chosen among the four
maintained libraries made for this (xgrammar, llguidance, outlines, lm-format-enforcer):

- it installs from wheels with one small dependency (``apache-tvm-ffi``) beside torch and
  transformers, which it accepts as they are (it never replaces a CPU torch); on Linux x86-64 it
  also asks for triton, which the dev extra pins already;
- it plugs into transformers' logits processors as a bitmask over the vocabulary: one
  ``fill_next_token_bitmask`` and one ``apply_token_bitmask_inplace`` per token, then
  ``accept_token`` with the token chosen, so it runs first in the engine's
  ``LogitsProcessorList`` (:mod:`~reattn_llm.runtime.sampling`) and temperature, top-p etc. then
  draw among the allowed tokens only;
- it was the cheapest per token measured here on the default model's 49,152-token vocabulary
  (2-core CPU, a name/age/city schema): about 0.15 ms per token (mask 5 µs from its precomputed
  cache, 0.14 ms to apply it), against about 0.7 ms for llguidance (0.12-0.2 ms for the mask,
  0.5-1 ms to apply it, plus 130 ms on its first token), and 11 ms to compile a schema.
  outlines (which adds outlines_core, genson and diskcache and wraps its own model classes) and
  lm-format-enforcer (which walks a character trie of the vocabulary in Python each token) were
  not measured. A decode step of the default model costs 20-60 ms on this CPU, so the
  constraint adds well under 2% (``benchmarks/structured.py`` measures it end to end).

Strings are generated without free whitespace between tokens (``any_whitespace=False``): a small
model left free to emit whitespace may never close the object.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

import torch

INSTALL_HINT = "pip install 'reattn-llm[structured]' (or: pip install xgrammar)"

#: How many compiled schemas are kept (least recently used first out); a server checks a request's
#: schema before answering it (:func:`compile_schema`) and the answer reuses the compiled grammar.
GRAMMAR_CACHE_SIZE = 64

#: Compilers per tokenizer: building the vocabulary's tables takes ~0.2 s, compiling a schema ~10 ms.
_COMPILERS: dict[tuple[int, int, tuple[int, ...]], tuple[Any, Any]] = {}
#: Compiled grammars per (compiler key, schema text), most recently used last.
_GRAMMARS: OrderedDict[tuple[tuple[int, int, tuple[int, ...]], str], Any] = OrderedDict()
_LOCK = threading.Lock()  # a server's check (a worker thread) and the engine's answer share the caches
_WHERE = re.compile(r"^\[[0-9:]+\]\s+\S+:\d+:\s*")  # xgrammar's "[time] file.cc:line: " before its reason


def check_schema(schema: Any) -> dict[str, Any] | None:
    """``schema`` as a dict (``None`` stays ``None``): a dict, or a JSON string that decodes to one;
    anything else is a ``ValueError`` that says what to pass."""
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"json_schema is not valid JSON ({e}): pass a JSON-schema dict or its JSON text."
            ) from e
    if not isinstance(schema, dict):
        raise ValueError(
            f"json_schema must be a JSON-schema dict (or its JSON text), not {type(schema).__name__}: "
            "for a pydantic class pass Model.model_json_schema()."
        )
    return schema


def from_response_format(response_format: Any) -> dict[str, Any]:
    """The :class:`~reattn_llm.runtime.sampling.SamplingParams` fields for an OpenAI-style
    ``response_format``: ``{"type": "text"}`` (or ``None``) → ``{}``; ``{"type": "json_object"}``
    → ``{"json_object": True}``; ``{"type": "json_schema", "json_schema": {"schema": {...}}}``
    → ``{"json_schema": {...}}``. Anything else is a ``ValueError`` naming the accepted forms."""
    if response_format is None:
        return {}
    if not isinstance(response_format, dict):
        raise ValueError(
            f"response_format must be an object such as {{'type': 'json_object'}}, not {type(response_format).__name__}."
        )
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise ValueError(
                "response_format of type 'json_schema' needs json_schema.schema: "
                '{"type": "json_schema", "json_schema": {"name": "...", "schema": {...}}}.'
            )
        return {"json_schema": check_schema(schema)}
    raise ValueError(
        f"response_format type {kind!r} is not supported: use 'text', 'json_object' or 'json_schema'."
    )


def json_instruction(schema: dict[str, Any] | None) -> str:
    """The line appended to the user's last turn by wrappers that ask for JSON on the caller's
    behalf (``with_structured_output``): a small model follows the constraint far better when the
    prompt also says what the JSON is for."""
    if schema is None:
        return "Reply with one JSON object only."
    return "Reply with one JSON object only, following this JSON schema: " + json.dumps(schema)


def require_xgrammar() -> Any:
    """The xgrammar module, or an ImportError with the install hint."""
    try:
        import xgrammar
    except ImportError as e:
        raise ImportError(
            f"Structured output (a JSON schema or JSON mode) needs xgrammar: {INSTALL_HINT}."
        ) from e
    return xgrammar


def _compiler(tokenizer: Any, eos: tuple[int, ...]) -> tuple[tuple[int, int, tuple[int, ...]], Any]:
    """The cache key and xgrammar compiler for ``tokenizer`` with ``eos`` (called under ``_LOCK``)."""
    xgr = require_xgrammar()
    vocab = len(tokenizer)
    key = (id(tokenizer), vocab, eos)
    if key not in _COMPILERS:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab, stop_token_ids=list(eos) or None
        )
        # xgrammar's own cache is unbounded: the bounded one below keeps the compiled schemas
        _COMPILERS[key] = (tokenizer, xgr.GrammarCompiler(info, cache_enabled=False))  # tokenizer kept alive
    return key, _COMPILERS[key][1]


def compile_schema(tokenizer: Any, schema: dict[str, Any] | None, eos: set[int] | tuple[int, ...]) -> Any:
    """xgrammar's compiled grammar for JSON matching ``schema`` (any JSON object when None) under
    ``tokenizer``, with ``eos`` allowed once the JSON is complete. Compiled once, then reused from a
    cache of the last :data:`GRAMMAR_CACHE_SIZE` schemas: a front end that checks a schema up front
    (a server's 400) and the :class:`JsonConstraint` of the answer compile it once between them.

    Raises:
        ValueError: xgrammar cannot compile the schema (its reason, and the fix).
        ImportError: xgrammar is not installed (the install hint).
    """
    text = json.dumps(schema if schema is not None else {"type": "object"})
    with _LOCK:
        key, compiler = _compiler(tokenizer, tuple(sorted(eos)))
        grammar = _GRAMMARS.get((key, text))
        if grammar is not None:
            _GRAMMARS.move_to_end((key, text))  # the most recently used
        else:
            try:
                grammar = compiler.compile_json_schema(text, any_whitespace=False)
            except Exception as e:  # xgrammar reports a schema it cannot compile as a RuntimeError
                reason = _WHERE.sub("", str(e).strip())
                raise ValueError(
                    f"json_schema could not be compiled ({reason}): fix the schema, or simplify it to "
                    "the common JSON-schema keywords (type, properties, required, items, enum, ...)."
                ) from e
            _GRAMMARS[(key, text)] = grammar
            while len(_GRAMMARS) > GRAMMAR_CACHE_SIZE:
                _GRAMMARS.popitem(last=False)
        return grammar


class JsonConstraint:
    """A transformers logits processor that lets through only the tokens that keep the answer a
    prefix of JSON matching ``schema`` (any JSON object when ``schema`` is None), then only the
    end-of-answer tokens ``eos`` once the JSON is complete.

    Call it as a processor (``scores [1, V]`` → the same tensor, disallowed tokens at -inf),
    then :meth:`accept` the token chosen. ``V`` may exceed the tokenizer's vocabulary (padded
    embedding rows): those extra rows are never allowed.
    """

    def __init__(
        self, tokenizer: Any, schema: dict[str, Any] | None, eos: set[int] | tuple[int, ...]
    ) -> None:
        xgr = require_xgrammar()
        self._xgr = xgr
        grammar = compile_schema(tokenizer, schema, eos)  # from the cache when checked up front
        self.vocab = len(tokenizer)
        self.matcher = xgr.GrammarMatcher(grammar)
        self.bitmask = xgr.allocate_token_bitmask(1, self.vocab)

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        if scores.shape[-1] > self.vocab:
            scores[..., self.vocab :] = float("-inf")
        self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), vocab_size=self.vocab)
        return scores

    def accept(self, token: int) -> None:
        """Advance past ``token`` (one the mask allowed)."""
        if not self.matcher.is_terminated():
            self.matcher.accept_token(token)
