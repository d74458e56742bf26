"""The command line: info before any model work, ask over real PDFs, exit codes a script can rely on."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from reattn_llm import cli

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "pdfs").is_dir(), reason="shared data folder not present")


@needs_data
def test_info_matches_pypdf_and_tokenizer_in_seconds(capsys, monkeypatch):
    from pypdf import PdfReader

    from reattn_llm.documents import load_document
    from reattn_llm.runtime.models import load_tokenizer

    monkeypatch.setattr(
        "reattn_llm.runtime.models.load_model", lambda *a, **k: pytest.fail("info must not load weights")
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
    from reattn_llm.method.config import config_options

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
    config = cli._config(given)
    assert (config.tail_size, config.candidate_blocks, config.block_size) == (0, 12, 64)
    assert (config.selection, config.offload, config.top_k) == ("two_level", "keys_values", 8)
    assert cli._config(parser.parse_args(["ask", "a.txt", "q?"])) == ReAttentionConfig()  # unset: defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["ask", "a.txt", "q?", "--offload", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


def test_impossible_option_values_exit_4(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello " * 10)
    code = cli.main(["ask", str(f), "q?", "--offload", "keys_values", "--device", "cpu"])
    assert code == 4 and "selection='two_level'" in capsys.readouterr().err
