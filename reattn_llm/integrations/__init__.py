"""Front ends for LangChain and LlamaIndex, on the shared engine of :mod:`reattn_llm.runtime`.

* :mod:`.langchain`: ``ReAttentionLLM`` (:mod:`.langchain.llm`) and ``ChatReAttention``
  (:mod:`.langchain.chat`) over their shared fields and streaming loop (:mod:`.langchain._base`);
* :mod:`.llamaindex` (optional extra): ``ReAttentionLlamaLLM`` (:mod:`.llamaindex.llm`) and
  ``WholeDocumentQueryEngine`` (:mod:`.llamaindex.query_engine`);
* :mod:`.loaders`: document loaders for both; :mod:`._common`: what both wrappers share.

Importing this package imports neither framework.
"""
