"""Every snippet of README.md runs as written, on the CPU, and answers from the document it names.

Each ```python block runs on its own (a fresh namespace, imports included) in a temporary folder
that holds the files the README names: ``book.pdf`` (its foreword names the writer,
:data:`FOREWORD_WRITER`) and ``manual.pdf`` (its install command), small real PDFs built by
:func:`conftest.write_text_pdf`. Each ``reattn ...`` line of a ```bash block runs through the CLI's
entry point (:func:`reattn_llm.cli.main`) in this process. ``make`` lines are not run: they set up
the environment and run this suite.

What the test changes, and says in the test id:

* a Hub id (``"owner/name"``) becomes the embedded default model (tests download nothing):
  ``model="owner/name"`` becomes ``model=None``, any other such string the default model's
  local folder; ``"cuda"`` becomes ``"cpu"``;
* every answer through the engine stops after :data:`MAX_NEW_TOKENS` tokens (bounded runtime;
  the README's questions have answers of a few tokens).

Snippets of the default model share one engine; the engines they made are dropped at the end.
The module runs torch on one thread: on this suite's shared 2-core machine, with other processes
on the cores, two threads ran the same answers 5-13x slower (threads waiting on each other).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import FILLER_PAGES, write_text_pdf

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

MAX_NEW_TOKENS = 16
FOREWORD_WRITER = "Hale"
FOREWORD = [
    "Foreword",
    "This foreword was written by Margaret Hale, the editor of this book.",
    "She thanks the people of the valley for their stories.",
]
MANUAL = [
    "Installation",
    "To install the harbour tools, run the command: pip install harbour-tools",
    "Then start them with the command harbour-start.",
]
#: Questions the README asks, and a word each right answer holds.
ANSWERS = {"Who wrote the foreword?": FOREWORD_WRITER, "How do I install it?": "harbour"}

_HUB_ID = re.compile(r"""(["'])([A-Za-z0-9][\w.-]*/[\w.-]+)\1""")
_FILE_SUFFIXES = (".pdf", ".txt", ".safetensors", ".md", ".json")


@dataclasses.dataclass
class Snippet:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    label: str  # the section's heading and the block's number in it: "Use 2"


def readme_snippets() -> list[Snippet]:
    """The fenced code blocks of README.md, in order."""
    found, lines = [], README.read_text(encoding="utf-8").splitlines()
    section, number, i = "top", 0, 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section, number = lines[i][3:].strip(), 0
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if m:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            number += 1
            code = "\n".join(lines[i + 1 : end]) + "\n"
            found.append(Snippet(i + 1, m.group(1), code, f"{section} {number}"))
            i = end
        i += 1
    return found


def on_cpu_with_the_default_model(code: str) -> tuple[str, list[str]]:
    """``code`` with Hub ids replaced by the embedded default model and ``"cuda"`` by ``"cpu"``;
    and the list of what was replaced (for the test id)."""
    changes: list[str] = []

    def hub(m: re.Match[str], keyword: bool) -> str:
        name = m.group(2)
        if name.endswith(_FILE_SUFFIXES) or name.startswith((".", "/")):
            return m.group(0)
        changes.append(f"{name}->default")
        if keyword:
            return "model=None"
        from reattn_llm.runtime.models import default_model_dir

        return repr(str(default_model_dir()))

    code = re.sub(r"""model=(["'])([A-Za-z0-9][\w.-]*/[\w.-]+)\1""", lambda m: hub(m, True), code)
    code = _HUB_ID.sub(lambda m: hub(m, False), code)
    if re.search(r"""(["'])cuda(:\d+)?\1""", code):
        code = re.sub(r"""(["'])cuda(:\d+)?\1""", '"cpu"', code)
        changes.append("cuda->cpu")
    return code, sorted(set(changes), key=changes.index)


def _expected_words(text: str) -> list[str]:
    return [word for question, word in ANSWERS.items() for _ in range(text.count(question))]


PYTHON = [s for s in readme_snippets() if s.lang == "python"]
COMMANDS = [
    (f"{s.label}: {' '.join(shlex.split(line, comments=True))}", line.strip())
    for s in readme_snippets()
    if s.lang in ("bash", "sh", "console")
    for k, line in enumerate(s.code.splitlines())
    if line.strip().startswith("reattn ")
]


def _python_id(s: Snippet) -> str:
    _, changes = on_cpu_with_the_default_model(s.code) if "/" in s.code or "cuda" in s.code else ("", [])
    return s.label + (f" [{', '.join(changes)}]" if changes else "")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The files the README names."""
    d = tmp_path_factory.mktemp("readme")
    # ~700 tokens: more than one prefill chunk of the default config (512), so a prefix is kept
    write_text_pdf(d / "book.pdf", [FOREWORD, *FILLER_PAGES[:4]])
    # 30 short pages (the README reads pages 12-30 of it), the install command on page 2
    lines = [line for page in FILLER_PAGES for line in page]
    write_text_pdf(
        d / "manual.pdf", [[f"Chapter {n}.", lines[n]] if n != 2 else MANUAL for n in range(1, 31)]
    )
    (d / "book.txt").write_text("\n".join(FOREWORD + FILLER_PAGES[0]) + "\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module", autouse=True)
def one_thread_own_store_no_leftover_engines(tmp_path_factory):
    """torch on one thread for this module; kept documents stored in a temporary folder (not the
    user's store); the shared engines the snippets made, which would outlive the module, dropped."""
    import torch

    from reattn_llm.runtime import registry

    threads, before = torch.get_num_threads(), set(registry._engines)
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REATTN_LLM_PREFIX_DIR", str(tmp_path_factory.mktemp("prefixes")))
        yield
    torch.set_num_threads(threads)
    for key in set(registry._engines) - before:
        registry._engines.pop(key, None)


@pytest.fixture
def short_answers(monkeypatch):
    """Every engine answer stops after :data:`MAX_NEW_TOKENS` tokens."""
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.sampling import SamplingParams

    generate = Engine.generate

    def capped(self, prompt, params=None, *args, **kwargs):
        params = params or SamplingParams()
        params = dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, MAX_NEW_TOKENS))
        return generate(self, prompt, params, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", capped)


def _keep_bare_values(code: str) -> ast.Module:
    """``code`` parsed, each top-level bare expression (``ReAttentionConfig(...)``) kept in ``_values``."""
    tree = ast.parse(code)
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.Expr) and not (
            isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "print"
        ):
            call = ast.parse("_values.append(None)").body[0]
            call.value.args[0] = node.value
            tree.body[i] = ast.copy_location(call, node)
    return ast.fix_missing_locations(tree)


@pytest.mark.parametrize("snippet", PYTHON, ids=_python_id)
def test_python_snippet_runs_and_answers(snippet, folder, short_answers, monkeypatch, capsys):
    code, _ = on_cpu_with_the_default_model(snippet.code)
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "__readme__", "_values": []}
    exec(compile(_keep_bare_values(code), f"README.md:{snippet.line}", "exec"), namespace)
    out = capsys.readouterr().out
    expected = _expected_words(snippet.code)
    for word in set(expected):  # one right answer per question asked
        assert out.count(word) >= expected.count(word), out
    if "device_map=" in snippet.code:  # the layer split is kept for the engine, which loads lazily
        (llm,) = [v for v in namespace["_values"] if hasattr(v, "engine")]
        assert llm.engine.device_map == "auto" and str(llm.engine.device) == "cpu"
    for value in namespace["_values"]:
        if type(value).__name__ == "ReAttentionConfig":  # valid as written (checked at construction)
            assert value.kv_dtype != "model" or value.offload != "none"
    if "save_prefix" in snippet.code:  # the loaded prefix was reused: the question alone was prefilled
        engine = namespace["llm"].engine
        assert engine.last is not None
        assert engine.last_prefill_tokens < engine.last.prompt_tokens / 2, (
            engine.last_prefill_tokens,
            engine.last.prompt_tokens,
        )
        assert (folder / "book.prefix.safetensors").stat().st_size > 0


@pytest.mark.parametrize("label,command", COMMANDS, ids=[label for label, _ in COMMANDS])
def test_command_line_runs_and_answers(label, command, folder, short_answers, monkeypatch, capsys):
    from reattn_llm import __version__
    from reattn_llm.cli import main

    monkeypatch.chdir(folder)
    argv = shlex.split(command, comments=True)
    try:
        code = main(argv[1:])
    except SystemExit as done:  # argparse's --version and --help exit
        code = done.code or 0
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = captured.out
    if argv[1] == "info":
        assert re.search(r"tokens\s+\d", out) and "fits" in out, out
    if argv[1] == "--version":
        assert __version__ in out
    if "--json" in argv:
        out = json.loads(out)["text"]
    for word in _expected_words(command):
        assert word in out, out


def test_warm_takes_a_document_or_its_text(shared_engine, folder):
    from reattn_llm import load_document

    doc = load_document(folder / "book.pdf")
    kept = shared_engine.warm(doc)
    assert kept > 0 and shared_engine.warm(doc.text) == kept
    with pytest.raises(TypeError, match="Document"):
        shared_engine.warm(folder / "book.pdf")  # a path is not the document's text


def test_every_snippet_is_collected():
    """The README has the snippets this file claims to run (a renamed fence would skip them)."""
    assert len(PYTHON) >= 5 and len(COMMANDS) >= 2
    assert any("WholeDocumentQueryEngine" in s.code for s in PYTHON)
    assert any("patch(model" in s.code for s in PYTHON)
