"""ReAttentionLLM and ChatReAttention beyond the standard suites: LCEL over a real PDF, citations,
capacity, async that does not block the loop, cancellation, stop strings, usage and sampling."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import threading
import time
from typing import Any

import pytest
import torch
from conftest import (
    FILLER_PAGES,
    PLANTED_ANSWER,
    PLANTED_FACT,
    PLANTED_PAGE,
    PLANTED_QUESTION,
    write_text_pdf,
)
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.prompts import PromptTemplate

import reattn_llm
from reattn_llm import ChatReAttention, ContextTooLongError, ReAttentionLLM, load_document
from reattn_llm.integrations import langchain as lc
from reattn_llm.runtime.engine import Engine


@pytest.fixture
def chat(small_config, shared_engine) -> ChatReAttention:
    return ChatReAttention(config=small_config, max_tokens=16, progress=False)


@pytest.fixture
def llm(small_config, shared_engine) -> ReAttentionLLM:
    return ReAttentionLLM(config=small_config, max_tokens=16, progress=False)


class _Capture(BaseCallbackHandler):
    """Keeps the LLMResult of each finished call."""

    def __init__(self) -> None:
        self.results: list[LLMResult] = []

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.results.append(response)


def _wait_idle(engine: Engine, timeout: float = 120.0) -> float:
    """Seconds until no request holds or waits for the engine (fails after ``timeout``)."""
    t0 = time.perf_counter()
    while engine._lock.waiting:
        assert time.perf_counter() - t0 < timeout, "the engine was never released"
        time.sleep(0.01)
    return time.perf_counter() - t0


# --- construction, sharing, sizes -------------------------------------------------------------


def test_reexported_from_package():
    assert reattn_llm.ReAttentionLLM is lc.ReAttentionLLM
    assert reattn_llm.ChatReAttention is lc.ChatReAttention


def test_construction_is_cheap_and_lazy(monkeypatch):
    def no_engine(*args, **kwargs):
        raise AssertionError("constructing a wrapper must not create an engine")

    monkeypatch.setattr(Engine, "__init__", no_engine)
    for cls in (ChatReAttention, ReAttentionLLM):
        t0 = time.perf_counter()
        model = cls(model="no-such-org/no-such-model", max_new_tokens=7)  # never downloaded
        assert time.perf_counter() - t0 < 0.5
        assert model.max_tokens == 7 and model._engines == {}
    chat = ChatReAttention(model="no-such-org/no-such-model")
    # key look-ups compute nothing: the capacity is read on demand
    assert "max_input_tokens" in chat.profile and chat.profile["tool_calling"] is False


def test_one_engine_per_model_shared_by_all_wrappers(small_config, shared_engine, chat, llm):
    assert chat.engine is shared_engine and llm.engine is shared_engine
    assert ChatReAttention(config=small_config, temperature=0.5).engine is shared_engine
    # a dict config (as serialized) is the same config, so the same engine
    assert ReAttentionLLM(config=dict(vars(small_config))).engine is shared_engine


def test_profile_reports_capacity_without_loading_weights():
    from reattn_llm import ReAttentionConfig

    # a config no other test uses: a fresh engine whose weights were never loaded
    chat = ChatReAttention(config=ReAttentionConfig(window=640), progress=False)
    llm = ReAttentionLLM(config=ReAttentionConfig(window=640), progress=False)
    reported = chat.profile["max_input_tokens"]
    cap = chat.engine.capacity()
    assert chat.engine._model is None, "reading the profile must not load weights"
    assert abs(reported - cap.max_tokens) <= 0.05 * cap.max_tokens  # free memory drifts a little
    assert abs(llm.profile["max_input_tokens"] - cap.max_tokens) <= 0.05 * cap.max_tokens
    assert cap.max_tokens > 640 * 10  # capacity is memory-bound, never the (shrunk) trained window
    assert llm.max_input_tokens == pytest.approx(cap.max_tokens, rel=0.05)


def test_token_counts_use_the_models_tokenizer(chat, llm, shared_engine):
    text = "ReAttention reads whole books: Pride and Prejudice, 1813."
    ids = shared_engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.get_num_tokens(text) == chat.get_num_tokens(text) == len(ids)
    assert llm.get_token_ids(text) == list(ids)
    messages = [SystemMessage("Be brief."), HumanMessage(text)]
    with_template = chat.get_num_tokens_from_messages(messages)
    expected, _ = shared_engine.encode(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    )
    assert with_template == len(expected) > len(ids) + 5


# --- results: usage, model name, stop strings, sampling -----------------------------------------


def test_llm_generate_usage_stop_and_model_name(llm, shared_engine):
    prompt = "hi"
    result = llm.generate([prompt], stop=["you"])
    gen = result.generations[0][0]
    info = gen.generation_info
    assert "you" not in gen.text and gen.text.strip()
    assert info["finish_reason"] == "stop"
    assert info["model_name"] == "SmolLM2-135M-Instruct"
    prompt_ids, _ = shared_engine.encode(prompt)
    assert info["usage"]["input_tokens"] == len(prompt_ids)
    assert 1 <= info["usage"]["output_tokens"] <= 16
    assert info["usage"]["total_tokens"] == info["usage"]["input_tokens"] + info["usage"]["output_tokens"]
    assert result.llm_output["token_usage"]["total_tokens"] == info["usage"]["total_tokens"]
    # the instance-level stop list applies when the call gives none
    stopped = ReAttentionLLM(config=llm.config, max_tokens=16, progress=False, stop=["you"]).invoke(prompt)
    assert stopped == gen.text


def test_max_tokens_bounds_the_answer(llm):
    info = llm.generate(["Count from one to fifty in words."], max_tokens=5).generations[0][0].generation_info
    assert info["usage"]["output_tokens"] == 5 and info["finish_reason"] == "length"


def test_chat_stream_matches_invoke_and_usage_is_on_the_last_chunk_only(chat):
    messages = [HumanMessage("Name three colours.")]
    whole = chat.invoke(messages)
    chunks = list(chat.stream(messages))
    assert "".join(c.content for c in chunks) == whole.content  # greedy: same tokens
    with_usage = [i for i, c in enumerate(chunks) if c.usage_metadata]
    assert with_usage == [len(chunks) - 1]
    named = [i for i, c in enumerate(chunks) if c.response_metadata.get("model_name")]
    assert named == [len(chunks) - 1]
    assert chunks[-1].usage_metadata == whole.usage_metadata
    assert chunks[-1].chunk_position == "last"
    assert whole.usage_metadata["output_tokens"] <= 16
    assert whole.response_metadata["model_name"] == "SmolLM2-135M-Instruct"


def test_llm_stream_yields_text_and_usage_once(llm):
    capture = _Capture()
    pieces = list(llm.stream("Name three colours.", config={"callbacks": [capture]}))
    assert "".join(pieces) == llm.invoke("Name three colours.")
    (result,) = capture.results
    info = result.generations[0][0].generation_info
    assert info["usage"]["output_tokens"] >= 1 and info["model_name"] == "SmolLM2-135M-Instruct"


def test_seed_makes_sampling_reproducible(chat):
    kwargs = {"temperature": 1.5, "max_tokens": 10}
    a = chat.invoke("Invent a name for a cat.", seed=11, **kwargs).content
    b = chat.invoke("Invent a name for a cat.", seed=11, **kwargs).content
    c = chat.invoke("Invent a name for a cat.", seed=12, **kwargs).content
    assert a == b
    assert c != a, "different seeds should sample differently"


def test_bad_arguments_fail_before_any_model_work(chat, monkeypatch):
    def no_generate(*args, **kwargs):
        raise AssertionError("the engine must not run")

    monkeypatch.setattr(Engine, "generate", no_generate)
    with pytest.raises(TypeError, match="unexpected keyword"):
        chat.invoke("hi", temprature=0.3)
    image = {"type": "image", "url": "https://example.com/cat.png"}
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "What is this?"}, image])])
    with pytest.raises(ValueError, match=">= 0"):
        chat.invoke("hi", temperature=-1)


# --- capacity: refused before any prefill ----------------------------------------------------------


def test_capacity_plus_one_raises_before_prefill(chat, llm, shared_engine, monkeypatch):
    prompt = "Summarise the plot of Hamlet."
    n_prompt = len(shared_engine.encode(prompt)[0])
    real = shared_engine.capacity()

    def prefill(*args, **kwargs):
        raise AssertionError("no prefill may start for an input that does not fit")

    monkeypatch.setattr(shared_engine, "prefill", prefill)
    monkeypatch.setattr(
        shared_engine, "capacity", lambda: dataclasses.replace(real, max_tokens=n_prompt + 16 - 1)
    )
    for call in (
        lambda: llm.invoke(prompt),
        lambda: chat.invoke(prompt),
        lambda: list(chat.stream(prompt)),
        lambda: asyncio.run(chat.ainvoke(prompt)),
        lambda: asyncio.run(llm.ainvoke(prompt)),
    ):
        with pytest.raises(ContextTooLongError, match=f"{n_prompt} tokens"):
            call()
    assert shared_engine._lock.waiting == 0
    shared_engine.check_fits(n_prompt, 16 - 1)  # exactly at capacity fits


# --- async: real, non-blocking, cancellable -------------------------------------------------------


@pytest.mark.asyncio
async def test_ainvoke_does_not_block_the_event_loop(chat):
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    result = await chat.ainvoke("Write two sentences about the sea.", max_tokens=24)
    t1 = time.perf_counter()
    stop.set()
    await task
    during = [t for t in ticks if t0 <= t <= t1]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert result.usage_metadata["output_tokens"] >= 8
    assert len(during) >= 10, f"the loop ticked {len(during)} times during a {t1 - t0:.1f}s call"
    assert max(gaps) < max(0.5, (t1 - t0) / 4), "the event loop was blocked"


@pytest.mark.asyncio
async def test_astream_streams_the_same_text_as_invoke(chat, llm):
    messages = [HumanMessage("Name three colours.")]
    chunks = [c async for c in chat.astream(messages)]
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.content for c in chunks) == chat.invoke(messages).content
    assert [i for i, c in enumerate(chunks) if c.usage_metadata] == [len(chunks) - 1]
    pieces = [p async for p in llm.astream("Name three colours.")]
    assert "".join(pieces) == await llm.ainvoke("Name three colours.")
    results = await llm.abatch(["Name three colours.", "Say hi."])
    assert results[0] == "".join(pieces) and results[1]


@pytest.mark.asyncio
async def test_abandoned_astream_frees_the_engine(chat, shared_engine):
    stream = chat.astream("Write a long story about a lighthouse keeper.", max_tokens=200)
    first = await stream.__anext__()
    assert first.content
    await stream.aclose()
    waited = await asyncio.to_thread(_wait_idle, shared_engine)
    assert waited < 30
    # the engine serves the next request at once
    assert (await chat.ainvoke("Say hi.", max_tokens=4)).content


@pytest.mark.asyncio
async def test_cancel_during_prefill_stops_the_engine(chat, shared_engine, monkeypatch):
    decoded = []
    real_decode = shared_engine.decode_one_token
    monkeypatch.setattr(
        shared_engine, "decode_one_token", lambda *a, **k: decoded.append(1) or real_decode(*a, **k)
    )
    long_prompt = " ".join(FILLER_PAGES[0] * 6)  # ~900 tokens: several prefill chunks
    task = asyncio.create_task(chat.ainvoke(long_prompt, max_tokens=50))
    while shared_engine._lock.waiting == 0:  # the request has the engine: prefill has begun
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(_wait_idle, shared_engine)
    assert decoded == [], "a request cancelled during its prefill must not decode"


def test_abandoned_sync_stream_frees_the_engine(chat, shared_engine):
    from reattn_llm.kv.cache import ReAttentionCache

    def caches() -> int:
        gc.collect()
        return sum(isinstance(o, ReAttentionCache) for o in gc.get_objects())

    shared_engine.forget_prefix()
    before = caches()
    stream = chat.stream("Write a long story about a lighthouse keeper.", max_tokens=200)
    assert next(stream).content
    assert shared_engine._lock.waiting == 0  # suspended between deltas, the stream holds no lock
    assert caches() == before + 1  # but it owns its cache until it ends
    stream.close()
    assert caches() == before  # freed, not kept as a prefix
    assert shared_engine._lock.waiting == 0


def test_async_worker_errors_reach_the_caller(chat, shared_engine, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr(shared_engine, "prefill", boom)
    with pytest.raises(RuntimeError, match="kaput"):
        asyncio.run(chat.ainvoke("hi"))
    assert shared_engine._lock.waiting == 0
    assert threading.active_count() < 20


# --- whole documents -----------------------------------------------------------------------------------


def test_lcel_over_a_real_pdf_answers_from_far_outside_the_local_window(
    shared_data, small_config, shared_engine
):
    doc = load_document(shared_data / "pdfs" / "R-intro.pdf", max_pages=8)
    # the Preface and the first half of the first chapter's opening page
    excerpt = doc.text[doc.text.index("[Page 7]") : doc.pages[7].start + 1800]
    cut = excerpt.index("\n", 150) + 1  # after the first lines of the Preface
    excerpt = excerpt[:cut] + PLANTED_FACT + "\n" + excerpt[cut:]

    prompt = PromptTemplate.from_template("{document}\n\nQuestion: {question}")
    llm = ReAttentionLLM(config=small_config, max_tokens=24, progress=False)
    chain = prompt | llm | StrOutputParser()
    capture = _Capture()
    inputs = {"document": excerpt, "question": PLANTED_QUESTION}
    answer = chain.invoke(inputs, config={"callbacks": [capture]})

    assert PLANTED_ANSWER in answer
    # the fact sat far outside the local window, and the prompt was longer than the whole window
    text = prompt.format(document=excerpt, question=PLANTED_QUESTION)
    after_fact = shared_engine.count_tokens(text[text.index(PLANTED_FACT) :])
    assert after_fact > 2 * small_config.local_size
    info = capture.results[0].generations[0][0].generation_info
    assert info["usage"]["input_tokens"] > small_config.window
    assert info["max_position"] < small_config.window  # positions never left the trained (shrunk) window


def test_citations_name_the_page_of_the_planted_fact(tmp_path, small_config):
    doc = load_document(write_text_pdf(tmp_path / "planted.pdf", FILLER_PAGES))
    assert len(doc.pages) == 5 and doc.page_at(doc.text.index(PLANTED_ANSWER)) == PLANTED_PAGE
    chat = ChatReAttention(config=small_config, max_tokens=24, progress=False, cite=True)
    answer = chat.invoke(f"{doc}\n\nQuestion: {PLANTED_QUESTION}")
    assert PLANTED_ANSWER in answer.content
    meta = answer.response_metadata
    assert meta["citations"]
    assert all({"page", "start", "end", "score", "snippet"} <= set(c) for c in meta["citations"])
    assert PLANTED_PAGE in meta["cited_pages"]


# --- options users expect from Hugging Face wrappers ----------------------------------------------


def test_unknown_constructor_arguments_are_refused_naming_the_nearest_setting(small_config):
    with pytest.raises(TypeError, match=r"'temprature' \(did you mean 'temperature'\?\)"):
        ChatReAttention(config=small_config, temprature=0.3)
    with pytest.raises(TypeError, match=r"'context_window' \(did you mean 'max_input_tokens'\?\)"):
        ReAttentionLLM(context_window=4096)
    with pytest.raises(TypeError, match=r"'api_key'"):
        ChatReAttention(api_key="x")
    with pytest.raises(ValueError, match="attn_implementation"):
        ChatReAttention(model_kwargs={"attn_implementation": "eager"})
    with pytest.raises(ValueError, match="tokenizer"):
        ChatReAttention(model=object.__new__(_FakeLoaded))  # a loaded model needs its tokenizer
    # LangChain's own fields and its deprecated callback_manager stay accepted
    ChatReAttention(config=small_config, tags=["t"], metadata={"k": 1}, callbacks=[], verbose=False)


class _FakeLoaded:
    config = None

    def get_input_embeddings(self):  # pragma: no cover - never called
        raise AssertionError


def test_transformers_sampling_options_reach_the_sampler(small_config):
    from reattn_llm.integrations._common import call_params, check_call_kwargs

    chat = ChatReAttention(
        config=small_config,
        repetition_penalty=1.2,
        min_p=0.05,
        typical_p=0.9,
        no_repeat_ngram_size=3,
        top_k=5,
    )
    params, _ = call_params(chat, {"min_p": 0.1}, None)  # a call's value wins over the field
    assert (params.repetition_penalty, params.min_p, params.typical_p) == (1.2, 0.1, 0.9)
    assert (params.no_repeat_ngram_size, params.top_k) == (3, 5)
    # call-time arguments LangChain passes down are accepted; unknown ones are named
    check_call_kwargs(
        "ChatReAttention", {"tags": [], "metadata": {}, "callbacks": None, "run_manager": None}, ()
    )
    with pytest.raises(TypeError, match=r"'repetiton_penalty' \(did you mean 'repetition_penalty'\?\)"):
        chat.invoke("hi", repetiton_penalty=1.1)


def test_max_input_tokens_caps_the_profile_and_the_prompt(small_config, shared_engine, monkeypatch):
    chat = ChatReAttention(config=small_config, max_input_tokens=40, max_tokens=4, progress=False)
    assert chat.profile["max_input_tokens"] == 40 == chat.max_input_tokens
    assert chat._identifying_params["max_input_tokens"] == 40
    monkeypatch.setattr(shared_engine, "prefill", lambda *a, **k: pytest.fail("no prefill over the cap"))
    with pytest.raises(ContextTooLongError, match="max_input_tokens cap of 40"):
        chat.invoke(" ".join(FILLER_PAGES[0]))


def test_a_model_and_tokenizer_loaded_by_the_user(small_config, shared_engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reattn_llm.runtime.models import default_model_dir

    folder = default_model_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    mine = ChatReAttention(
        model=model, tokenizer=tokenizer, config=small_config, max_tokens=8, progress=False
    )
    question = "What is the capital of France? Answer in one word."
    answer = mine.invoke(question)
    assert mine.engine.model is model and mine.engine is not shared_engine  # used as given, patched in place
    assert mine.model_name == str(folder)
    ours = ChatReAttention(config=small_config, max_tokens=8, progress=False).invoke(question)
    assert answer.content == ours.content and "Paris" in answer.content  # the same weights, the same answer


def test_model_kwargs_reach_from_pretrained(small_config, shared_engine):
    from reattn_llm.runtime.model_spec import ModelSpec

    chat = ChatReAttention(config=small_config, model_kwargs={"dtype": "bfloat16", "low_cpu_mem_usage": True})
    assert chat.engine is not shared_engine  # another load of the model: another engine
    assert chat.engine.load().model.dtype == torch.bfloat16
    # a revision names the model on results (and in saved prefixes), so two revisions never mix
    assert str(ModelSpec("org/model", {"revision": "v2"})) == "org/model@v2"
    assert ModelSpec("org/model", {"revision": "v2"}) != ModelSpec("org/model", {"revision": "v3"})


def test_a_batch_with_a_prompt_that_cannot_fit_fails_before_any_answer(
    small_config, shared_engine, monkeypatch
):
    """Every prompt of a batch is checked before the first is answered: a prompt over the cap fails
    the batch at once, not after the answers before it were computed and thrown away."""
    llm = ReAttentionLLM(config=small_config, max_input_tokens=40, max_tokens=4, progress=False)
    monkeypatch.setattr(
        shared_engine, "prefill", lambda *a, **k: pytest.fail("no prefill for a failing batch")
    )
    prompts = ["Say hello.", " ".join(FILLER_PAGES[0])]
    for call in (
        lambda: llm.generate(prompts),
        lambda: llm.batch(prompts),
        lambda: asyncio.run(llm.agenerate(prompts)),
    ):
        with pytest.raises(ContextTooLongError, match="max_input_tokens cap of 40"):
            call()
    assert shared_engine._lock.waiting == 0
