"""The LlamaIndex adapter and the whole-document query engine, on CPU with the real default model."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import sys
import time

import pytest
from conftest import FILLER_PAGES, PLANTED_ANSWER, PLANTED_PAGE, PLANTED_QUESTION, write_text_pdf

pytest.importorskip("llama_index.core")

from llama_index.core import Document as LlamaDocument
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

from reattn_llm import ChatReAttention, ContextTooLongError, load_document
from reattn_llm.errors import (
    CorruptDocumentError,
    DocumentNotFoundError,
    EmptyDocumentError,
    UnsupportedDocumentError,
)
from reattn_llm.integrations.llamaindex import ReAttentionLlamaLLM, WholeDocumentQueryEngine


@pytest.fixture
def llm(small_config, shared_engine) -> ReAttentionLlamaLLM:
    return ReAttentionLlamaLLM(config=small_config, max_tokens=16, progress=False)


@pytest.fixture(scope="module")
def planted_pdf(tmp_path_factory):
    return write_text_pdf(tmp_path_factory.mktemp("docs") / "planted.pdf", FILLER_PAGES)


# --- the LLM adapter ---------------------------------------------------------------------------------


def test_metadata_context_window_is_the_capacity_not_the_trained_window(llm, small_config, shared_engine):
    meta = llm.metadata
    cap = shared_engine.capacity().max_tokens
    assert meta.context_window == pytest.approx(cap, rel=0.05)
    assert meta.context_window > 8192 > small_config.window  # never clamped to a trained window
    assert meta.num_output == 16 and meta.is_chat_model and meta.model_name == "SmolLM2-135M-Instruct"
    assert llm.engine is shared_engine
    assert ChatReAttention(config=small_config).engine is llm.engine  # one model in memory for both
    assert llm.count_tokens("hello world") == shared_engine.count_tokens("hello world")


def test_complete_applies_the_chat_template_and_reports_usage(llm, shared_engine):
    r = llm.complete("Name three colours.")
    kw = r.additional_kwargs
    assert r.text.strip() and r.raw.text == r.text
    assert kw["prompt_tokens"] == len(shared_engine.encode("Name three colours.")[0])
    assert 1 <= kw["completion_tokens"] <= 16
    assert kw["total_tokens"] == kw["prompt_tokens"] + kw["completion_tokens"]
    assert kw["model_name"] == "SmolLM2-135M-Instruct"
    raw = llm.complete("Name three colours.", formatted=True, max_tokens=2)
    assert raw.additional_kwargs["prompt_tokens"] == shared_engine.count_tokens("Name three colours.")
    custom = ReAttentionLlamaLLM(
        config=llm.config, max_tokens=2, progress=False, completion_to_prompt=lambda p: f"Q: {p}\nA:"
    )
    n_formatted = custom.complete("Name three colours.").additional_kwargs["prompt_tokens"]
    assert n_formatted == shared_engine.count_tokens("Q: Name three colours.\nA:")


def test_stream_complete_has_cumulative_text_and_deltas(llm):
    whole = llm.complete("Name three colours.").text
    responses = list(llm.stream_complete("Name three colours."))
    text = ""
    for r in responses:
        text += r.delta
        assert r.text == text
    assert text == whole
    assert responses[-1].delta == "" and responses[-1].additional_kwargs["completion_tokens"] >= 1
    assert all("completion_tokens" not in r.additional_kwargs for r in responses[:-1])


def test_chat_uses_the_template_and_returns_new_tokens_only(llm, shared_engine):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer in one word."),
        ChatMessage(role=MessageRole.USER, content="What colour is the sky?"),
    ]
    r = llm.chat(messages)
    dicts = [{"role": m.role.value, "content": m.content} for m in messages]
    assert r.additional_kwargs["prompt_tokens"] == len(shared_engine.encode(dicts)[0])
    assert r.message.role == MessageRole.ASSISTANT and r.message.content
    assert "What colour" not in r.message.content
    streamed = list(llm.stream_chat(messages))
    assert streamed[-1].message.content == r.message.content
    assert "".join(s.delta for s in streamed) == r.message.content


@pytest.mark.asyncio
async def test_async_methods_match_sync_and_do_not_block(llm):
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    r = await llm.acomplete("Name three colours.")
    elapsed = time.perf_counter() - t0
    seen = ticks
    deltas = [x.delta async for x in await llm.astream_complete("Name three colours.")]
    chat = await llm.achat([ChatMessage(role=MessageRole.USER, content="Name three colours.")])
    question = [ChatMessage(role=MessageRole.USER, content="Name three colours.")]
    chats = [x async for x in await llm.astream_chat(question)]
    stop.set()
    await task
    assert r.text == "".join(deltas) == chat.message.content == chats[-1].message.content
    assert seen >= min(10, int(elapsed / 0.01) // 4), "the event loop was blocked during acomplete"


# --- the whole-document query engine -------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_query(planted_pdf, small_config, shared_engine):
    """One query over the planted PDF, with its LLM calls counted two ways (engine and callbacks)."""
    debug = LlamaDebugHandler()
    llm = ReAttentionLlamaLLM(
        config=small_config,
        max_tokens=24,
        progress=False,
        cite=True,
        callback_manager=CallbackManager([debug]),
    )
    calls = []
    real_generate = shared_engine.generate

    def counting_generate(*args, **kwargs):
        calls.append(args[0])
        return real_generate(*args, **kwargs)

    shared_engine.generate = counting_generate
    try:
        engine = WholeDocumentQueryEngine(planted_pdf, llm=llm)
        response = engine.query(PLANTED_QUESTION)
    finally:
        del shared_engine.generate
    return engine, response, calls, debug


def test_query_engine_answers_from_a_long_document_in_one_call(planted_query, planted_pdf, small_config):
    engine, response, calls, debug = planted_query
    assert PLANTED_ANSWER in str(response)
    assert len(calls) == 1, "exactly one LLM call"
    assert len(debug.get_event_pairs(CBEventType.LLM)) == 1
    assert response.metadata["prompt_tokens"] > small_config.window  # longer than the (shrunk) window
    assert response.metadata["max_position"] < small_config.window
    (prompt,) = calls  # the prompt as the engine reads it (chat template applied, tokenized once)
    assert load_document(planted_pdf).text in prompt.text  # the whole document, untruncated
    assert response.metadata["source"] == str(planted_pdf)
    for node in response.source_nodes:  # citations, when the engine names any, point into the document
        assert node.node.metadata["page"] in range(1, 6) or node.node.metadata["page"] is None
        if node.node.start_char_idx is not None:
            assert node.node.get_content() == engine.text[node.node.start_char_idx : node.node.end_char_idx]


def test_query_engine_cites_the_page_of_the_answer(planted_query):
    _, response, _, _ = planted_query
    assert PLANTED_PAGE in response.metadata["cited_pages"]
    assert PLANTED_PAGE in [n.node.metadata["page"] for n in response.source_nodes]


def test_capacity_plus_one_raises_before_prefill(planted_pdf, small_config, shared_engine, monkeypatch):
    llm = ReAttentionLlamaLLM(config=small_config, max_tokens=24, progress=False)
    engine = WholeDocumentQueryEngine(planted_pdf, llm=llm)
    n_prompt = len(shared_engine.encode(llm._chat_prompt(engine.messages(PLANTED_QUESTION)))[0])
    real = shared_engine.capacity()

    def prefill(*args, **kwargs):
        raise AssertionError("no prefill may start for an input that does not fit")

    monkeypatch.setattr(shared_engine, "prefill", prefill)
    monkeypatch.setattr(
        shared_engine, "capacity", lambda: dataclasses.replace(real, max_tokens=n_prompt + 24 - 1)
    )
    with pytest.raises(ContextTooLongError, match=f"{n_prompt} tokens"):
        engine.query(PLANTED_QUESTION)
    with pytest.raises(ContextTooLongError):
        asyncio.run(engine.aquery(PLANTED_QUESTION))
    assert llm.metadata.context_window == n_prompt + 24 - 1  # what LlamaIndex is told is what is enforced
    shared_engine.check_fits(n_prompt, 24 - 1)  # exactly at capacity fits
    assert shared_engine._lock.waiting == 0


@pytest.mark.asyncio
async def test_aquery_answers_in_one_call(small_config, shared_engine, monkeypatch):
    pages = [
        LlamaDocument(text="\n".join(lines), metadata={"page": i + 1, "source": "notes.pdf"})
        for i, lines in enumerate(FILLER_PAGES)
    ]
    calls = []
    real_generate = shared_engine.generate
    monkeypatch.setattr(shared_engine, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    llm = ReAttentionLlamaLLM(config=small_config, max_tokens=24, progress=False)
    engine = WholeDocumentQueryEngine(pages, llm=llm, system_prompt="Answer from the document only.")
    assert engine.text.startswith("[Page 1]\n") and f"[Page {PLANTED_PAGE}]\n" in engine.text
    response = await engine.aquery(PLANTED_QUESTION)
    assert PLANTED_ANSWER in str(response) and len(calls) == 1


def test_query_engine_prefills_the_question_on_its_own(small_config, shared_engine):
    from reattn_llm.runtime.prompts import encode_prompt

    llm = ReAttentionLlamaLLM(config=small_config, progress=False)
    # the default template puts an instruction after the question: the question still starts at {query}
    engine = WholeDocumentQueryEngine([LlamaDocument(text="Some text.")], llm=llm)
    start = engine._call_kwargs(PLANTED_QUESTION)["question_start"]
    assert engine.messages(PLANTED_QUESTION)[-1].content[start:].startswith(PLANTED_QUESTION)
    enc = encode_prompt(
        shared_engine.tokenizer, llm._chat_prompt(engine.messages(PLANTED_QUESTION)), True, start
    )
    assert shared_engine.tokenizer.decode(enc.ids[enc.question :]).lstrip().startswith(PLANTED_QUESTION)
    with pytest.raises(TypeError, match="unexpected keyword"):
        llm.chat(engine.messages(PLANTED_QUESTION), question_begin=3)


def test_bad_inputs_raise_their_own_errors_before_any_model_work(tmp_path, small_config, monkeypatch):
    from reattn_llm.runtime.engine import Engine

    def no_model(*args, **kwargs):
        raise AssertionError("no model work for a bad file")

    monkeypatch.setattr(Engine, "generate", no_model)
    llm = ReAttentionLlamaLLM(config=small_config, progress=False)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer <<>>\n%%EOF\n")
    binary = tmp_path / "photo.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    cases = [
        (tmp_path / "missing.pdf", DocumentNotFoundError),
        (empty, EmptyDocumentError),
        (corrupt, CorruptDocumentError),
        (binary, UnsupportedDocumentError),
    ]
    for path, error in cases:
        with pytest.raises(error):
            WholeDocumentQueryEngine(path, llm=llm)
    with pytest.raises(ValueError, match="no text"):
        WholeDocumentQueryEngine([LlamaDocument(text="   ")], llm=llm)
    with pytest.raises(ValueError, match=r"\{context\}"):
        WholeDocumentQueryEngine([LlamaDocument(text="Some text.")], llm=llm, prompt_template="{query} only")
    with pytest.raises(ValueError, match="text only"):
        llm.chat(
            [
                ChatMessage(
                    role=MessageRole.USER, blocks=[{"block_type": "image", "url": "https://x.org/a.png"}]
                )
            ]
        )


def test_missing_llama_index_gives_an_install_hint(monkeypatch):
    for name in [m for m in sys.modules if m == "llama_index" or m.startswith("llama_index.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "llama_index", None)
    monkeypatch.delitem(sys.modules, "reattn_llm.integrations.llamaindex")
    with pytest.raises(ImportError, match=r'pip install "reattn-llm\[llamaindex\]"'):
        importlib.import_module("reattn_llm.integrations.llamaindex")


def test_context_window_caps_the_metadata_and_the_prompt(small_config, shared_engine, monkeypatch):
    with pytest.raises(TypeError, match=r"'max_input_tokens' \(did you mean 'context_window'\?\)"):
        ReAttentionLlamaLLM(max_input_tokens=4096)
    llm = ReAttentionLlamaLLM(config=small_config, context_window=64, max_tokens=8, progress=False)
    assert llm.metadata.context_window == 64  # what LlamaIndex is told is what is enforced
    monkeypatch.setattr(shared_engine, "prefill", lambda *a, **k: pytest.fail("no prefill over the cap"))
    with pytest.raises(ContextTooLongError, match=r"context_window \(less max_tokens=8\) cap of 56"):
        llm.complete("word " * 80)


def test_raw_pdf_bytes_from_simple_directory_reader_warn_with_the_fix(
    planted_pdf, small_config, shared_engine
):
    import warnings

    from llama_index.core import SimpleDirectoryReader
    from llama_index.core.schema import Document as LlamaDocument

    from reattn_llm.integrations.loaders import pdf_file_extractor

    raw = SimpleDirectoryReader(input_files=[planted_pdf]).load_data()
    if "%PDF-" not in raw[0].text:  # a PDF reader is installed here: build what the reader gives without one
        raw = [LlamaDocument(text=planted_pdf.read_bytes().decode("latin-1"))]
    assert raw[0].text.startswith("%PDF-")
    with pytest.warns(UserWarning, match=r"raw bytes.*file_extractor=pdf_file_extractor\(\)"):
        WholeDocumentQueryEngine(raw, llm=ReAttentionLlamaLLM(config=small_config, progress=False))
    llm = ReAttentionLlamaLLM(config=small_config, progress=False)
    with pytest.warns(UserWarning, match="raw bytes"):
        stream, _ = llm._start(f"{raw[0].text}\n\nQuestion: {PLANTED_QUESTION}", True, {})
    stream.close()  # nothing ran: the warning comes before any model work
    # the documented fix: the package's reader, page anchors, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        docs = SimpleDirectoryReader(
            input_files=[planted_pdf], file_extractor=pdf_file_extractor()
        ).load_data()
        engine = WholeDocumentQueryEngine(docs, llm=llm)
    assert "[Page 3]" in engine.text and PLANTED_ANSWER in engine.text
    # ordinary prose that mentions a PDF never warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WholeDocumentQueryEngine(
            LlamaDocument(text="The %PDF-1.4 header starts every PDF; see obj 12."), llm=llm
        )
