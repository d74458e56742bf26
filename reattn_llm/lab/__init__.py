"""Evaluation, notebook and benchmark helpers; nothing here is needed to use the package.

* :mod:`~reattn_llm.lab.data`: the sample data folder (given by the caller or ``$REATTN_DATA``),
  excerpts of documents and planted facts;
* :mod:`~reattn_llm.lab.evaluation`: passkey retrieval and perplexity by position band, per mode;
* :mod:`~reattn_llm.lab.report`: checks and Markdown tables of those results and of answers;
* :mod:`~reattn_llm.lab.plots`: their pictures (matplotlib);
* :mod:`~reattn_llm.lab.notebooks`: the notebooks' size and running them in a fresh kernel;
* :mod:`~reattn_llm.lab.trace`: per layer and forward, whether given cache rows (a needle) are in the
  scope and how much attention they get (``benchmarks/ruler.py run --trace``).

Nothing is imported here: each module is imported on its own, so ``import reattn_llm.lab`` stays free.
"""
