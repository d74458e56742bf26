"""Citations: the page holding the answer is cited, whether it lies in the global rows, the local
window or a selected span, and a document within ``G + L`` tokens is attributed too."""

from __future__ import annotations

import pytest
from conftest import _TOPICS, PLANTED_ANSWER, PLANTED_FACT, PLANTED_QUESTION, write_text_pdf

from reattn_llm import ChatReAttention, load_document
from reattn_llm.runtime.citations import Citations, cited_pages
from reattn_llm.runtime.sampling import SamplingParams


def _pages(n_pages: int, per_page: int, planted: int) -> list[list[str]]:
    """``n_pages`` pages of ``per_page`` distinct filler lines, the fact planted on page ``planted``."""
    pages = [[_TOPICS[(5 * p + i) % len(_TOPICS)] for i in range(per_page)] for p in range(n_pages)]
    pages[planted - 1].insert(per_page // 2, PLANTED_FACT)
    return pages


# (pages, lines per page, planted page): about 200 tokens (inside G + L = 260 of the small config:
# no selection at all), and about 800 tokens with the fact far back (a selected span) or on the
# last page (the local window, which selection counts alone could never cite).
CASES = {
    "within G+L": (4, 2, 3),
    "past G+L, selected span": (5, 10, 2),
    "past G+L, local window": (5, 10, 5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_page_holding_the_answer_is_cited(case, tmp_path, small_config, shared_engine):
    n_pages, per_page, planted = CASES[case]
    doc = load_document(write_text_pdf(tmp_path / "planted.pdf", _pages(n_pages, per_page, planted)))
    assert doc.page_at(doc.text.index(PLANTED_ANSWER)) == planted
    prompt = f"{doc}\n\nQuestion: {PLANTED_QUESTION}"
    within = len(shared_engine.encode(prompt)[0]) <= small_config.global_size + small_config.local_size
    assert within == (case == "within G+L")
    c = shared_engine.complete(prompt, SamplingParams(max_new_tokens=14), cite_sources=True)
    assert PLANTED_ANSWER in c.text
    assert cited_pages(c.citations)[0] == planted, c.citations
    read = shared_engine.encode(prompt)[1]  # citations are ranges of the text the model read
    best = c.citations[0]
    assert PLANTED_ANSWER[1:] in read[best.start : best.end] and best.score > 0.5  # the number itself
    assert all(x.end <= read.index("Question:") for x in c.citations)  # never the question


def test_no_attribution_is_said_plainly(small_config, shared_engine):
    chat = ChatReAttention(config=small_config, max_tokens=1, cite=True, progress=False)
    meta = chat.invoke("Say yes.").response_metadata
    assert meta["citations"] == [] and meta["cited_pages"] == []
    assert meta["citations_note"].startswith("no attribution: nothing was recorded")
    empty = Citations(note="no attribution: x")
    assert empty == [] and empty.note == "no attribution: x"
