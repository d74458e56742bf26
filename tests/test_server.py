"""``reattn serve`` as a real process on 127.0.0.1, driven by the real ``openai`` client (and
LangChain's ``ChatOpenAI`` / LlamaIndex's ``OpenAILike`` when installed): plain and streamed answers,
usage, stop strings, document slots, a disconnect, concurrent clients, and OpenAI-shaped errors.

One server (the default model, the suite's small config, an API key) serves the whole module.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import _TOPICS, SMALL_CONFIG_KWARGS

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

KEY = "test-key-123"
MAX_PROMPT = 1200
CHUNK = SMALL_CONFIG_KWARGS["chunk_size"]
DOC_A = " ".join(_TOPICS[i % 12] for i in range(0, 30)) + " The secret code of the vault is 73914."
DOC_B = " ".join(_TOPICS[(5 * i + 3) % 12] for i in range(0, 30)) + " The gardener of the castle is Tomas."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(base_url, stats)`` of a server process, stopped after the module."""
    port = _free_port()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL_CONFIG_KWARGS.items()]
    cmd = [sys.executable, "-m", "reattn_llm.cli", "serve", "--port", str(port), "--device", "cpu"]
    cmd += ["--api-key", KEY, "--max-prompt-tokens", str(MAX_PROMPT), *flags]
    env = {**os.environ, "REATTN_LLM_PREFIX_DIR": str(tmp_path_factory.mktemp("prefixes"))}
    log = tmp_path_factory.mktemp("log") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + 120
    try:
        for _ in range(600):  # bounded: at most 120 s
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/models", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)

        def stats() -> dict:
            return httpx.get(f"{base}/stats", headers=headers, timeout=10).json()

        yield base, stats
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=KEY, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer_engine():
    """An engine used for its tokenizer only (no weights loaded): counts the prompts' own tokens."""
    from reattn_llm import ReAttentionConfig
    from reattn_llm.runtime.engine import Engine

    return Engine(None, device="cpu", config=ReAttentionConfig(**SMALL_CONFIG_KWARGS), progress=False)


def _ask(doc: str, question: str) -> list[dict]:
    return [{"role": "user", "content": f"{doc}\n\nAnswer using the document above.\nQuestion: {question}"}]


def test_plain_and_streamed_answers_agree_with_usage_and_stop(client, server):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=12)
    text = plain.choices[0].message.content
    assert text.strip() and plain.choices[0].message.role == "assistant"
    use = plain.usage
    assert 10 < use.prompt_tokens < 60 and 1 <= use.completion_tokens <= 12
    assert use.total_tokens == use.prompt_tokens + use.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=messages,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same answer, delta by delta
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == use.prompt_tokens
    assert last.usage.completion_tokens == use.completion_tokens
    assert (
        last.usage.prompt_tokens_details.cached_tokens
        == server[1]()["last"]["prompt_tokens_details"]["cached_tokens"]
    )

    words = text.split()
    stop = " " + words[2]
    cut = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=messages, max_tokens=12, stop=[stop]
    )
    assert cut.choices[0].message.content == text.split(stop)[0]
    assert cut.choices[0].finish_reason == "stop"

    raw = client.completions.create(
        model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=4
    )
    assert raw.object == "text_completion" and raw.choices[0].text and raw.usage.completion_tokens <= 4


def test_alternating_documents_prefill_only_the_questions(client, server, tokenizer_engine):
    asks = [(DOC_A, "What is the secret code of the vault?"), (DOC_B, "Who is the gardener of the castle?")]
    asks += [(DOC_A, "When does the library open?"), (DOC_B, "What does the market sell?")]
    hits0 = server[1]()["slots"]["hits"]
    results = []
    for doc, q in asks:
        r = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=_ask(doc, q), max_tokens=8)
        results.append(r.usage)
    for u in results:
        assert u.prompt_tokens > 3 * CHUNK  # each document spans several chunks
    assert results[0].prompt_tokens_details.cached_tokens == 0  # first time: all prefilled
    assert results[1].prompt_tokens_details.cached_tokens == 0
    for second, (doc, q1), (_, q2) in [(2, asks[0], asks[2]), (3, asks[1], asks[3])]:
        a, _ = tokenizer_engine.encode(_ask(doc, q1))
        b, _ = tokenizer_engine.encode(_ask(doc, q2))
        shared = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        own = len(b) - shared  # the second question's own tokens
        u = results[second]
        prefilled = u.prompt_tokens - u.prompt_tokens_details.cached_tokens
        assert u.prompt_tokens == len(b)
        assert own <= prefilled <= own + CHUNK, (prefilled, own)
    hits = server[1]()["slots"]["hits"]
    assert hits["memory"] - hits0["memory"] >= 2  # both documents were still in memory slots
    assert len(server[1]()["slots"]["slots"]) >= 2


def test_disconnect_mid_stream_cancels_the_request(client, server):
    before = server[1]()
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Write a very long story about a dragon and a knight."}],
        max_tokens=400,
        stream=True,
    )
    seen = 0
    for chunk in stream:  # bounded by max_tokens; left after three deltas
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen == 3:
                break
    stream.close()
    t0 = time.monotonic()
    for _ in range(300):  # at most ~30 s
        now = server[1]()
        if now["cancelled"] > before["cancelled"] and now["waiting"] == 0:
            break
        time.sleep(0.1)
    assert now["cancelled"] == before["cancelled"] + 1 and now["waiting"] == 0
    assert now["completed"] == before["completed"]  # it never ran to its 400 tokens
    assert time.monotonic() - t0 < 20
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert r.choices[0].message.content.strip() and r.usage.completion_tokens <= 8


def test_concurrent_clients_get_their_serial_answers(client):
    questions = ["Name a colour of the sky.", "What is two plus two?"]

    def ask(q: str) -> str:
        msgs = [{"role": "user", "content": q}]
        r = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=msgs, max_tokens=8)
        return r.choices[0].message.content

    serial = [ask(q) for q in questions]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(ask, questions))
    assert together == serial and serial[0] != serial[1]


def test_errors_are_openai_shaped(client, server):
    base = server[0]
    long = [{"role": "user", "content": "word " * 1500 + "\nWhat is this?"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=long, max_tokens=8)
    err = e.value.body
    assert e.value.status_code == 400 and err["code"] == "context_length_exceeded"
    assert f"cap of {MAX_PROMPT}" in err["message"] and "The prompt has 15" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:  # past what the device can hold
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Hi"}], max_tokens=10**9
        )
    assert "holds at most" in e.value.body["message"] and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Hi"}], temperature=-1
        )
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x"}},
        )
    assert "json_schema.schema" in e.value.body["message"] and e.value.body["param"] == "response_format"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    bare = httpx.post(f"{base}/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]


def test_response_format_json_schema_and_json_object(client):
    """``response_format`` constrains the answer: a JSON schema's object validates against it, and
    ``json_object`` gives a JSON object, plain and streamed alike."""
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    text = "Anna Berg is 41 years old and lives in Oslo. Give her name and age as JSON."
    messages = [{"role": "user", "content": text}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=messages, max_tokens=30, response_format=fmt
    )
    answer = json.loads(r.choices[0].message.content)
    jsonschema.validate(answer, schema)
    assert r.choices[0].finish_reason == "stop" and answer["age"] == 41
    parts = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=messages, max_tokens=30, response_format=fmt, stream=True
    )
    assert json.loads("".join(p.choices[0].delta.content or "" for p in parts if p.choices)) == answer
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=messages,
        max_tokens=30,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_langchain_and_llamaindex_clients(client, server):
    messages = [{"role": "user", "content": "What is the capital of Italy?"}]
    want = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=8)
    want = want.choices[0].message.content
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        ChatOpenAI = None
    if ChatOpenAI is not None:
        llm = ChatOpenAI(
            base_url=server[0], api_key=KEY, model="SmolLM2-135M-Instruct", max_tokens=8, temperature=0
        )
        assert llm.invoke(messages[0]["content"]).content == want
    try:
        from llama_index.core.llms import ChatMessage
        from llama_index.llms.openai_like import OpenAILike
    except ImportError:
        OpenAILike = None
    if OpenAILike is not None:
        llm = OpenAILike(
            model="SmolLM2-135M-Instruct",
            api_base=server[0],
            api_key=KEY,
            is_chat_model=True,
            max_tokens=8,
            temperature=0,
        )
        assert llm.chat([ChatMessage(role="user", content=messages[0]["content"])]).message.content == want
    if ChatOpenAI is None and OpenAILike is None:
        pytest.skip("neither langchain-openai nor llama-index-llms-openai-like is installed")


class _Layer:
    def __init__(self) -> None:
        self.cropped: int | None = None

    def crop(self, n: int) -> None:
        self.cropped = n


class _Cache:
    """Stands in for a ReAttentionCache: its bytes and its layers' crop."""

    def __init__(self, nbytes: int) -> None:
        self.layers = [_Layer()]
        self._nbytes = nbytes

    def nbytes(self) -> int:
        return self._nbytes

    def host_nbytes(self) -> int:
        return 0


def test_document_slots_are_an_lru_in_bytes():
    from reattn_llm.serve.slots import DocumentSlots

    slots = DocumentSlots(max_bytes=250)
    docs = {name: [base + i for i in range(8)] for name, base in (("a", 100), ("b", 200), ("c", 300))}
    for name in "abc":
        slots.keep([*docs[name], 1], _Cache(100), reusable=8)
    assert [s["tokens"] for s in slots.stats()["slots"]] == [9, 9] and slots.stats()["bytes"] == 200
    assert slots.take([*docs["a"], 5], chunk=4) == (None, 0)  # "a" went first (least recently used)
    cache, n = slots.take([*docs["b"], 7], chunk=4)
    assert n == 8 and cache.layers[0].cropped == 8 and len(slots.stats()["slots"]) == 1  # taken: owned
    slots.keep([*docs["b"], 7, 7], cache, reusable=8)
    slots.keep([*docs["b"][:4], 9, 9, 9, 9, 9], _Cache(10), reusable=4)  # a shorter slot stays beside it
    slots.keep([*docs["b"], 8], _Cache(100), reusable=8)  # supersedes the kept "b" and its shorter prefix
    assert len(slots.stats()["slots"]) == 2 and slots.prefix.ids[-1] == 8
    assert slots.hits == {"memory": 1, "disk": 0, "miss": 1}


class _SlidingLayer(_Layer):
    """A sliding-window layer that holds only its last rows: it cannot be cut back below ``held``."""

    def __init__(self, held: int) -> None:
        super().__init__()
        self.held = held

    def can_crop(self, n: int) -> bool:
        return n >= self.held

    def crop(self, n: int) -> None:
        if not self.can_crop(n):
            raise RuntimeError(f"cannot cut back to {n}")
        super().crop(n)


def test_document_slots_pass_over_a_slot_that_cannot_be_cut_back():
    """A slot whose sliding-window layers no longer hold the rows before the reusable length (Gemma 3)
    is not taken (it would fail the request) and stays for a prompt that reuses all of it."""
    from reattn_llm.serve.slots import DocumentSlots

    slots = DocumentSlots(max_bytes=10**6)
    doc = [100 + i for i in range(8)]
    long = _Cache(10)
    long.layers.append(_SlidingLayer(held=8))
    slots.keep([*doc, 1, 1, 1, 1], long, reusable=8)
    short = _Cache(10)
    slots.keep([*doc[:4], 9, 9], short, reusable=4)  # kept after: beside the longer slot
    cache, n = slots.take([*doc[:6], 5, 5, 5], chunk=2)  # shares 6 tokens with the long slot
    assert (cache, n) == (short, 4) and short.layers[0].cropped == 4  # the croppable shorter slot
    assert [s["tokens"] for s in slots.stats()["slots"]] == [12]  # the long one is still kept
    cache, n = slots.take([*doc, 1, 1, 7], chunk=4)  # all 8 reusable tokens: exactly what it holds
    assert (cache, n) == (long, 8) and long.layers[1].cropped == 8


class _FakeEngine:
    """Stands in for an Engine: each answer is ``deltas``, then (``hold``) waits until cancelled."""

    model_name = "fake-model"

    def __init__(self, deltas: list[str], hold: bool = False) -> None:
        from reattn_llm.runtime.fifo import FifoLock

        self.deltas, self.hold, self._lock = deltas, hold, FifoLock()

    def generate(self, prompt, params=None, **kw):
        from reattn_llm.runtime.fifo import Turn
        from reattn_llm.runtime.stream import Completion, Stream

        turn = Turn(self._lock)

        def answer():
            for d in self.deltas:
                with turn:  # a unit of model work: a cancelled request stops here
                    pass
                yield d
            while self.hold:
                with turn:
                    time.sleep(0.01)
            return Completion("".join(self.deltas), 3, len(self.deltas), "stop", 0.0, 0.0, self.model_name)

        return Stream(answer(), turn)


def _fake_server(engine):
    from reattn_llm.runtime.sampling import SamplingParams
    from reattn_llm.serve.app import create_app
    from reattn_llm.serve.protocol import Job

    server = create_app(engine).state.server

    async def job(request, chat):
        return Job("hi", SamplingParams(max_new_tokens=4), chat, False, False, engine.model_name)

    server._job = job
    return server


def test_a_cancelled_request_handler_leaves_no_task_waiting():
    """When the handler of a plain (not streamed) request is cancelled (the server stops), its
    request is cancelled and nothing is left waiting on the engine's worker."""
    import asyncio

    server = _fake_server(_FakeEngine(["a"], hold=True))

    class Connected:
        async def is_disconnected(self) -> bool:
            return False

    async def main() -> list:
        before = asyncio.all_tasks()
        handler = asyncio.ensure_future(server._complete(Connected(), chat=True))
        await asyncio.sleep(0.3)  # the answer is under way
        handler.cancel()
        response = await handler
        assert response.status_code == 499
        await asyncio.sleep(0.2)
        return [t for t in asyncio.all_tasks() - before if not t.done()]

    assert asyncio.run(asyncio.wait_for(main(), 10)) == []
    assert server.counts["cancelled"] == 1 and server.engine._lock.waiting == 0


def test_a_client_leaving_after_the_last_token_counts_as_completed():
    """A streamed answer that ran to its end counts as completed, not cancelled, even when the
    client leaves before the finish and usage chunks."""
    import asyncio

    from reattn_llm.serve.protocol import Reply

    server = _fake_server(_FakeEngine(["one", " two"]))

    async def main() -> None:
        job = await server._job(None, True)
        job.include_usage = True
        events = server._sse(server.engine.generate("hi"), Reply(job), [3])
        async for event in events:
            if '"finish_reason": "stop"' in event:
                break  # the client goes away here
        await events.aclose()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert {k: server.counts[k] for k in ("completed", "cancelled")} == {"completed": 1, "cancelled": 0}
    assert server.last["completion_tokens"] == 2


def test_one_tokenization_per_request_and_bad_model_names(shared_engine, monkeypatch):
    """The server tokenizes each prompt once (its 400 checks and the answer share it), plain and
    streamed; a ``model`` that is not a string is a 400 naming the field, not a server error."""
    from starlette.testclient import TestClient

    from reattn_llm.runtime import engine as engine_module
    from reattn_llm.serve.app import create_app

    calls = []
    encode = engine_module.encode_prompt

    def counted(*args, **kwargs):
        calls.append(args[1])
        return encode(*args, **kwargs)

    monkeypatch.setattr(engine_module, "encode_prompt", counted)
    client = TestClient(create_app(shared_engine))
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 3}
    plain = client.post("/v1/chat/completions", json=body)
    assert plain.status_code == 200 and len(calls) == 1
    text = plain.json()["choices"][0]["message"]["content"]
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.status_code == 200 and len(calls) == 2
    deltas = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas if d["choices"]) == text
    too_long = client.post("/v1/completions", json={"prompt": "word " * 50, "max_tokens": 10**9})
    assert too_long.status_code == 400 and len(calls) == 3  # refused on its one tokenization
    for bad in (["SmolLM2-135M-Instruct"], {"id": 1}, 7):
        r = client.post("/v1/chat/completions", json={**body, "model": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
        assert "must be a string" in r.json()["error"]["message"]
    assert len(calls) == 3


def test_document_slots_write_to_disk_only_what_can_be_saved():
    """A Gemma 3 prompt whose sliding-window layers no longer hold their rows at the reusable length
    stays a memory slot but is not offered to the document store (saving it would raise at the end
    of the request); one that still holds them is written through."""
    import torch

    from reattn_llm.kv.cache import SlidingLayer
    from reattn_llm.serve.slots import DocumentSlots

    class Disk:
        def __init__(self) -> None:
            self.put_lengths: list[int] = []
            self.root = "store"

        def put(self, spec, prefix) -> None:
            self.put_lengths.append(prefix.reusable)

        def find(self, *args, **kwargs):
            return None

    layer = SlidingLayer(sliding_window=4)
    layer.update(torch.randn(1, 1, 8, 2), torch.randn(1, 1, 8, 2))  # a prefill chunk: rows kept at 8
    for _ in range(4):
        layer.update(torch.randn(1, 1, 1, 2), torch.randn(1, 1, 1, 2))  # decode steps: 12 tokens
    cache = _Cache(100)
    cache.layers = [layer]
    disk = Disk()
    slots = DocumentSlots(max_bytes=10**6, disk=disk, spec=lambda: "spec")
    ids = list(range(12))
    slots.keep(ids, cache, reusable=4)  # its rows after 4 tokens are gone
    slots.keep([*ids[:8], 1, 1, 1, 1], cache, reusable=8)  # after 8: a chunk end, still held
    assert disk.put_lengths == [8]
    assert [s["reusable_tokens"] for s in slots.stats()["slots"]] == [8]  # the first was superseded


def _spied_app(engine, monkeypatch, **kwargs):
    """``(TestClient, calls)``: an app over ``engine`` whose every ``engine.generate`` is recorded."""
    from starlette.testclient import TestClient

    from reattn_llm.serve.app import create_app

    calls: list[tuple] = []
    generate = engine.generate

    def spy(*args, **kw):
        calls.append(args)
        return generate(*args, **kw)

    monkeypatch.setattr(engine, "generate", spy)
    return TestClient(create_app(engine, **kwargs)), calls


def test_bad_requests_are_refused_before_the_stream_and_any_model_work(shared_engine, monkeypatch):
    """An error knowable up front (a response_format schema that is not JSON or that xgrammar cannot
    compile, a prompt over the cap or the device, a bad sampling setting, a seed torch cannot take,
    messages the chat template refuses) is a 400 in OpenAI's shape, streamed or not: no stream
    starts and the engine's generate is never called."""
    client, calls = _spied_app(shared_engine, monkeypatch, max_prompt_tokens=MAX_PROMPT)
    hi = [{"role": "user", "content": "Hi"}]

    def fmt(schema):
        return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

    cases = [
        ({"response_format": fmt({"type": "strin"})}, "response_format", 'Unsupported type "strin"'),
        (
            {"response_format": fmt({"type": "integer", "minimum": 5, "maximum": 1})},
            "response_format",
            "minimum",
        ),
        ({"response_format": fmt({"type": "string", "pattern": "(("})}, "response_format", "parenthesis"),
        ({"response_format": fmt("{not json")}, "response_format", "not valid JSON"),
        ({"messages": [{"role": "user", "content": "word " * 1500}]}, "messages", f"cap of {MAX_PROMPT}"),
        ({"max_tokens": 10**9}, "messages", "holds at most"),
        ({"temperature": -1}, "temperature", "from 0 to 2"),
        ({"top_p": 0}, "top_p", "top_p=0"),
        ({"seed": 2**64}, "seed", "seed=18446744073709551616"),
    ]
    for stream in (True, False):
        for extra, param, words in cases:
            body = {"messages": hi, "max_tokens": 3, "stream": stream, **extra}
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, (extra, r.text[:300])
            assert r.headers["content-type"] == "application/json"  # not an event stream
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param, (extra, err)
            assert words in err["message"], (extra, err)
            if param == "response_format" and "not valid JSON" not in words:
                assert "json_schema.schema" in err["message"] and "fix" in err["message"]
                assert "/project/" not in err["message"]  # xgrammar's reason, without its source line
    tok = shared_engine.tokenizer
    monkeypatch.setattr(tok, "chat_template", "{{ raise_exception('Roles must alternate user/assistant') }}")
    for stream in (True, False):
        r = client.post("/v1/chat/completions", json={"messages": hi, "max_tokens": 3, "stream": stream})
        assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text[:300]
        err = r.json()["error"]
        assert err["param"] == "messages" and "Roles must alternate user/assistant" in err["message"]
    assert calls == []
    assert client.app.state.server.counts["requests"] == 0


def test_a_response_format_schema_is_compiled_once(shared_engine, monkeypatch):
    """The up-front check compiles the schema once and the answer reuses it (plain and streamed,
    and the next request with the same schema)."""
    xgrammar = pytest.importorskip("xgrammar")

    compiled: list[str] = []
    compile_json_schema = xgrammar.GrammarCompiler.compile_json_schema

    def counted(self, schema, *args, **kwargs):
        compiled.append(schema)
        return compile_json_schema(self, schema, *args, **kwargs)

    monkeypatch.setattr(xgrammar.GrammarCompiler, "compile_json_schema", counted)
    client, calls = _spied_app(shared_engine, monkeypatch)
    schema = {
        "type": "object",
        "properties": {"compiled_once": {"type": "integer"}},
        "required": ["compiled_once"],
    }
    body = {
        "messages": [{"role": "user", "content": "Give a number as JSON."}],
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    }
    plain = client.post("/v1/chat/completions", json=body)
    assert plain.status_code == 200 and len(calls) == 1 and len(compiled) == 1
    text = plain.json()["choices"][0]["message"]["content"]
    assert text.startswith('{"compiled_')  # the constraint ran: the schema's key is forced
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.status_code == 200 and len(calls) == 2 and len(compiled) == 1
    deltas = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas if d.get("choices")) == text
