"""Fuzzing the document loader: every input must end, quickly, in a Document or a DocumentError.

Hypothesis mutates real PDFs (byte flips, truncations, chunk deletions and duplications, random
and PDF-token insertions, often aimed at structural keywords) and generates adversarial files
(random bytes, a PDF header followed by garbage, huge /Count, page trees that are deep, cyclic or
fan out, deeply nested arrays and dictionaries, lying stream lengths, self-drawing forms).
Examples are derandomized, so a run is reproducible; any exception that is not a
``DocumentError``, a case slower than ``CASE_BOUND_S``, or a Document that breaks its own
invariants fails the test.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("pypdf")
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from reattn_llm.documents import Document, load_document
from reattn_llm.errors import DocumentError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pdfs"
CASE_BOUND_S = 10.0  # every single file must be settled within this many seconds
LOAD_TIMEOUT_S = 5.0  # the loader's own budget, so a slow case ends in CorruptDocumentError
# Tokens that make mutations land on PDF structure rather than on compressed stream bytes.
TOKENS = (
    b"obj", b"endobj", b"stream", b"endstream", b"xref", b"trailer", b"startxref", b"%%EOF",
    b"<<", b">>", b"[", b"]", b"(", b")", b"R", b"/Kids", b"/Count 999999999999", b"/Pages",
    b"/Type /Page", b"/Length 99999999", b"/Filter /FlateDecode", b"/Encrypt 1 0 R", b"-1", b"0 0 R",
    b"/ObjStm", b"/N 100000000", b"\x00", b"\xff" * 8,
)  # fmt: skip
KEYWORDS = (b"obj", b"stream", b"xref", b"trailer", b"startxref", b"/Kids", b"/Count", b"/Length", b"/Root")


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # the per-case bound is asserted below, with the loader's own time budget
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- the oracle


def settle(path: Path) -> Document | DocumentError:
    """Load ``path``; return the Document or the DocumentError, failing on anything else or if slow."""
    start = time.perf_counter()
    outcome: Document | DocumentError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = load_document(path, timeout_s=LOAD_TIMEOUT_S)
    except DocumentError as error:
        outcome = error
    elapsed = time.perf_counter() - start
    if currently_in_test_context():  # shown by --hypothesis-show-statistics
        event(type(outcome).__name__)
        cause = getattr(outcome, "__cause__", None)
        if cause is not None:
            event(f"caused by {type(cause).__name__}")
    assert elapsed < CASE_BOUND_S, f"{path.name} took {elapsed:.1f} s"
    if isinstance(outcome, Document):
        check_document(outcome)
    else:
        assert str(outcome), "a DocumentError must say what went wrong"
    return outcome


def check_document(doc: Document) -> None:
    """The invariants every loaded Document keeps."""
    assert doc.text.strip()
    assert "\x00" not in doc.text and "\r" not in doc.text
    doc.text.encode("utf-8")  # no lone surrogates
    assert len(doc.pages) == doc.metadata["pages"] >= 1
    assert [span.number for span in doc.pages] == list(range(1, len(doc.pages) + 1))
    previous_end = 0
    for span in doc.pages:
        assert previous_end <= span.start <= span.end <= len(doc.text)
        previous_end = span.end
        if doc.metadata["format"] == "pdf":
            anchor = f"[Page {span.number}]\n"
            assert doc.text[span.start - len(anchor) : span.start] == anchor
        if span.end > span.start:
            assert doc.page_at(span.start) == doc.page_at(span.end - 1) == span.number
    if doc.metadata["format"] == "pdf":
        assert doc.metadata["pages"] <= doc.metadata["total_pages"]


# --------------------------------------------------------------------------- seeds and mutations


def pdf_bytes(writer: PdfWriter) -> bytes:
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def build_pdf(objects: dict[int, bytes], root: int = 1, trailer: bytes = b"") -> bytes:
    """A hand-written, uncompressed PDF from ``{object number: body}`` with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    size = max(objects) + 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets.get(number, 0) for number in range(1, size))
    out += b"trailer\n<< /Size %d /Root %d 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (size, root, trailer, xref)
    return bytes(out)


def stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n%s\nendstream" % (len(data), extra, data)


PAGE = (
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] "
    b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>"
)
FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
HELLO = stream(b"BT /F1 12 Tf 20 50 Td (Hello fuzz) Tj ET")


def simple_objects(**replace: bytes) -> dict[int, bytes]:
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
        3: PAGE,
        4: FONT,
        5: HELLO,
    }
    objects.update({int(key.lstrip("o")): value for key, value in replace.items()})
    return objects


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    if not DATA.is_dir():
        pytest.skip(f"shared test data not found at {DATA}")
    writer = PdfWriter()
    for page in PdfReader(DATA / "R-FAQ.pdf").pages[:3]:
        writer.add_page(page)
    return {
        "helloworld": (DATA / "helloworld.pdf").read_bytes(),
        "cad": (DATA / "CAD.pdf").read_bytes(),
        "rfaq3": pdf_bytes(writer),
        "handmade": build_pdf(simple_objects()),
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


Mutation = Callable[[bytearray], None]


@st.composite
def mutation(draw: st.DrawFn) -> Mutation:
    """One random edit of a byte buffer, at a random or a keyword-aimed position."""
    kind = draw(st.sampled_from(["flip", "truncate", "delete", "duplicate", "insert", "token"]))
    aim = draw(st.sampled_from((None, *KEYWORDS)))
    where = draw(st.integers(0, 2**31))
    shift = draw(st.integers(-8, 24))
    length = draw(st.integers(1, 512))
    payload = draw(st.binary(min_size=1, max_size=16)) if kind == "insert" else draw(st.sampled_from(TOKENS))
    xor = draw(st.integers(1, 255))

    def apply(data: bytearray) -> None:
        if not data:
            return
        position = where % len(data)
        if aim is not None:
            hits = keyword_offsets(data, aim)
            if hits:
                position = min(max(hits[where % len(hits)] + shift, 0), len(data) - 1)
        if kind == "flip":
            data[position] ^= xor
        elif kind == "truncate":
            del data[position:]
        elif kind == "delete":
            del data[position : position + length]
        elif kind == "duplicate":
            data[position:position] = data[position : position + length]
        else:
            data[position:position] = payload

    return apply


def keyword_offsets(data: bytearray, keyword: bytes, limit: int = 64) -> list[int]:
    offsets: list[int] = []
    found = data.find(keyword)
    while found >= 0 and len(offsets) < limit:
        offsets.append(found)
        found = data.find(keyword, found + 1)
    return offsets


def mutate(seed: bytes, edits: list[Mutation]) -> bytes:
    data = bytearray(seed)
    for edit in edits:
        edit(data)
    return bytes(data)


def run_mutations(
    seeds: dict[str, bytes], workdir: Path, name: str, edits: list[Mutation], suffix: str
) -> None:
    path = workdir / f"{name}{suffix}"
    path.write_bytes(mutate(seeds[name], edits))
    settle(path)


EDITS = st.lists(mutation(), min_size=1, max_size=4)
SUFFIXES = st.sampled_from([".pdf", ".pdf", ".bin"])


@fuzz_settings(140)
@given(edits=EDITS, suffix=SUFFIXES)
def test_mutated_helloworld(
    seeds: dict[str, bytes], workdir: Path, edits: list[Mutation], suffix: str
) -> None:
    run_mutations(seeds, workdir, "helloworld", edits, suffix)


@fuzz_settings(90)
@given(edits=EDITS, suffix=SUFFIXES)
def test_mutated_handmade_pdf(
    seeds: dict[str, bytes], workdir: Path, edits: list[Mutation], suffix: str
) -> None:
    run_mutations(seeds, workdir, "handmade", edits, suffix)


@fuzz_settings(50)
@given(edits=EDITS)
def test_mutated_cad(seeds: dict[str, bytes], workdir: Path, edits: list[Mutation]) -> None:
    run_mutations(seeds, workdir, "cad", edits, ".pdf")


@fuzz_settings(50)
@given(edits=EDITS)
def test_mutated_r_faq_pages(seeds: dict[str, bytes], workdir: Path, edits: list[Mutation]) -> None:
    run_mutations(seeds, workdir, "rfaq3", edits, ".pdf")


# --------------------------------------------------------------------------- generated files


@fuzz_settings(40)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".pdf", ".txt", ""]))
def test_random_bytes(workdir: Path, data: bytes, suffix: str) -> None:
    path = workdir / f"random{suffix}"
    path.write_bytes(data)
    outcome = settle(path)
    if suffix == ".pdf":
        assert isinstance(outcome, DocumentError)


@fuzz_settings(40)
@given(
    version=st.sampled_from([b"1.0", b"1.4", b"1.7", b"2.0", b"9"]),
    garbage=st.binary(max_size=4096),
    tail=st.sampled_from(
        [b"", b"\n%%EOF\n", b"\nstartxref\n0\n%%EOF\n", b"\ntrailer << /Root 1 0 R >>\n%%EOF"]
    ),
)
def test_pdf_header_then_garbage(workdir: Path, version: bytes, garbage: bytes, tail: bytes) -> None:
    path = workdir / "garbage.pdf"
    path.write_bytes(b"%PDF-" + version + b"\n" + garbage + tail)
    assert isinstance(settle(path), DocumentError)


def page_tree(depth: int) -> dict[int, bytes]:
    """A chain of /Pages nodes ``depth`` deep with the one page at the bottom."""
    objects = simple_objects(o1=b"<< /Type /Catalog /Pages 10 0 R >>")
    del objects[2]
    for level in range(depth):
        objects[10 + level] = b"<< /Type /Pages /Count 1 /Kids [%d 0 R] >>" % (11 + level)
    objects[10 + depth] = PAGE.replace(b"/Parent 2 0 R", b"/Parent %d 0 R" % (9 + depth))
    return objects


def adversarial(kind: str, size: int) -> bytes:
    """A structurally hostile PDF of the given kind; ``size`` scales the hostility."""
    if kind == "count":
        return build_pdf(simple_objects(o2=b"<< /Type /Pages /Count %d /Kids [3 0 R] >>" % (size**3 - 10**6)))
    if kind == "fan_out":
        kids = b"3 0 R " * size
        return build_pdf(simple_objects(o2=b"<< /Type /Pages /Count %d /Kids [%s] >>" % (size, kids)))
    if kind == "binary_tree":
        objects = simple_objects(o1=b"<< /Type /Catalog /Pages 10 0 R >>")
        levels = 1 + size % 18
        for level in range(levels):
            objects[10 + level] = b"<< /Type /Pages /Count 2 /Kids [%d 0 R %d 0 R] >>" % ((11 + level,) * 2)
        objects[10 + levels] = PAGE.replace(b"/Parent 2 0 R ", b"")
        return build_pdf(objects)
    if kind == "deep_tree":
        return build_pdf(page_tree(size % 400))
    if kind == "cycle":
        return build_pdf(simple_objects(o2=b"<< /Type /Pages /Count 2 /Kids [3 0 R 2 0 R] >>"))
    if kind == "nested_array":
        return build_pdf(
            simple_objects(o6=b"[" * size * 20 + b"]" * size * 20, o3=PAGE[:-2] + b" /X 6 0 R >>")
        )
    if kind == "nested_dict":
        return build_pdf(
            simple_objects(o6=b"<< /A " * size * 10 + b"0" + b" >>" * size * 10, o3=PAGE[:-2] + b"/X 6 0 R>>")
        )
    if kind == "nested_contents":
        return build_pdf(simple_objects(o3=PAGE.replace(b"5 0 R", b"[" * size + b"5 0 R" + b"]" * size)))
    if kind == "stream_length_lies":
        body = b"BT /F1 12 Tf (Hello fuzz) Tj ET"
        return build_pdf(
            simple_objects(o5=b"<< /Length %d >>\nstream\n%s\nendstream" % (size * 997 - 5000, body))
        )
    if kind == "self_drawing_form":
        form = stream(
            b"/X Do",
            b"/Type /XObject /Subtype /Form /BBox [0 0 9 9] /Resources << /XObject << /X 6 0 R >> >> ",
        )
        page = PAGE.replace(b"/Font << /F1 4 0 R >>", b"/Font << /F1 4 0 R >> /XObject << /X 6 0 R >>")
        return build_pdf(simple_objects(o3=page, o5=stream(b"/X Do " * (1 + size % 50)), o6=form))
    if kind == "many_operators":
        return build_pdf(simple_objects(o5=stream(b"BT /F1 12 Tf " + b"(ab) Tj " * (size * 20) + b"ET")))
    if kind == "object_stream_lies":
        objstm = stream(b"1 0", b"/Type /ObjStm /N %d /First %d " % (size * 1000, size))
        return build_pdf(simple_objects(o6=objstm, o1=b"<< /Type /Catalog /Pages 2 0 R /X 7 0 R >>"))
    if kind == "xref_size_lies":
        return build_pdf(simple_objects(), trailer=b"/Size %d " % (size * 10**6))
    if kind == "encrypt_garbage":
        handler = b"<< /Filter /Standard /V %d /R %d /O (x) /U (y) /P -1 >>" % (size % 7, size % 9)
        return build_pdf(simple_objects(o6=handler), trailer=b"/Encrypt 6 0 R /ID [<00> <00>] ")
    raise ValueError(kind)


ADVERSARIAL_KINDS = (
    "count", "fan_out", "binary_tree", "deep_tree", "cycle", "nested_array", "nested_dict",
    "nested_contents", "stream_length_lies", "self_drawing_form", "many_operators",
    "object_stream_lies", "xref_size_lies", "encrypt_garbage",
)  # fmt: skip


@fuzz_settings(56)
@given(kind=st.sampled_from(ADVERSARIAL_KINDS), size=st.integers(1, 1000))
def test_adversarial_structures(workdir: Path, kind: str, size: int) -> None:
    path = workdir / f"{kind}.pdf"
    path.write_bytes(adversarial(kind, size))
    settle(path)


@pytest.mark.parametrize("kind", ADVERSARIAL_KINDS)
def test_each_adversarial_kind_at_its_worst(workdir: Path, kind: str) -> None:
    path = workdir / f"worst-{kind}.pdf"
    path.write_bytes(adversarial(kind, 2000))
    settle(path)


def test_huge_declared_count_yields_only_the_real_page(workdir: Path) -> None:
    path = workdir / "count.pdf"
    path.write_bytes(adversarial("count", 10**6))
    outcome = settle(path)
    assert isinstance(outcome, Document)
    assert outcome.text == "[Page 1]\nHello fuzz"
