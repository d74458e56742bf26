"""Shared pytest fixtures and hooks."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

# --- core: the real default model, loaded once ---------------------------------------------------

# --- integrations (LangChain / LlamaIndex): one shrunk-window engine of the default model --------

#: ``shared/data`` beside the repository (PDFs and texts); tests that need it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: A window shrunk to 512 tokens (G 4, L 256, span 16, 15 spans) keeps CPU prefills short while
#: a few hundred tokens of document already lie far outside the local window.
SMALL_CONFIG_KWARGS = {
    "window": 512,
    "global_size": 4,
    "local_size": 256,
    "span_size": 16,
    "max_spans": 15,
    "chunk_size": 128,
}


@pytest.fixture(scope="session")
def small_config():
    """The shrunk :class:`ReAttentionConfig` every integration test uses (so they share one engine)."""
    from reattn_llm import ReAttentionConfig

    return ReAttentionConfig(**SMALL_CONFIG_KWARGS)


@pytest.fixture(scope="session")
def shared_engine(small_config):
    """The default model's engine for ``small_config``, weights loaded once for the session."""
    from reattn_llm.runtime.registry import shared_engine

    return shared_engine(None, config=small_config, progress=False).load()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``shared/data`` (skips the test when it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


def _is_langchain_standard_suite(cls: type | None) -> bool:
    try:
        from langchain_tests.base import BaseStandardTests
    except ImportError:  # pragma: no cover
        return False
    return cls is not None and issubclass(cls, BaseStandardTests)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """langchain-tests' standard suites write async tests as bare ``async def`` (made for
    ``asyncio_mode = "auto"``): mark those, and only those, for pytest-asyncio's strict mode."""
    if (
        inspect.iscoroutinefunction(obj)
        and _is_langchain_standard_suite(getattr(collector, "cls", None))
        and not any(m.name == "asyncio" for m in getattr(obj, "pytestmark", []))
    ):
        pytest.mark.asyncio(obj)
    # fall through to the default collection


def _pdf_string(text: str) -> bytes:
    escaped = text.encode("latin-1").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
    return b"(" + escaped + b")"


def write_text_pdf(path: Path, pages: list[list[str]]) -> Path:
    """Write a PDF whose page ``i`` shows the lines ``pages[i]`` (Helvetica, one text object per page)."""
    n = len(pages)
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n))
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Count %d /Kids [%s] >>" % (n, kids),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, lines in enumerate(pages):
        shown = b" T* ".join(_pdf_string(s) + b" Tj" for s in lines)
        body = b"BT /F1 10 Tf 12 TL 40 760 Td " + shown + b" ET"
        objects[4 + 2 * i] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects[5 + 2 * i] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(body), body)
    out = bytearray(b"%PDF-1.7\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offsets[k] for k in sorted(objects))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


_TOPICS = [
    "The river valley grows wheat, barley and oats on its wide terraces.",
    "Trains from the northern line stop at the old station twice an hour.",
    "The museum keeps a collection of maps drawn by early sailors.",
    "In spring the orchards bloom and bees move between the rows of trees.",
    "The town council meets on the first Monday of every month.",
    "A narrow bridge of grey stone crosses the stream below the mill.",
    "Fishermen mend their nets on the harbour wall in the morning.",
    "The library opens at nine and closes at six on weekdays.",
    "Snow covers the mountain passes from December until late March.",
    "The market sells cheese, bread, honey and fresh vegetables.",
    "An old lighthouse stands on the rocks at the end of the cape.",
    "Children walk to the village school along the canal path.",
]

#: The planted fact, its page, and the question that asks for it.
PLANTED_FACT = "The secret code of the vault is 73914."
PLANTED_PAGE = 2
PLANTED_ANSWER = "73914"
PLANTED_QUESTION = "What is the secret code of the vault?"

#: Five pages of distinct filler (about 150 tokens each) with the fact in the middle of page 2.
FILLER_PAGES = [[_TOPICS[(7 * p + i) % len(_TOPICS)] for i in range(10)] for p in range(5)]
FILLER_PAGES[PLANTED_PAGE - 1].insert(5, PLANTED_FACT)


# --- core: the real default model, loaded once ---------------------------------------------------


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)``: SmolLM2-135M-Instruct from the embedded GGUF, fp32 on CPU."""
    import torch

    from reattn_llm.runtime.models import load_model

    return load_model(None, torch.device("cpu"), torch.float32)
