"""One ReAttentionLLM under concurrent use: threads and asyncio tasks get the serial answers, in
arrival order, with no deadlock; a long run keeps memory flat and answers stable."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from reattn_llm import ReAttentionLLM

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
FACTS = [
    f"The code of room {i} is {code}. "
    for i, code in enumerate(["41730", "58213", "69024", "70385", "81946", "92507", "13658", "24879"])
]


def _document(n_filler: int = 60) -> str:
    parts = []
    for fact in FACTS:
        parts.append(FILLER * (n_filler // len(FACTS)))
        parts.append(fact)
    return "".join(parts) + FILLER * 4


QUESTIONS = [f"{_document()}\n\nWhat is the code of room {i}?" for i in range(8)]


@pytest.fixture(scope="module")
def llm(small_config, shared_engine):
    return ReAttentionLLM(config=small_config, max_tokens=20, progress=False)


@pytest.fixture(scope="module")
def serial(llm):
    return [llm.invoke(q) for q in QUESTIONS]


def test_serial_answers_are_real(serial):
    # the answers quote codes planted across the whole document, far outside the 256-token local
    # window (the 135M model sometimes names a neighbouring room's code)
    codes = [f.split()[-1].rstrip(".") for f in FACTS]
    hits = sum(any(code in ans for code in codes) for ans in serial)
    assert hits >= 6, serial


def test_eight_threads_match_serial_in_arrival_order(llm, serial):
    results: list[str | None] = [None] * 8
    started: list[float] = [0.0] * 8
    finished: list[float] = [0.0] * 8

    def work(i: int) -> None:
        started[i] = time.perf_counter()
        results[i] = llm.invoke(QUESTIONS[i])
        finished[i] = time.perf_counter()

    threads = []
    for i in range(8):
        t = threading.Thread(target=work, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # a definite arrival order
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "deadlock: a request never finished"
    assert results == serial
    # first come, first served: requests finish in the order they arrived
    assert finished == sorted(finished)
    # no request waits longer than the requests ahead of it took (plus scheduling slack)
    service = [finished[0] - started[0]] + [finished[i] - finished[i - 1] for i in range(1, 8)]
    for i in range(8):
        waited = finished[i] - started[i] - service[i]
        assert waited <= sum(service[:i]) + 1.0


def test_eight_asyncio_tasks_match_serial_without_blocking_the_loop(llm, serial):
    async def main() -> tuple[list[str], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        answers = await asyncio.wait_for(asyncio.gather(*(llm.ainvoke(q) for q in QUESTIONS)), timeout=600)
        done.set()
        await tick_task
        return list(answers), ticks

    answers, ticks = asyncio.run(main())
    assert answers == serial
    assert ticks > 20  # the event loop kept running while the model worked


def test_cancelled_async_stream_frees_the_engine(llm, serial, shared_engine):
    async def main() -> str:
        agen = llm.astream(QUESTIONS[0])
        await agen.__anext__()
        await agen.aclose()
        return await llm.ainvoke(QUESTIONS[1])

    assert asyncio.run(main()) == serial[1]
    assert shared_engine._lock.waiting == 0


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


#: Questions of the soak after its warm-up (each re-prefills its question over a kept 4.4K-token
#: document, whose fp32 K/V alone take ~200 MB): a leak of more than about 15 MB a request (0.6% of
#: the ~2.5 GB process) fails the 5% bound.
SOAK = 8


def test_soak_of_questions_memory_flat_answers_stable(small_config, shared_engine):
    # short answers (digits are single tokens: the code ends by token 12); the soak is about state
    llm = ReAttentionLLM(config=small_config, max_tokens=13, progress=False)
    document = (FILLER * 45 + FACTS[3]) * 4  # 4,377 tokens: its first prefill is most of the test's time
    questions = [f"{document}\n\nWhat is the code of room 3?", f"{document}\n\nWhat color is the sky?"]
    first = [llm.invoke(q) for q in questions]
    for _ in range(2):  # warm-up (with the two first answers: four)
        llm.invoke(questions[0])
    base = _rss_bytes()
    answers = [llm.invoke(questions[i % 2]) for i in range(SOAK)]
    growth = (_rss_bytes() - base) / base
    assert answers == [first[i % 2] for i in range(SOAK)]
    assert "70385" in first[0], first  # room 3's code, 4 copies in the document
    assert growth < 0.05, f"resident memory grew {growth:.1%} over {SOAK} questions"


def test_half_consumed_sync_stream_does_not_hold_the_engine(llm, serial, shared_engine):
    """``it = llm.stream(p); next(it); llm.invoke(q)`` in one thread, run with a timeout so that a
    regression fails instead of hanging (closing the suspended stream then frees the engine)."""
    streams: list = []
    answer: list[str] = []

    def one_thread() -> None:
        stream = llm.stream(QUESTIONS[0])
        streams.append((stream, next(stream)))
        answer.append(llm.invoke(QUESTIONS[1]))

    worker = threading.Thread(target=one_thread, daemon=True)
    worker.start()
    worker.join(timeout=120)
    hung = worker.is_alive()
    if hung:
        streams[0][0].close()  # gives the engine back, so the rest of the suite goes on
        worker.join(timeout=600)
    assert not hung, "deadlock: a suspended stream held the engine"
    stream, first = streams[0]
    assert answer == [serial[1]]
    assert first + "".join(stream) == serial[0]  # the suspended stream resumes where it stopped
    assert shared_engine._lock.waiting == 0
