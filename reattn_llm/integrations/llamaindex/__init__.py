"""LlamaIndex integration (optional extra): an LLM adapter and a whole-document query engine.

* :class:`ReAttentionLlamaLLM` (:mod:`.llm`) is a LlamaIndex ``CustomLLM`` over the same shared
  :class:`~reattn_llm.runtime.engine.Engine` as the LangChain wrappers (one model in memory). Its
  ``metadata.context_window`` is the model's capacity on this device (KV bytes per token against
  free memory), not the trained window: ReAttention reads far past it.
* :class:`WholeDocumentQueryEngine` (:mod:`.query_engine`) answers a question over a whole
  document in exactly one LLM call: no node splitting, no retrieval, no refine loop, and no silent
  truncation (a document that does not fit raises :class:`~reattn_llm.errors.ContextTooLongError`
  before any prefill).

This package imports llama-index; ``reattn_llm.integrations`` never imports it.
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'The LlamaIndex integration needs llama-index-core: pip install "reattn-llm[llamaindex]"'
    ) from error

from .llm import ReAttentionLlamaLLM
from .query_engine import DEFAULT_QA_TEMPLATE, WholeDocumentQueryEngine

__all__ = ["DEFAULT_QA_TEMPLATE", "ReAttentionLlamaLLM", "WholeDocumentQueryEngine"]
