"""LangChain integration: :class:`ReAttentionLLM` (a runnable LLM) and :class:`ChatReAttention` (chat).

Both wrap one shared :class:`~reattn_llm.runtime.engine.Engine` per (model, device, dtype, config): every
wrapper of the same model uses the same weights, loaded lazily on the first call, so
constructing a wrapper is cheap. They stream with no fixed timeout (a prefill of a whole book may
take minutes), honour stop strings, report token usage and the model name on the result (on
exactly one streamed chunk, the last), count tokens with the model's own tokenizer, refuse inputs
larger than the model's capacity before any prefill (:class:`~reattn_llm.errors.ContextTooLongError`)
and, with ``cite=True``, attach the pages the answer drew on most (``citations`` and
``cited_pages`` in ``response_metadata`` / ``generation_info``).

Every call is one engine :class:`~reattn_llm.runtime.stream.Stream`: ``invoke`` runs it to the end,
``stream`` yields its deltas (a half-read stream holds no lock), and the async forms run it in a
worker thread, so the event loop never blocks; cancelling an async call stops the engine at its
next prefill chunk or token and frees it for the next request.

* :mod:`.llm`: :class:`ReAttentionLLM`; :mod:`.chat`: :class:`ChatReAttention`;
  :mod:`._base`: their shared fields, engine access and streaming loop.
"""

from ._base import MODEL_ENV
from .chat import ChatReAttention
from .llm import ReAttentionLLM

__all__ = ["MODEL_ENV", "ChatReAttention", "ReAttentionLLM"]
