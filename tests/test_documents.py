"""Tests of the document path: real PDFs and texts in, page anchors and clear errors out.

Real data comes from ``../shared/data`` (skipped when absent); bad files are generated here.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import subprocess
import sys
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest

pypdf = pytest.importorskip("pypdf")
from pypdf import PdfReader, PdfWriter  # noqa: E402

from reattn_llm.documents import PageSpan, clean_text, load_document, load_documents  # noqa: E402
from reattn_llm.errors import (  # noqa: E402
    ConfigError,
    CorruptDocumentError,
    DocumentError,
    DocumentNotFoundError,
    EmptyDocumentError,
    EncryptedDocumentError,
    ImageOnlyDocumentError,
    ReAttentionError,
    UnsupportedDocumentError,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]

# helloworld.pdf encrypted with AES-256 (user password "secret", owner "owner-pw") and with AES-128
# (empty user password, i.e. owner-password only). Embedded because writing AES needs `cryptography`.
AES256_USER_SECRET = base64.b64decode(
    "JVBERi0xLjMKJeLjz9MKMSAwIG9iago8PAovVHlwZSAvQ2F0YWxvZwovUGFnZXMgMiAwIFIKPj4KZW5kb2JqCjIgMCBvYmoKPDwK"
    "L1R5cGUgL1BhZ2VzCi9NZWRpYUJveCBbIDAgMCAyMDAgMjAwIF0KL0NvdW50IDEKL0tpZHMgWyAzIDAgUiBdCj4+CmVuZG9iagoz"
    "IDAgb2JqCjw8Ci9UeXBlIC9QYWdlCi9QYXJlbnQgMiAwIFIKL1Jlc291cmNlcyA8PAovRm9udCA8PAovRjEgNCAwIFIKPj4KPj4K"
    "L0NvbnRlbnRzIDUgMCBSCi9NZWRpYUJveCBbIDAgMCAyMDAgMjAwIF0KPj4KZW5kb2JqCjQgMCBvYmoKPDwKL1R5cGUgL0ZvbnQK"
    "L1N1YnR5cGUgL1R5cGUxCi9CYXNlRm9udCAvVGltZXMtUm9tYW4KPj4KZW5kb2JqCjUgMCBvYmoKPDwKL0xlbmd0aCA2NAo+Pgpz"
    "dHJlYW0KVMjwndtlwy2ObQi7ANHuUqOVqK8O1jXck1VQCNiVJUTwtTGvcOlXmNB8qRGYqfRQxZWkZnNe1TVGkR4zPcaRywplbmRz"
    "dHJlYW0KZW5kb2JqCjYgMCBvYmoKPDwKL1YgNQovUiA2Ci9MZW5ndGggMjU2Ci9QIDQyOTQ5NjcyOTIKL0ZpbHRlciAvU3RhbmRh"
    "cmQKL08gPDRlM2ZhOTkwOTQwMmIxYjQxMTUzOWM3OTI3ZTA1MGQ1ZmE0MGJhZTZjMWU1MDQ3M2IzOTM4NjAzMmUzYTM2M2Q4OWQ5"
    "YTM3MTI2NDUwNTJkYTlkMzhiZjQ1ZmZlYjM1Nz4KL1UgPGFjMzMxM2YxYWY1NDRlNmZhMjUyOWNjZDI5ZjcyNTFiMjM1NGJhOWY5"
    "NGZmNjgyNTE0YjAwNWQ1NjQ4NzcxZGJmNWRkODk4MmEzZTZlMGExMzQ5OTJiNWVkOTEzMDZkZD4KL0NGIDw8Ci9TdGRDRiA8PAov"
    "QXV0aEV2ZW50IC9Eb2NPcGVuCi9DRk0gL0FFU1YzCi9MZW5ndGggMzIKPj4KPj4KL1N0bUYgL1N0ZENGCi9TdHJGIC9TdGRDRgov"
    "T0UgPGM1ZTJlNjk2YmRmMGZjZmNjOGE5MjgwMzkwYjYyNjJmOGI5NzU3MjhmNDQwZmM2ODc3NTM4NjljNDdhYTk3NTE+Ci9VRSA8"
    "M2E0MzZmNTc3NjczZmZkN2ZiNWE3MDM1YjBhZWRiZTk3ZTI4ZWM4MDRlNWQ5ZjZjMGFlNTc4MWYxYTUxMGQ2Nj4KL1Blcm1zIDw1"
    "NTEzODAxMDVlZjllMTc1NjZjYTMxNGE3NTMwNWY5ND4KPj4KZW5kb2JqCnhyZWYKMCA3CjAwMDAwMDAwMDAgNjU1MzUgZiAKMDAw"
    "MDAwMDAxNSAwMDAwMCBuIAowMDAwMDAwMDY0IDAwMDAwIG4gCjAwMDAwMDAxNDkgMDAwMDAgbiAKMDAwMDAwMDI3NyAwMDAwMCBu"
    "IAowMDAwMDAwMzQ5IDAwMDAwIG4gCjAwMDAwMDA0NjMgMDAwMDAgbiAKdHJhaWxlcgo8PAovU2l6ZSA3Ci9Sb290IDEgMCBSCi9J"
    "RCBbIDxkMDQ4MTZhNTRhNWI2ZTg2YzQ1NGRmMTE4ODc3MmExNT4gPGQwNDgxNmE1NGE1YjZlODZjNDU0ZGYxMTg4NzcyYTE1PiBd"
    "Ci9FbmNyeXB0IDYgMCBSCj4+CnN0YXJ0eHJlZgoxMDE4CiUlRU9GCg=="
)
AES128_OWNER_ONLY = base64.b64decode(
    "JVBERi0xLjMKJeLjz9MKMSAwIG9iago8PAovVHlwZSAvQ2F0YWxvZwovUGFnZXMgMiAwIFIKPj4KZW5kb2JqCjIgMCBvYmoKPDwK"
    "L1R5cGUgL1BhZ2VzCi9NZWRpYUJveCBbIDAgMCAyMDAgMjAwIF0KL0NvdW50IDEKL0tpZHMgWyAzIDAgUiBdCj4+CmVuZG9iagoz"
    "IDAgb2JqCjw8Ci9UeXBlIC9QYWdlCi9QYXJlbnQgMiAwIFIKL1Jlc291cmNlcyA8PAovRm9udCA8PAovRjEgNCAwIFIKPj4KPj4K"
    "L0NvbnRlbnRzIDUgMCBSCi9NZWRpYUJveCBbIDAgMCAyMDAgMjAwIF0KPj4KZW5kb2JqCjQgMCBvYmoKPDwKL1R5cGUgL0ZvbnQK"
    "L1N1YnR5cGUgL1R5cGUxCi9CYXNlRm9udCAvVGltZXMtUm9tYW4KPj4KZW5kb2JqCjUgMCBvYmoKPDwKL0xlbmd0aCA2NAo+Pgpz"
    "dHJlYW0K8Ummusw3WNJAb/GaAA4ju6oDRIDniq9o6YWVfvi/HjBBZP2g1rHmXaDn7g6ktLiwmJhjsW85RGUxQcIe3rrQ8QplbmRz"
    "dHJlYW0KZW5kb2JqCjYgMCBvYmoKPDwKL1YgNAovUiA0Ci9MZW5ndGggMTI4Ci9QIDQyOTQ5NjcyOTIKL0ZpbHRlciAvU3RhbmRh"
    "cmQKL08gPGNlOWQ1MWVjYzQ3OTcxMWJlNzA3YWQzNzlhNTRhMGY0YjMwOTE2ZDMyNDAwODdlY2E1ZTIzZjE1YjI4MzkzZjM+Ci9V"
    "IDwxZWYwZjQwNDBhNWM1MmRjYmEwYWMyYzVhZTIxY2Q1YzI4YmY0ZTVlNGU3NThhNDE2NDAwNGU1NmZmZmEwMTA4PgovQ0YgPDwK"
    "L1N0ZENGIDw8Ci9BdXRoRXZlbnQgL0RvY09wZW4KL0NGTSAvQUVTVjIKL0xlbmd0aCAxNgo+Pgo+PgovU3RtRiAvU3RkQ0YKL1N0"
    "ckYgL1N0ZENGCj4+CmVuZG9iagp4cmVmCjAgNwowMDAwMDAwMDAwIDY1NTM1IGYgCjAwMDAwMDAwMTUgMDAwMDAgbiAKMDAwMDAw"
    "MDA2NCAwMDAwMCBuIAowMDAwMDAwMTQ5IDAwMDAwIG4gCjAwMDAwMDAyNzcgMDAwMDAgbiAKMDAwMDAwMDM0OSAwMDAwMCBuIAow"
    "MDAwMDAwNDYzIDAwMDAwIG4gCnRyYWlsZXIKPDwKL1NpemUgNwovUm9vdCAxIDAgUgovSUQgWyA8YTRkZThiNzIzZDBlYzJhZmFl"
    "MWZlMzEwMjY0NTU2ZDE+IDxhNGRlOGI3MjNkMGVjMmFmYWUxZmUzMTAyNjQ1NTZkMT4gXQovRW5jcnlwdCA2IDAgUgo+PgpzdGFy"
    "dHhyZWYKNzcwCiUlRU9GCg=="
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def pdfs() -> Path:
    folder = DATA / "pdfs"
    if not folder.is_dir():
        pytest.skip(f"shared test data not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def texts() -> Path:
    folder = DATA / "texts"
    if not folder.is_dir():
        pytest.skip(f"shared test data not found at {folder}")
    return folder


def write(path: Path, data: bytes | PdfWriter) -> Path:
    if isinstance(data, PdfWriter):
        buffer = io.BytesIO()
        data.write(buffer)
        data = buffer.getvalue()
    path.write_bytes(data)
    return path


def build_pdf(objects: dict[int, bytes], root: int = 1) -> bytes:
    """A hand-written PDF from ``{object number: body}``, with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    size = max(objects) + 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets.get(number, 0) for number in range(1, size))
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, root, xref)
    return bytes(out)


def stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n%s\nendstream" % (len(data), extra, data)


def one_page_pdf(
    show: bytes = b"(Hello) Tj", font_extra: bytes = b"", more: dict[int, bytes] | None = None
) -> bytes:
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica " + font_extra + b">>",
        5: stream(b"BT /F1 12 Tf 20 50 Td " + show + b" ET"),
    }
    objects.update(more or {})
    return build_pdf(objects)


def cad_writer(pdfs: Path) -> PdfWriter:
    return PdfWriter(clone_from=pdfs / "CAD.pdf")


def has_cryptography() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- real PDFs


def test_cad_has_one_span_and_anchor_per_pypdf_page(pdfs: Path) -> None:
    doc = load_document(pdfs / "CAD.pdf")
    reader = PdfReader(pdfs / "CAD.pdf")
    assert len(doc.pages) == len(reader.pages) == 7
    assert [span.number for span in doc.pages] == list(range(1, 8))
    assert doc.metadata == {"source": str(pdfs / "CAD.pdf"), "pages": 7, "format": "pdf", "total_pages": 7}
    for span, page in zip(doc.pages, reader.pages, strict=True):
        assert doc.text[span.start : span.end] == clean_text(page.extract_text())
        anchor = f"[Page {span.number}]\n"
        assert doc.text[span.start - len(anchor) : span.start] == anchor
    assert doc.text.count("[Page ") == 7


def test_page_at_finds_the_page_of_a_known_phrase(pdfs: Path) -> None:
    doc = load_document(pdfs / "CAD.pdf")
    offset = doc.text.index("pDiagonalCross")
    assert doc.text.count("pDiagonalCross") == 1
    assert doc.page_at(offset) == 3
    assert doc.page_at(doc.text.index("[Page 3]")) == 3  # an anchor line belongs to its page
    assert doc.page_at(0) == 1
    assert doc.page_at(len(doc) - 1) == 7
    assert doc.page_at(-1) is None
    assert doc.page_at(len(doc)) is None
    for span in doc.pages:
        assert doc.page_at(span.start) == span.number
        assert doc.page_at(span.end - 1) == span.number


def test_pages_for_range_lists_every_page_touched(pdfs: Path) -> None:
    doc = load_document(pdfs / "CAD.pdf")
    start = doc.pages[1].start + 5
    end = doc.pages[3].start + 5
    assert doc.pages_for_range(start, end) == [2, 3, 4]
    assert doc.pages_for_range(doc.pages[2].start, doc.pages[2].end) == [3]
    assert doc.pages_for_range(0, len(doc)) == list(range(1, 8))
    assert doc.pages_for_range(10, 10) == []
    assert doc.pages_for_range(-50, 1) == [1]


def test_helloworld_text_str_and_len(pdfs: Path) -> None:
    doc = load_document(str(pdfs / "helloworld.pdf"))
    assert doc.text == "[Page 1]\nHello, world!"
    assert doc.pages == [PageSpan(1, 9, 22)]
    assert str(doc) == doc.text
    assert f"{doc}\n\nQuestion?" == "[Page 1]\nHello, world!\n\nQuestion?"
    assert len(doc) == 22
    assert repr(doc) == f"Document(source={str(pdfs / 'helloworld.pdf')!r}, pages=1, chars=22, format='pdf')"


def test_r_faq_page_count_equals_pypdf(pdfs: Path) -> None:
    doc = load_document(pdfs / "R-FAQ.pdf")
    assert len(doc.pages) == len(PdfReader(pdfs / "R-FAQ.pdf").pages) == 52
    assert doc.metadata["pages"] == 52
    assert "\x00" not in doc.text and "\r" not in doc.text
    assert "\n\n\n\n" not in doc.text
    assert doc.text.count("[Page ") == 52


def test_loading_is_deterministic(pdfs: Path) -> None:
    first, second = load_document(pdfs / "CAD.pdf"), load_document(pdfs / "CAD.pdf")
    assert first.text == second.text and first.pages == second.pages


def test_max_pages_reads_only_the_first_pages(pdfs: Path) -> None:
    doc = load_document(pdfs / "R-intro.pdf", max_pages=3)
    assert [span.number for span in doc.pages] == [1, 2, 3]
    assert doc.metadata["pages"] == 3
    assert doc.metadata["total_pages"] == len(PdfReader(pdfs / "R-intro.pdf").pages) == 113
    assert "[Page 4]" not in doc.text


def test_a_pdf_with_some_blank_pages_keeps_them_as_empty_spans(pdfs: Path, tmp_path: Path) -> None:
    writer = cad_writer(pdfs)
    writer.insert_blank_page(index=2)
    doc = load_document(write(tmp_path / "gap.pdf", writer))
    assert len(doc.pages) == 8
    blank = doc.pages[2]
    assert blank.number == 3 and blank.start == blank.end
    assert doc.page_at(doc.text.index("pDiagonalCross")) == 4
    assert doc.page_at(doc.text.index("[Page 3]")) == 3


def test_pdf_title_lands_in_metadata(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=io.BytesIO(one_page_pdf()))
    writer.add_metadata({"/Title": "  A  Title\x00 "})
    doc = load_document(write(tmp_path / "titled.pdf", writer))
    assert doc.metadata["title"] == "A Title"


def test_pdf_is_detected_by_content_not_by_name(pdfs: Path, tmp_path: Path) -> None:
    disguised = write(tmp_path / "notes.txt", (pdfs / "helloworld.pdf").read_bytes())
    doc = load_document(disguised)
    assert doc.metadata["format"] == "pdf"
    assert doc.text == "[Page 1]\nHello, world!"


def test_junk_before_the_pdf_header_is_tolerated(pdfs: Path, tmp_path: Path) -> None:
    data = b"garbage line\n" * 10 + (pdfs / "helloworld.pdf").read_bytes()
    assert load_document(write(tmp_path / "junk.pdf", data)).text == "[Page 1]\nHello, world!"


# --------------------------------------------------------------------------- text files


def test_text_file_is_one_span_without_anchors(texts: Path) -> None:
    path = texts / "austen_pride_and_prejudice.txt"
    doc = load_document(path)
    assert doc.pages == [PageSpan(1, 0, len(doc.text))]
    assert doc.metadata == {"source": str(path), "pages": 1, "format": "text", "encoding": "utf-8"}
    assert "[Page " not in doc.text
    raw = path.read_text(encoding="utf-8-sig")
    assert doc.text == clean_text(raw)
    assert len(doc.text) > 600_000
    assert doc.page_at(len(doc) // 2) == 1


def test_non_utf8_text_falls_back_to_windows_1252(tmp_path: Path) -> None:
    text = "\u201cCaf\u00e9 na\u00efve\u201d \u2013 r\u00e9sum\u00e9\n" * 20
    doc = load_document(write(tmp_path / "old.txt", text.encode("cp1252")))
    assert doc.text == text.strip("\n")
    assert doc.metadata["encoding"] == "cp1252"


def test_latin1_bytes_undefined_in_cp1252_still_decode(tmp_path: Path) -> None:
    data = b"Ann\xe9e \x81 caf\xe9\n" * 10
    doc = load_document(write(tmp_path / "latin.txt", data))
    assert doc.metadata["encoding"] == "cp1252 (10 undefined bytes replaced)"
    assert doc.text == "\n".join(["Ann\u00e9e \ufffd caf\u00e9"] * 10)  # \x81 is marked, not dropped
    assert doc.warnings == [
        f"{tmp_path / 'latin.txt'}: 10 bytes undefined in Windows-1252 (0x81 at byte 6, 0x81 at byte 19, "
        "0x81 at byte 32, ...) were replaced with U+FFFD."
    ]


def test_utf8_with_a_few_damaged_bytes_stays_utf8(tmp_path: Path) -> None:
    text = "R\u00e9sum\u00e9 of the caf\u00e9 \u2014 na\u00efve \u201cquotes\u201d.\n" * 30
    data = text.encode("utf-8")
    data = data[:100] + b"\xff" + data[100:]
    doc = load_document(write(tmp_path / "damaged.txt", data))
    assert doc.metadata["encoding"] == "utf-8 (invalid bytes replaced)"
    assert doc.text.count("\ufffd") == 1
    assert doc.text.replace("\ufffd", "") == text.strip("\n")


def test_path_of_the_wrong_type_says_what_to_pass() -> None:
    with pytest.raises(TypeError, match="takes a file path"):
        load_document(io.BytesIO(b"%PDF-1.7"))  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "utf-32"])
def test_bom_marked_text_decodes(tmp_path: Path, encoding: str) -> None:
    text = "\u00c9l\u00e8ve \u2014 \u65e5\u672c\u8a9e \U0001f600\nsecond line"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    doc = load_document(write(tmp_path / "bom.txt", data))
    assert doc.text == text


def test_text_that_mentions_the_pdf_magic_is_still_text(tmp_path: Path) -> None:
    body = "Notes on file formats\n\nA PDF starts with %PDF-1.7 and ends with %%EOF.\n"
    doc = load_document(write(tmp_path / "notes.md", body.encode()))
    assert doc.metadata["format"] == "text"
    assert doc.text == body.strip()


def test_clean_text_is_light_and_deterministic() -> None:
    raw = "a\r\nb\rc\x00d\x07e\tf  \n\n\n\n\n\ng\x0ch\ud800i\ufeffj\u2028k co-\noperate  "
    assert clean_text(raw) == "a\nb\ncde\tf\n\n\ng\nh\ufffdij\nk co-\noperate"
    assert clean_text("\n\n  \n x \n\n") == " x"


# --------------------------------------------------------------------------- several files


def test_load_documents_joins_files_with_headers_and_per_file_pages(pdfs: Path, texts: Path) -> None:
    paths = [pdfs / "helloworld.pdf", pdfs / "CAD.pdf", texts / "bierce_devils_dictionary.txt"]
    doc = load_documents(paths)
    head = "=== helloworld.pdf ===\n[Page 1]\nHello, world!\n\n=== CAD.pdf ===\n[Page 1]\n"
    assert doc.text.startswith(head)
    assert "\n\n=== bierce_devils_dictionary.txt ===\n" in doc.text
    assert [(span.number, Path(span.source).name) for span in doc.pages] == (
        [(1, "helloworld.pdf")]
        + [(n, "CAD.pdf") for n in range(1, 8)]
        + [(1, "bierce_devils_dictionary.txt")]
    )
    assert doc.metadata["format"] == "mixed"
    assert doc.metadata["pages"] == 9 and doc.metadata["documents"] == 3
    span = doc.span_at(doc.text.index("pDiagonalCross"))
    assert span is not None and (span.number, span.source) == (3, str(pdfs / "CAD.pdf"))
    assert doc.page_at(doc.text.index("=== CAD.pdf ===")) == 1  # a file header belongs to its first page
    single = load_document(pdfs / "CAD.pdf")
    cad = [s for s in doc.pages if s.source == str(pdfs / "CAD.pdf")]
    assert [doc.text[s.start : s.end] for s in cad] == [single.text[s.start : s.end] for s in single.pages]
    sources = [s.source for s in doc.spans_for_range(0, doc.pages[2].start)]
    assert sources == [str(paths[0])] + [str(paths[1])] * 2


def test_load_documents_needs_at_least_one_path() -> None:
    with pytest.raises(EmptyDocumentError, match="at least one file"):
        load_documents([])


# --------------------------------------------------------------------------- errors


def test_every_document_error_is_a_value_error_and_a_package_error() -> None:
    for cls in (
        DocumentNotFoundError,
        EmptyDocumentError,
        CorruptDocumentError,
        EncryptedDocumentError,
        ImageOnlyDocumentError,
        UnsupportedDocumentError,
    ):
        assert issubclass(cls, DocumentError) and issubclass(cls, ValueError)
        assert issubclass(cls, ReAttentionError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentNotFoundError, match="no such file") as info:
        load_document(tmp_path / "nope.pdf")
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "nope.pdf") in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DocumentNotFoundError, match="is a directory"):
        load_document(tmp_path)


def test_text_passed_instead_of_a_path() -> None:
    with pytest.raises(DocumentNotFoundError, match="takes a path"):
        load_document("x" * 5000)


@pytest.mark.parametrize(("name", "data"), [("e.txt", b""), ("e.pdf", b""), ("w.txt", b" \n\t\r\n  ")])
def test_empty_and_whitespace_files(tmp_path: Path, name: str, data: bytes) -> None:
    with pytest.raises(EmptyDocumentError, match="nothing to read"):
        load_document(write(tmp_path / name, data))


def test_text_of_only_control_characters_is_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyDocumentError, match="only whitespace"):
        load_document(write(tmp_path / "c.txt", "\ufeff\n \u2028 \n".encode()))


def test_pdf_with_zero_pages(tmp_path: Path) -> None:
    with pytest.raises(EmptyDocumentError, match="zero pages"):
        load_document(write(tmp_path / "zero.pdf", PdfWriter()))


def test_blank_pages_are_image_only_and_need_ocr(tmp_path: Path) -> None:
    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(width=200, height=200)
    with pytest.raises(ImageOnlyDocumentError, match="OCR") as info:
        load_document(write(tmp_path / "scan.pdf", writer))
    assert "ocrmypdf" in str(info.value)
    assert "3 page(s)" in str(info.value)


def test_less_than_one_character_per_page_counts_as_image_only(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=io.BytesIO(one_page_pdf(b"(7) Tj")))
    writer.add_blank_page()
    with pytest.raises(ImageOnlyDocumentError):
        load_document(write(tmp_path / "scan.pdf", writer))


def test_pdf_named_file_without_pdf_header(tmp_path: Path) -> None:
    with pytest.raises(CorruptDocumentError, match=r"not a PDF \(no %PDF header") as info:
        load_document(write(tmp_path / "report.pdf", b"<html><body>Access denied</body></html>"))
    assert "rename it to .txt" in str(info.value)


def test_truncated_pdf_is_corrupt_with_the_cause_chained(pdfs: Path, tmp_path: Path) -> None:
    data = (pdfs / "R-FAQ.pdf").read_bytes()
    with pytest.raises(CorruptDocumentError, match="damaged PDF") as info:
        load_document(write(tmp_path / "cut.pdf", data[: len(data) // 2]))
    assert info.value.__cause__ is not None
    assert "qpdf" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\n" + bytes(range(256)) * 20,
        b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"xref\n0 1\nbroken\ntrailer << >>\n%%EOF",
        one_page_pdf().replace(b"xref\n0 6", b"xref\n0 9"),
    ],
    ids=["random-after-header", "broken-xref-no-pages", "xref-size-lies"],
)
def test_garbage_with_a_pdf_header_is_corrupt(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(CorruptDocumentError):
        load_document(write(tmp_path / "bad.pdf", data))


def test_cyclic_page_tree_is_corrupt(tmp_path: Path) -> None:
    data = one_page_pdf(more={2: b"<< /Type /Pages /Count 1 /Kids [2 0 R] >>"})
    with pytest.raises(CorruptDocumentError, match="page tree"):
        load_document(write(tmp_path / "cycle.pdf", data))


def test_a_huge_declared_page_count_costs_nothing(tmp_path: Path) -> None:
    data = one_page_pdf(more={2: b"<< /Type /Pages /Count 999999999999 /Kids [3 0 R] >>"})
    doc = load_document(write(tmp_path / "count.pdf", data), timeout_s=5)
    assert doc.text == "[Page 1]\nHello"


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("img.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "PNG"),
        ("a.bin", bytes(range(256)) * 8, "NUL"),
        ("ctrl.txt", bytes(range(1, 32)) * 40, "binary"),
    ],
)
def test_binary_files_are_unsupported_and_name_the_formats(
    tmp_path: Path, name: str, data: bytes, kind: str
) -> None:
    with pytest.raises(UnsupportedDocumentError, match=kind) as info:
        load_document(write(tmp_path / name, data))
    assert "PDF" in str(info.value) and "plain text" in str(info.value)


def test_docx_is_recognised_as_a_zip(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    with pytest.raises(UnsupportedDocumentError, match="ZIP archive"):
        load_document(write(tmp_path / "a.docx", buffer.getvalue()))


def test_fake_utf16_bom_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDocumentError):
        load_document(write(tmp_path / "odd.txt", b"\xff\xfe" + b"\x00\xd8" + b"ab"))


def test_bad_limits_are_config_errors(pdfs: Path) -> None:
    with pytest.raises(ConfigError, match="max_pages"):
        load_document(pdfs / "CAD.pdf", max_pages=0)
    with pytest.raises(ConfigError, match="timeout_s"):
        load_document(pdfs / "CAD.pdf", timeout_s=0)


def test_time_budget_raises_instead_of_hanging(pdfs: Path) -> None:
    with pytest.raises(CorruptDocumentError, match="took longer than") as info:
        load_document(pdfs / "CAD.pdf", timeout_s=1e-9)
    assert "timeout_s=" in str(info.value)


def test_time_budget_interrupts_a_single_pathological_page(tmp_path: Path) -> None:
    operators = b"BT /F1 12 Tf " + b"(ab) Tj " * 100_000 + b"ET"
    path = write(tmp_path / "slow.pdf", one_page_pdf(more={5: stream(operators)}))
    start = time.perf_counter()
    with pytest.raises(CorruptDocumentError, match=r"took longer than 0.3 s \(at page 1 of 1\)"):
        load_document(path, timeout_s=0.3)
    assert time.perf_counter() - start < 2.5  # reading the whole page takes several seconds


def test_page_whose_text_cannot_be_read_is_left_empty_with_a_warning(
    pdfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = pypdf.PageObject.extract_text

    def flaky(self: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        if b"pDiagonalCross" in self.get_contents().get_data() or "pDiagonalCross" in original(self):
            raise KeyError("/Font")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pypdf.PageObject, "extract_text", flaky)
    with pytest.warns(UserWarning, match=r"page\(s\) 3 could not be read"):
        doc = load_document(pdfs / "CAD.pdf")
    assert doc.metadata["unreadable_pages"] == [3]
    assert doc.pages[2].start == doc.pages[2].end
    assert len(doc.pages) == 7
    assert doc.warnings == [
        f"{pdfs / 'CAD.pdf'}: the text of page(s) 3 could not be read (damaged PDF); they are left empty "
        "(page 3: KeyError: '/Font'). Repair the file (e.g. `qpdf in.pdf out.pdf`) to read them."
    ]


def test_every_page_unreadable_is_corrupt(pdfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        raise ValueError("bad operator")

    monkeypatch.setattr(pypdf.PageObject, "extract_text", broken)
    with pytest.raises(CorruptDocumentError, match="no page's text could be read") as info:
        load_document(pdfs / "CAD.pdf")
    assert isinstance(info.value.__cause__, ValueError)


def test_odd_unicode_from_a_broken_tounicode_map_is_cleaned(tmp_path: Path) -> None:
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /X def\n"
        b"1 begincodespacerange <00> <FF> endcodespacerange\n7 beginbfchar\n"
        b"<41> <D800>\n<42> <0000>\n<43> <202E>\n<44> <FB01>\n<45> <D83DDE00>\n<46> <000C>\n<47> <0007>\n"
        b"endbfchar endcmap CMapName currentdict /CMap defineresource pop end end"
    )
    data = one_page_pdf(b"(xAxBxCxDxExFxGx) Tj", font_extra=b"/ToUnicode 6 0 R ", more={6: stream(cmap)})
    raw = PdfReader(io.BytesIO(data)).pages[0].extract_text()
    assert "\ud800" in raw and "\x00" in raw  # what pypdf hands over
    doc = load_document(write(tmp_path / "uni.pdf", data))
    assert doc.text == "[Page 1]\nx\ufffdxx\u202ex\ufb01x\U0001f600x\nxx"
    doc.text.encode("utf-8")  # no lone surrogates left


# --------------------------------------------------------------------------- encryption


@pytest.mark.parametrize("algorithm", ["RC4-40", "RC4-128"])
def test_encrypted_pdf_needs_the_right_password(pdfs: Path, tmp_path: Path, algorithm: str) -> None:
    writer = cad_writer(pdfs)
    writer.encrypt("secret", "owner", algorithm=algorithm)
    path = write(tmp_path / "locked.pdf", writer)
    with pytest.raises(EncryptedDocumentError, match="needs a password") as info:
        load_document(path)
    assert "password=" in str(info.value) and "--password" in str(info.value)
    with pytest.raises(EncryptedDocumentError, match="wrong password"):
        load_document(path, password="guess")
    plain = load_document(pdfs / "CAD.pdf")
    for password in ("secret", "owner"):
        doc = load_document(path, password=password)
        assert doc.text == plain.text
        assert doc.metadata["encrypted"] is True


def test_owner_password_only_pdf_opens_without_a_password(pdfs: Path, tmp_path: Path) -> None:
    writer = cad_writer(pdfs)
    writer.encrypt("", "owner", algorithm="RC4-128")
    doc = load_document(write(tmp_path / "restricted.pdf", writer))
    assert doc.text == load_document(pdfs / "CAD.pdf").text


def test_a_password_for_an_unencrypted_pdf_is_ignored(pdfs: Path) -> None:
    assert load_document(pdfs / "helloworld.pdf", password="x").text == "[Page 1]\nHello, world!"


def _without_aes_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pypdf behave as if neither cryptography nor pycryptodome were installed."""
    from pypdf import _encryption
    from pypdf._crypt_providers import _fallback

    for name in ("CryptAES", "aes_cbc_decrypt", "aes_cbc_encrypt", "aes_ecb_decrypt", "aes_ecb_encrypt"):
        monkeypatch.setattr(_encryption, name, getattr(_fallback, name))


@pytest.mark.parametrize(
    "fixture", [AES256_USER_SECRET, AES128_OWNER_ONLY], ids=["aes256", "aes128-owner-only"]
)
def test_aes_without_a_crypto_backend_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture: bytes
) -> None:
    _without_aes_backend(monkeypatch)
    path = write(tmp_path / "aes.pdf", fixture)
    with pytest.raises(EncryptedDocumentError, match="pip install cryptography") as info:
        load_document(path, password="secret" if fixture is AES256_USER_SECRET else None)
    assert info.value.__cause__ is not None


@pytest.mark.skipif(not has_cryptography(), reason="AES needs cryptography (pip install cryptography)")
def test_aes_pdfs_open_with_a_crypto_backend(tmp_path: Path) -> None:
    path = write(tmp_path / "aes256.pdf", AES256_USER_SECRET)
    with pytest.raises(EncryptedDocumentError, match="needs a password"):
        load_document(path)
    with pytest.raises(EncryptedDocumentError, match="wrong password"):
        load_document(path, password="guess")
    assert load_document(path, password="secret").text == "[Page 1]\nHello, world!"
    assert load_document(path, password="owner-pw").text == "[Page 1]\nHello, world!"
    owner_only = write(tmp_path / "aes128.pdf", AES128_OWNER_ONLY)
    assert load_document(owner_only).text == "[Page 1]\nHello, world!"


def test_aes_fixture_state_matches_the_installed_backend(tmp_path: Path) -> None:
    """Without any backend the AES PDF must give the install hint, never a raw pypdf error."""
    path = write(tmp_path / "aes.pdf", AES256_USER_SECRET)
    if has_cryptography():
        assert load_document(path, password="secret").text == "[Page 1]\nHello, world!"
    else:
        with pytest.raises(EncryptedDocumentError, match="pip install cryptography"):
            load_document(path, password="secret")


# --------------------------------------------------------------------------- LangChain / LlamaIndex


def test_langchain_loader_yields_the_whole_document(pdfs: Path) -> None:
    from langchain_core.document_loaders import BaseLoader

    from reattn_llm.integrations.loaders import ReAttentionDocumentLoader

    loader = ReAttentionDocumentLoader(pdfs / "CAD.pdf")
    assert isinstance(loader, BaseLoader)
    docs = loader.load()
    assert len(docs) == 1
    assert docs[0].page_content == load_document(pdfs / "CAD.pdf").text
    expected = {"source": str(pdfs / "CAD.pdf"), "pages": 7, "format": "pdf", "total_pages": 7}
    assert docs[0].metadata == expected


def test_langchain_loader_per_page(pdfs: Path, tmp_path: Path) -> None:
    from reattn_llm.integrations.loaders import ReAttentionDocumentLoader

    writer = cad_writer(pdfs)
    writer.insert_blank_page(index=0)
    docs = list(ReAttentionDocumentLoader(write(tmp_path / "c.pdf", writer), per_page=True).lazy_load())
    assert [doc.metadata["page"] for doc in docs] == list(range(2, 9))  # the blank page 1 is skipped
    assert all(doc.metadata["pages"] == 8 for doc in docs)
    assert "pDiagonalCross" in docs[2].page_content
    assert not any("[Page" in doc.page_content for doc in docs)


def test_langchain_loader_passes_password_and_errors_through(pdfs: Path, tmp_path: Path) -> None:
    from reattn_llm.integrations.loaders import ReAttentionDocumentLoader

    writer = cad_writer(pdfs)
    writer.encrypt("secret", algorithm="RC4-128")
    path = write(tmp_path / "locked.pdf", writer)
    with pytest.raises(EncryptedDocumentError):
        ReAttentionDocumentLoader(path).load()
    assert ReAttentionDocumentLoader(path, password="secret").load()[0].metadata["encrypted"] is True
    with pytest.raises(DocumentNotFoundError):
        ReAttentionDocumentLoader(tmp_path / "missing.txt").load()


def test_llamaindex_reader_whole_and_per_page(pdfs: Path) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.readers.base import BaseReader

    from reattn_llm.integrations.loaders import ReAttentionReader

    reader = ReAttentionReader()
    assert isinstance(reader, BaseReader)
    docs = reader.load_data(pdfs / "CAD.pdf", extra_info={"shelf": "manuals"})
    assert len(docs) == 1
    assert docs[0].text == load_document(pdfs / "CAD.pdf").text
    assert docs[0].metadata["pages"] == 7 and docs[0].metadata["shelf"] == "manuals"
    pages = ReAttentionReader(per_page=True).load_data(str(pdfs / "CAD.pdf"))
    assert [doc.metadata["page"] for doc in pages] == list(range(1, 8))


def test_llamaindex_reader_as_a_directory_reader_extractor(pdfs: Path) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import SimpleDirectoryReader

    from reattn_llm.integrations.loaders import ReAttentionReader

    directory = SimpleDirectoryReader(
        input_files=[str(pdfs / "helloworld.pdf")], file_extractor={".pdf": ReAttentionReader()}
    )
    (doc,) = directory.load_data()
    assert doc.text == "[Page 1]\nHello, world!"
    assert doc.metadata["file_name"] == "helloworld.pdf" and doc.metadata["pages"] == 1


def test_llamaindex_missing_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from reattn_llm.integrations import loaders

    loaders.make_llamaindex_reader.cache_clear()
    monkeypatch.setitem(sys.modules, "llama_index.core", None)
    try:
        with pytest.raises(ImportError, match=r'pip install "reattn-llm\[llamaindex\]"'):
            loaders.make_llamaindex_reader()
    finally:
        loaders.make_llamaindex_reader.cache_clear()


def test_importing_the_loaders_does_not_import_llama_index() -> None:
    code = (
        "import sys\n"
        "from reattn_llm.integrations.loaders import ReAttentionDocumentLoader\n"
        "import reattn_llm.documents\n"
        "assert 'llama_index' not in sys.modules and 'llama_index.core' not in sys.modules, 'llama'\n"
        "assert 'pypdf' not in sys.modules, 'pypdf imported eagerly'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------- limits, and what reading lost or changed


def flate_stream(data: bytes) -> bytes:
    compressed = zlib.compress(data, 9)
    return b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(compressed), compressed)


def shared_content_pdf(
    content: bytes,
    pages: int,
    *,
    last: bytes | None = None,
    font_extra: bytes = b"",
    more: dict[int, bytes] | None = None,
) -> bytes:
    """``pages`` pages that all draw one compressed content stream (object 4); with ``last``, one
    more page at the end draws ``last`` instead (object 6). Object 5 is free for ``more``."""
    first = 10
    count = pages + (last is not None)
    kids = b" ".join(b"%d 0 R" % (first + i) for i in range(count))
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica " + font_extra + b">>",
        4: flate_stream(content),
    }
    if last is not None:
        objects[6] = flate_stream(last)
    for i in range(count):
        contents = 6 if last is not None and i == pages else 4
        objects[first + i] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % contents
        )
    objects.update(more or {})
    return build_pdf(objects)


def amplified_pdf(pages: int, codes: int, expand: int = 250) -> bytes:
    """A few KB of PDF holding ``pages * codes * expand`` characters of text: every page shows
    ``codes`` bytes ``a`` in a font whose /ToUnicode map turns each into ``expand`` letters X."""
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Amp def\n"
        b"1 begincodespacerange <00> <FF> endcodespacerange\n"
        b"1 beginbfchar <61> <" + b"0058" * expand + b"> endbfchar\n"
        b"endcmap CMapName currentdict /CMap defineresource pop end end\n"
    )
    line = b"(" + b"a" * 1000 + b") Tj T*\n"
    content = b"BT /F1 12 Tf 14 TL 10 780 Td\n" + line * (codes // 1000) + b"ET\n"
    return shared_content_pdf(content, pages, font_extra=b"/ToUnicode 5 0 R ", more={5: stream(cmap)})


def run_limited(code: str, warm_up: Path, limit_mib: int, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter whose address space may grow by only ``limit_mib`` MiB
    past what it holds after importing the package and reading the small PDF ``warm_up``;
    returns its stdout (stderr too when it fails)."""
    prelude = (
        "import resource, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from reattn_llm.documents import load_document\n"
        f"load_document({str(warm_up)!r})\n"
        "vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
        f"resource.setrlimit(resource.RLIMIT_AS, (vm + {limit_mib} * 2**20, resource.RLIM_INFINITY))\n"
    )
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout, env=env
    )
    return done.stdout + (f"\nrc {done.returncode}\n{done.stderr[-3000:]}" if done.returncode else "")


needs_rlimit = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux-only"
)


# Item: Windows-1252 text with a byte Windows-1252 leaves undefined.


def test_cp1252_with_an_undefined_byte_keeps_its_punctuation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    line = "\u201cQuoted,\u201d she said \u2014 it costs \u20ac5 \u2013 it\u2019s \u2018fine\u2019\u2026\n"
    data = (line * 20).encode("cp1252")
    data = data[:40] + b"\x81" + data[40:]
    with caplog.at_level(logging.WARNING, logger="reattn_llm.documents"):
        doc = load_document(write(tmp_path / "legacy.txt", data))
    assert doc.metadata["encoding"] == "cp1252 (1 undefined byte replaced)"
    assert doc.text.replace("\ufffd", "", 1) == (line * 20).strip("\n")
    assert doc.text.count("\ufffd") == 1 and doc.text.index("\ufffd") == 40
    for kept, per_line in {
        "\u201c": 1,
        "\u201d": 1,
        "\u2014": 1,
        "\u20ac5": 1,
        "\u2013": 1,
        "\u2019": 2,
        "\u2026": 1,
    }.items():
        assert doc.text.count(kept) == 20 * per_line, kept
    assert doc.warnings == [
        f"{tmp_path / 'legacy.txt'}: 1 byte undefined in Windows-1252 (0x81 at byte 40) was replaced with U+FFFD."
    ]
    assert [
        r.getMessage() for r in caplog.records if r.name.startswith("reattn_llm.documents")
    ] == doc.warnings


def test_utf8_damage_is_reported_too(tmp_path: Path) -> None:
    text = "R\u00e9sum\u00e9 \u2014 na\u00efve \u201cquotes\u201d.\n" * 30
    data = text.encode("utf-8")
    data = data[:8] + b"\xff" + data[8:67] + b"\xfe" + data[67:]
    doc = load_document(write(tmp_path / "damaged.txt", data))
    assert doc.metadata["encoding"] == "utf-8 (invalid bytes replaced)"
    assert doc.warnings == [
        f"{tmp_path / 'damaged.txt'}: 2 invalid UTF-8 sequences (0xff at byte 8, 0xfe at byte 68) were "
        "replaced with U+FFFD."
    ]


# Item: memory bounded while reading a PDF.


@needs_rlimit
def test_failed_pages_do_not_keep_their_parse_alive(tmp_path: Path) -> None:
    """Eight pages whose content stream (~0.5 MB, 14,000 text operators) fails to parse at its end,
    then a good page. pypdf's partial parse of one page takes ~20 MiB; the reader keeps only the
    message of a failed page, so all nine pages are read in 100 MiB (keeping each failure's
    traceback alive took ~8 x 20 MiB and ran out)."""
    broken = b"BT /F1 12 Tf 10 10 Td (Hello) Tj ET\n" * 14_000 + b"] Tj\n"
    path = write(
        tmp_path / "failing.pdf",
        shared_content_pdf(broken, 8, last=b"BT /F1 12 Tf 10 10 Td (The last page reads well.) Tj ET"),
    )
    warm_up = write(tmp_path / "hello.pdf", one_page_pdf())
    out = run_limited(
        f"doc = load_document({str(path)!r})\n"
        "print(doc.metadata['unreadable_pages'], repr(doc.text[doc.pages[-1].start :]))\n"
        "print(doc.warnings[0])\n",
        warm_up,
        limit_mib=100,
    )
    assert out.splitlines()[0] == "[1, 2, 3, 4, 5, 6, 7, 8] 'The last page reads well.'", out
    assert "page(s) 1, 2, 3, 4, 5, 6, 7, 8 could not be read" in out.splitlines()[1]
    assert "PdfReadError" in out.splitlines()[1], out


@needs_rlimit
def test_text_past_max_chars_is_refused_before_it_accumulates(tmp_path: Path) -> None:
    """An 8 KB PDF of 40 pages, 5,000,020 characters each (200 M in all: far past the default
    max_chars of 20 M). It is refused at page 4 with the message naming the limit, within 200 MiB;
    accumulating the whole text took several times that and ran out."""
    from reattn_llm.documents import DEFAULT_MAX_CHARS

    assert DEFAULT_MAX_CHARS == 20_000_000
    pdf = amplified_pdf(40, 20_000)
    assert len(pdf) < 10_000
    path = write(tmp_path / "amplified.pdf", pdf)
    warm_up = write(tmp_path / "hello.pdf", one_page_pdf())
    out = run_limited(
        "from reattn_llm.documents import DocumentTooLargeError\n"
        "try:\n"
        f"    load_document({str(path)!r})\n"
        "except DocumentTooLargeError as error:\n"
        "    print('refused:', error)\n",
        warm_up,
        limit_mib=200,
    )
    assert out.startswith(
        f"refused: {path}: its text passes max_chars=20,000,000 characters at page 4 of 40."
    ), out
    assert "max_chars=None" in out and "max_pages=" in out


def test_max_chars_refuses_a_page_whose_content_stream_alone_is_larger(tmp_path: Path) -> None:
    """A page whose content stream is longer than max_chars is refused before pypdf parses it
    (its parse would take ~40 bytes of memory per byte of content, and seconds)."""
    from reattn_llm.documents import DocumentTooLargeError

    content = b"BT /F1 12 Tf 10 10 Td (Hello) Tj ET\n" * 100_000  # 3.6 MB
    path = write(tmp_path / "heavy.pdf", shared_content_pdf(content, 3))
    start = time.perf_counter()
    with pytest.raises(DocumentTooLargeError) as info:
        load_document(path, max_chars=1_000_000)
    assert time.perf_counter() - start < 2.0  # parsing this page alone takes several seconds
    assert str(info.value).startswith(
        f"{path}: the content stream of page 1 holds 3,600,000 characters, more than max_chars=1,000,000."
    )
    assert isinstance(info.value, DocumentError)


def test_max_chars_counts_the_text_of_a_text_file(tmp_path: Path) -> None:
    from reattn_llm.documents import DocumentTooLargeError

    path = write(tmp_path / "long.txt", b"word " * 10_000)
    assert len(load_document(path, max_chars=50_000).text) == 49_999
    with pytest.raises(DocumentTooLargeError, match=r"holds 49,999 characters, more than max_chars=40,000"):
        load_document(path, max_chars=40_000)
    with pytest.raises(DocumentTooLargeError, match=r"holds 1,000,000 bytes, more than 4 x max_chars=100"):
        load_document(write(tmp_path / "huge.txt", b"x" * 1_000_000), max_chars=100)
    assert len(load_document(path, max_chars=None).text) == 49_999


@pytest.mark.parametrize("bad", [0, -5, 1.5, "10"])
def test_max_chars_must_be_a_positive_integer(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="max_chars"):
        load_document(write(tmp_path / "a.txt", b"text"), max_chars=bad)  # type: ignore[arg-type]


# Item: pypdf's warnings go to logging, and dropped text is reported.


def noisy_pdf(count: int) -> bytes:
    """One page whose content holds ``count`` malformed numbers: pypdf logs one warning each."""
    return one_page_pdf(b"(Hello) Tj " + b"1.2.3 Tw " * count + b"(world) Tj")


def test_pypdf_warnings_never_reach_stderr(tmp_path: Path) -> None:
    path = write(tmp_path / "noisy.pdf", noisy_pdf(2_000))
    code = (
        "from reattn_llm.documents import load_document\n"
        f"doc = load_document({str(path)!r})\n"
        "print(doc.metadata['pdf_warnings'])\n"
        "print(doc.text)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["2000", "[Page 1]", "Helloworld"]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines[:5]  # one summary line, not 2,000 (Python's last-resort handler)
    assert lines[0] == (
        f"{path}: pypdf reported 2,000 problems while reading it, repaired as it went "
        "(2,000 x could not convert string to float: b'1.2.3' : FloatObject (b'1.2.3') invalid; use 0.0 "
        "instead); set logging to DEBUG for 'reattn_llm.documents' to see each."
    )


def test_pypdf_records_go_to_the_package_logger_and_the_logger_is_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pypdf_logger = logging.getLogger("pypdf")
    handlers, propagate = list(pypdf_logger.handlers), pypdf_logger.propagate
    path = write(tmp_path / "noisy.pdf", noisy_pdf(30))
    with caplog.at_level(logging.DEBUG, logger="reattn_llm.documents"):
        doc = load_document(path)
    ours = [r for r in caplog.records if r.name.startswith("reattn_llm.documents")]
    theirs = [r for r in caplog.records if r.name.startswith("pypdf")]
    assert theirs == []  # nothing went the pypdf loggers' own way
    details = [r for r in ours if r.levelno == logging.DEBUG]
    assert len(details) == 30
    assert details[0].getMessage() == (
        f"{path}: page 1: pypdf: could not convert string to float: b'1.2.3' : FloatObject (b'1.2.3') "
        "invalid; use 0.0 instead"
    )
    assert doc.metadata["pdf_warnings"] == 30
    assert [r.getMessage() for r in ours if r.levelno == logging.WARNING] == doc.warnings
    assert len(doc.warnings) == 1 and "pypdf reported 30 problems" in doc.warnings[0]
    assert pypdf_logger.handlers == handlers and pypdf_logger.propagate is propagate
    clean = load_document(write(tmp_path / "clean.pdf", one_page_pdf()))
    assert clean.warnings == [] and "pdf_warnings" not in clean.metadata


def test_pypdf_records_of_other_threads_keep_their_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While a PDF is read, records that other threads log to pypdf's loggers are left alone."""
    import threading

    started, release = threading.Event(), threading.Event()

    def slow(done: int, total: int) -> None:
        started.set()
        release.wait(10)

    reading = threading.Thread(
        target=lambda: load_document(write(tmp_path / "a.pdf", one_page_pdf()), on_page=slow)
    )
    with caplog.at_level(logging.WARNING):
        reading.start()
        assert started.wait(10)
        logging.getLogger("pypdf._reader").warning("from another thread")
        release.set()
        reading.join(10)
    assert [r.getMessage() for r in caplog.records if r.name == "pypdf._reader"] == ["from another thread"]


def test_text_that_pypdf_drops_is_reported(tmp_path: Path) -> None:
    """pypdf stops following form XObjects after 5,000 invocations per page: the text they hold is
    dropped. The reader says so, per page, in a warning and in ``Document.warnings``."""
    form = stream(
        b"BT /F1 12 Tf (Form) Tj ET",
        b"/Type /XObject /Subtype /Form /BBox [0 0 100 100] /Resources << /Font << /F1 3 0 R >> >> ",
    )
    page = b"BT /F1 12 Tf (Start) Tj ET\n" + b"/Fm Do\n" * 5_003
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Count 2 /Kids [6 0 R 7 0 R] >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: flate_stream(page),
        5: form,
        6: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Resources << /Font << /F1 3 0 R >> >> "
        b"/Contents 8 0 R >>",
        7: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] "
        b"/Resources << /Font << /F1 3 0 R >> /XObject << /Fm 5 0 R >> >> /Contents 4 0 R >>",
        8: stream(b"BT /F1 12 Tf (Cover) Tj ET"),
    }
    path = write(tmp_path / "forms.pdf", build_pdf(objects))
    with pytest.warns(UserWarning) as caught:
        doc = load_document(path)
    assert doc.text.count("Form") == 5_000
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    expected = (
        f"{path}: pypdf dropped text of page(s) 2: Exceeded 5000 form XObject invocations while extracting "
        "text; further form content is skipped. To read it, raise pypdf's limit around the call: "
        "`with pypdf.apply_configuration(xform_maximum_invocations_per_extraction=...): load_document(...)`."
    )
    assert messages == [expected]
    assert doc.warnings == [expected]
    assert doc.metadata["pdf_warnings"] == 1
    # The advice holds: pypdf's configuration reaches the thread that reads the PDF.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pypdf.apply_configuration(xform_maximum_invocations_per_extraction=6_000):
            whole = load_document(path)
    assert whole.text.count("Form") == 5_003 and whole.warnings == []
