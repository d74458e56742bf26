"""``reattn serve`` (an OpenAI-compatible server) and ``reattn chat FILE`` (a terminal REPL over one
document), the subcommands that keep a model loaded and answer question after question.

Both keep prefilled documents (in memory, and on disk in the document store unless ``--no-cache``),
so a question over a document already read prefills only its own tokens (plus less than a chunk).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ContextTooLongError
from .options import (
    UsageError,
    answer_args,
    config_args,
    config_of,
    document_args,
    document_store,
    load_files,
    make_engine,
    number,
)

#: The prompt of a chat turn: the document, then the question (as ``reattn ask`` builds it).
CHAT_PROMPT = "{document}\n\nAnswer the question using the document above.\nQuestion: {question}"
EXIT_COMMANDS = {"/exit", "/quit"}


def add_parsers(sub: Any) -> None:
    """Add ``serve`` and ``chat`` to the ``reattn`` subparsers."""
    serve = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models)",
        description="Serve the model over the OpenAI API at http://HOST:PORT/v1 (needs reattn-llm[serve]).",
    )
    serve.set_defaults(usage=serve.format_usage())
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=number(int, 0, "a port number"), default=8000)
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    serve.add_argument(
        "--max-prompt-tokens",
        type=number(int, 1, "a positive integer"),
        default=None,
        help="refuse longer prompts with a 400 (default: what the device can hold)",
    )
    serve.add_argument(
        "--slot-bytes",
        type=number(float, 1, "a positive number of bytes"),
        default=2 * 1024**3,
        help="memory for the prefilled documents kept between requests (default 2 GiB; LRU, spills to disk)",
    )
    serve.add_argument(
        "--no-cache", action="store_true", help="do not keep or reuse prefilled documents on disk"
    )
    config_args(serve)
    chat = sub.add_parser(
        "chat",
        help="a terminal REPL over one document: questions from stdin until EOF or /exit",
        usage="reattn chat [options] FILE",
        description="Read FILE once, then answer each question typed (one per line; /exit or EOF ends).",
    )
    chat.set_defaults(usage=chat.format_usage())
    chat.add_argument("file", metavar="FILE")
    answer_args(chat)
    document_args(chat)
    config_args(chat)


def check_address(host: str, port: int) -> None:
    """Refuse an address the server cannot listen on (a port in use or out of range, a host that
    is not this machine's) as a usage error, before the weights load; bound as uvicorn binds it."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except (OSError, OverflowError) as e:
        raise UsageError(
            f"cannot listen on {host}:{port} ({e}): give a free port with --port (0: any), or another --host."
        ) from e


def _engine(a: argparse.Namespace, progress: bool) -> Any:
    return make_engine(a, config=config_of(a), progress=progress, prefix_store=document_store(a))


def cmd_serve(a: argparse.Namespace) -> int:
    from ..serve import require

    try:
        require()
    except ImportError as e:
        print(f"reattn serve: {e}", file=sys.stderr)
        return 1
    import uvicorn

    from ..serve.app import create_app

    check_address(a.host, a.port)
    engine = _engine(a, progress=False)
    engine.load()  # before the port opens: the first request does not wait for the weights
    app = create_app(
        engine, api_key=a.api_key, max_prompt_tokens=a.max_prompt_tokens, slot_bytes=int(a.slot_bytes)
    )
    key = "the key given with --api-key" if a.api_key else "any API key"
    print(
        f"reattn serve: {engine.model_name} on http://{a.host}:{a.port}/v1 ({key}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


def _read_question(tty: bool) -> str | None:
    """The next question from stdin (None at EOF or /exit); blank lines are skipped."""
    while True:
        if tty:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return None
        question = line.strip()
        if question in EXIT_COMMANDS:
            return None
        if question:
            return question


def cmd_chat(a: argparse.Namespace) -> int:
    from ..runtime.sampling import SamplingParams

    tty = sys.stdin.isatty()
    progress = not a.no_progress and sys.stderr.isatty()
    engine = _engine(a, progress)
    doc = load_files([a.file], a, progress)
    text = str(doc)

    def prompt(question: str) -> Any:
        user = CHAT_PROMPT.format(document=text, question=question)
        if a.system is None:
            return user
        return [{"role": "system", "content": a.system}, {"role": "user", "content": user}]

    engine.check_fits(len(engine.encode(prompt("?"))[0]), a.max_tokens)  # before loading weights
    print(
        f"reattn chat: {a.file} ({engine.count_tokens(text):,} tokens) with {engine.model_name}; "
        "one question per line, /exit or EOF ends.",
        file=sys.stderr,
        flush=True,
    )
    turn = 0
    while (question := _read_question(tty)) is not None:
        turn += 1
        params = SamplingParams(max_new_tokens=a.max_tokens, temperature=a.temperature)
        stream = engine.generate(prompt(question), params)
        try:
            done = stream.complete(on_delta=lambda d: (sys.stdout.write(d), sys.stdout.flush()))
        except KeyboardInterrupt:
            stream.close()
            print("\n[answer interrupted]", file=sys.stderr, flush=True)
            continue
        except ContextTooLongError as e:  # this question only: the next one may fit
            print(f"reattn chat: {e}", file=sys.stderr, flush=True)
            continue
        prefilled = engine.last_prefill_tokens
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(
            f"[turn {turn}: {done.prompt_tokens} prompt tokens, {prefilled} prefilled, "
            f"{done.prompt_tokens - prefilled} reused; {done.completion_tokens} answer tokens; "
            f"prefill {done.prefill_seconds:.2f} s, decode {done.decode_seconds:.2f} s]",
            file=sys.stderr,
            flush=True,
        )
    return 0
