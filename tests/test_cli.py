"""The command line: info before any model work, ask over real PDFs, exit codes a script can rely on."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from reattn_llm import cli

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "pdfs").is_dir(), reason="shared data folder not present")
SMALL = "--window 512 --global-size 4 --local-size 256 --span-size 16 --max-spans 15 --chunk-size 128"


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    """Every test's prefilled documents go to its own folder, never to the user's cache."""
    monkeypatch.delenv("REATTN_LLM_NO_CACHE", raising=False)
    monkeypatch.setenv("REATTN_LLM_PREFIX_DIR", str(tmp_path / "store"))
    return tmp_path / "store"


@needs_data
def test_info_matches_pypdf_and_tokenizer_in_seconds(capsys, monkeypatch):
    from pypdf import PdfReader

    from reattn_llm.documents import load_document
    from reattn_llm.runtime import engine as engine_module
    from reattn_llm.runtime.models import load_tokenizer

    # the engine's own name for it (patching runtime.models would leak into an engine module
    # imported during this test, and fail every later test that loads weights)
    monkeypatch.setattr(
        engine_module, "load_model", lambda *a, **k: pytest.fail("info must not load weights")
    )
    path = DATA / "pdfs" / "R-intro.pdf"
    t0 = time.perf_counter()
    code = cli.main(["info", str(path), "--device", "cpu"])
    elapsed = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert code == 0
    pages = len(PdfReader(str(path)).pages)
    tokens = len(load_tokenizer(None)(str(load_document(path)), add_special_tokens=False)["input_ids"])
    rows = {line.split("  ")[0]: line.split("  ", 1)[1].strip() for line in out.splitlines() if "  " in line}
    assert rows["pages"] == str(pages)
    assert rows["tokens"].split()[0] == f"{tokens:,}"
    assert pages == 113 and tokens > 60_000
    assert elapsed < 60


@needs_data
def test_ask_answers_from_far_outside_the_local_window(tmp_path, capsys):
    from pypdf import PdfReader, PdfWriter

    src = PdfReader(str(DATA / "pdfs" / "R-intro.pdf"))
    writer = PdfWriter()
    for page in src.pages[10:13]:
        writer.add_page(page)
    pdf = tmp_path / "excerpt.pdf"
    writer.write(str(pdf))
    note = tmp_path / "note.txt"
    note.write_text("The secret code of the archive room is 73914.\n")
    code = cli.main(
        [
            "ask",
            str(note),
            str(pdf),
            "What is the secret code of the archive room?",
            "--window",
            "512",
            "--device",
            "cpu",
            "--max-tokens",
            "16",
            "--cite",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "73914" in out


@pytest.mark.parametrize("content,code", [(b"", 3), (b"%PDF-1.7\n garbage", 3), (b"\x00\x01\x02" * 100, 3)])
def test_bad_files_exit_with_document_code(tmp_path, content, code, capsys):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(content)
    assert cli.main(["ask", str(bad), "question?", "--device", "cpu", "--no-progress"]) == code
    assert "cannot read the document" in capsys.readouterr().err


def test_missing_file_and_directory(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "nope.pdf"), "--device", "cpu"]) == 3
    assert cli.main(["info", str(tmp_path), "--device", "cpu"]) == 3


def test_impossible_config_exits_4_before_reading(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello " * 10)
    code = cli.main(["ask", str(f), "q?", "--local-size", "300", "--chunk-size", "400", "--device", "cpu"])
    assert code == 4 and "chunk_size=400" in capsys.readouterr().err


def test_ask_without_question_is_usage_error(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    assert cli.main(["ask", str(f)]) == 2


def test_config_flags_are_the_config_fields_with_their_types_and_choices(capsys):
    from reattn_llm import ReAttentionConfig
    from reattn_llm.method.options import config_options

    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command in ("ask", "info"):
        actions = {a.dest: a for a in commands.choices[command]._actions}
        for option in config_options():
            flag = actions[option.name]
            assert flag.option_strings == [f"--{option.name.replace('_', '-')}"]
            assert flag.type is option.type and flag.default is None
            assert (tuple(flag.choices) if flag.choices else None) == option.choices
    flags = "--tail-size 0 --candidate-blocks 12 --block-size 64 --selection two_level --offload keys_values --top-k 8"
    given = parser.parse_args(["ask", "a.txt", "q?", *flags.split()])
    config = cli.config_of(given)
    assert (config.tail_size, config.candidate_blocks, config.block_size) == (0, 12, 64)
    assert (config.selection, config.offload, config.top_k) == ("two_level", "keys_values", 8)
    assert cli.config_of(parser.parse_args(["ask", "a.txt", "q?"])) == ReAttentionConfig()  # unset: defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["ask", "a.txt", "q?", "--offload", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


def test_impossible_option_values_exit_4(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello " * 10)
    code = cli.main(["ask", str(f), "q?", "--offload", "keys_values", "--device", "cpu"])
    assert code == 4 and "selection='two_level'" in capsys.readouterr().err


# --- usage errors: exit 2, argparse's style, before the document is read --------------------------


@pytest.mark.parametrize(
    "flags,says",
    [
        ("--max-tokens 0", "argument --max-tokens: 0: must be a positive integer"),
        ("--temperature -1", "argument --temperature: -1: must be 0 (greedy) or more"),
        ("--device tpu9", "argument --device: 'tpu9': use auto, cpu, cuda, cuda:N or mps"),
        ("--dtype int8", "argument --dtype: invalid choice: 'int8'"),
        ("--pages 5-3", "argument --pages: '5-3': give a page or a range of pages"),
        ("--timeout 0", "argument --timeout: 0: must be positive"),
        ("--max-pages 0", "argument --max-pages: 0: must be a positive integer"),
    ],
)
def test_bad_option_values_are_usage_errors_before_the_document_is_read(tmp_path, capsys, flags, says):
    missing = tmp_path / "not-there.pdf"  # exit 3 if it were read first
    assert cli.main(["ask", str(missing), "q?", *flags.split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith('usage: reattn ask [options] FILE [FILE ...] "QUESTION"')
    assert f"reattn ask: error: {says}" in err and "Traceback" not in err


def test_a_device_this_machine_lacks_is_a_usage_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["ask", str(tmp_path / "not-there.pdf"), "q?", "--device", "cuda:0"]) == 2
    assert "--device 'cuda:0' but no CUDA GPU is visible: use --device 'cpu'" in capsys.readouterr().err


def test_question_before_the_file_is_named_as_such(tmp_path, capsys):
    f = tmp_path / "book.txt"
    f.write_text("hello " * 10)
    assert cli.main(["ask", "Who wrote it?", str(f)]) == 2
    err = capsys.readouterr().err
    assert f'the question goes last, as in: reattn ask {f} "Who wrote it?"' in err
    assert cli.main(["ask", str(f), str(f)]) == 2
    assert "add the question after the files" in capsys.readouterr().err


def test_help_shows_where_the_question_goes_and_version_comes_from_metadata(capsys):
    from importlib.metadata import version

    assert cli.main(["ask", "--help"]) == 0
    out = capsys.readouterr().out
    assert 'usage: reattn ask [options] FILE [FILE ...] "QUESTION"' in out
    for flag in ("--json", "--pages", "--system", "--timeout", "--max-pages", "--max-chars", "--no-cache"):
        assert flag in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"reattn-llm {version('reattn-llm')}"


def test_document_errors_name_the_command_line_flags(tmp_path, capsys):
    f = tmp_path / "long.txt"
    f.write_text("word " * 40)
    assert cli.main(["ask", str(f), "q?", "--max-chars", "50", "--device", "cpu"]) == 3
    err = capsys.readouterr().err
    assert "reattn: cannot read the document:" in err and "more than --max-chars 50" in err
    assert "--max-chars 0 for no limit" in err and "max_chars=" not in err
    message = (
        "x.pdf: reading took longer than 5 s (page 3); the PDF is pathological or damaged. "
        "Pass a larger timeout_s= or max_pages=, or repair it"
    )
    assert "Pass a larger --timeout or --max-pages, or repair it" in cli.cli_words(message)


def test_page_range_keeps_the_page_numbers(tmp_path):
    from conftest import FILLER_PAGES, write_text_pdf

    from reattn_llm.documents import load_document

    pdf = write_text_pdf(tmp_path / "five.pdf", FILLER_PAGES)
    a = cli.build_parser().parse_args(["info", str(pdf), "--pages", "2-3"])
    doc = cli.load_files([str(pdf)], a, progress=False)
    assert [s.number for s in doc.pages] == [2, 3] and doc.text.startswith("[Page 2]\n")
    full = load_document(pdf)
    for kept, span in zip(doc.pages, full.pages[1:3], strict=True):  # the same text, page for page
        assert doc.text[kept.start : kept.end] == full.text[span.start : span.end]
    first = full.pages[0]
    assert full.text[first.start : first.end] not in doc.text and "[Page 3]" in doc.text
    assert doc.page_at(doc.text.index("73914")) == 2
    a = cli.build_parser().parse_args(["info", str(pdf), "--pages", "9-12"])
    with pytest.raises(cli.UsageError, match="has 5 pages"):
        cli.load_files([str(pdf)], a, progress=False)


def test_an_offline_hub_id_is_a_fetch_problem_not_an_unsupported_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does
    f = tmp_path / "a.txt"
    f.write_text("hello " * 10)
    code = cli.main(["ask", str(f), "q?", "--model", "reattn-tests/never-downloaded", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 6, err
    assert "cannot get the model reattn-tests/never-downloaded: the Hub cannot be reached" in err
    assert "not in the local cache" in err and "unsupported" not in err.lower()


# --- --json, --system, --pages and the document store across runs ---------------------------------


def test_second_run_over_the_same_file_prefills_only_the_question(tmp_path, capsys, private_store):
    import json

    from conftest import FILLER_PAGES, PLANTED_QUESTION, write_text_pdf

    from reattn_llm.runtime.models import load_tokenizer

    pdf = write_text_pdf(tmp_path / "doc.pdf", [*FILLER_PAGES, *FILLER_PAGES[2:]])
    argv = ["ask", str(pdf), PLANTED_QUESTION, "--pages", "2-7", "--system", "Answer briefly."]
    argv += ["--json", "--max-tokens", "16", "--device", "cpu", "--no-progress", *SMALL.split()]
    runs = []
    for _ in range(2):
        assert cli.main(argv) == 0
        runs.append(json.loads(capsys.readouterr().out))
    first, second = runs
    assert set(first) >= {"text", "usage", "citations", "timings", "cited_pages", "finish_reason"}
    assert first["usage"]["prefilled_tokens"] == first["usage"]["prompt_tokens"] > 800
    assert first["usage"]["reused_tokens"] == 0 and len(list(private_store.glob("*.safetensors"))) == 1
    tokenizer = load_tokenizer(None)
    question = len(tokenizer(f"Question: {PLANTED_QUESTION}")["input_ids"]) + 8  # + the template's end
    assert second["usage"]["prefilled_tokens"] < question + 128  # its own tokens and < one chunk
    assert (
        second["usage"]["reused_tokens"]
        == second["usage"]["prompt_tokens"] - second["usage"]["prefilled_tokens"]
    )
    assert second["text"] == first["text"] and "73914" in first["text"]
    assert set(first["cited_pages"]) <= set(range(2, 8))


def test_no_cache_flag_and_environment_leave_the_store_out(tmp_path, monkeypatch, private_store):
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.prefix_store import DocumentStore

    stores = []

    def stop(self):  # the engine as the command built it, before any weights load
        stores.append(self.prefixes.disk)
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "load", stop)
    f = tmp_path / "a.txt"
    f.write_text("hello " * 10)
    argv = ["ask", str(f), "q?", "--device", "cpu"]
    assert cli.main(argv) == 130 and cli.main([*argv, "--no-cache"]) == 130
    monkeypatch.setenv("REATTN_LLM_NO_CACHE", "1")
    assert cli.main(argv) == 130
    assert isinstance(stores[0], DocumentStore) and stores[0].root == private_store
    assert stores[1:] == [None, None]


def test_ask_tokenizes_the_document_once(tmp_path, monkeypatch):
    """The capacity check before the weights load and the answer share one tokenization."""
    from reattn_llm.runtime import engine as engine_module

    calls = []
    encode = engine_module.encode_prompt
    monkeypatch.setattr(engine_module, "encode_prompt", lambda *a, **k: calls.append(1) or encode(*a, **k))

    def stop(self):  # the answer starts: the prompt went through every check before this
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_module.Engine, "load", stop)
    f = tmp_path / "a.txt"
    f.write_text("hello " * 500)
    assert cli.main(["ask", str(f), "q?", "--device", "cpu", "--no-cache"]) == 130
    assert len(calls) == 1


def test_an_unusable_store_bound_is_a_config_error(tmp_path, monkeypatch, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello " * 10)
    for raw in ("inf", "lots"):
        monkeypatch.setenv("REATTN_LLM_PREFIX_BYTES", raw)
        assert cli.main(["ask", str(f), "q?", "--device", "cpu"]) == 4
        assert f"REATTN_LLM_PREFIX_BYTES={raw!r}: give a number of bytes" in capsys.readouterr().err


def test_serve_refuses_an_address_it_cannot_listen_on_before_loading_weights(monkeypatch, capsys):
    import socket

    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from reattn_llm.runtime.engine import Engine

    monkeypatch.setattr(Engine, "load", lambda self: pytest.fail("no weights for a server that cannot start"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for argv, says in [
            (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
            (["--port", "70000"], "cannot listen on 127.0.0.1:70000"),
            (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1:8000"),  # not this machine
        ]:
            assert cli.main(["serve", "--device", "cpu", *argv]) == 2
            err = capsys.readouterr().err
            assert says in err and "--port" in err and "usage: reattn serve" in err
