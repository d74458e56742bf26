"""``reattn``: ask questions over whole PDFs and text files from the command line.

    reattn ask book.pdf "Who wrote the foreword?" --cite
    reattn ask book.pdf "Summarise chapter 2." --pages 12-30 --json
    reattn info manual.pdf
    reattn calibrate --model Qwen/Qwen2.5-0.5B-Instruct --device cuda
    reattn serve --port 8000          # an OpenAI-compatible server
    reattn chat book.pdf              # questions from stdin, one per line
    reattn demo

The files come first, the question last. A prefilled document is kept on disk (see
:mod:`reattn_llm.runtime.prefix_store`; ``--no-cache`` or ``REATTN_LLM_NO_CACHE=1`` to skip), so
a second question about the same file prefills only the question.

Exit codes: 0 success; 2 bad usage; 3 the document cannot be read; 4 unsupported model or
impossible config; 5 the document does not fit (capacity) or memory ran out; 6 the model cannot
be fetched (no network and not in the local cache) or a cache folder cannot be used; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import (
    ConfigError,
    ContextTooLongError,
    DocumentError,
    OutOfMemoryError,
    ReAttentionError,
    UnsupportedModelError,
)
from ..method.config import ReAttentionConfig
from .calibrate import add_parser as add_calibrate
from .calibrate import cmd_calibrate
from .options import (
    UsageError,
    answer_args,
    cli_words,
    config_args,
    config_of,
    document_args,
    document_store,
    fetch_message,
    fetch_problem,
    load_files,
    make_engine,
    version,
)
from .serve import add_parsers as add_serve
from .serve import cmd_chat, cmd_serve

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DOCUMENT, EXIT_MODEL, EXIT_CAPACITY, EXIT_FETCH = 0, 1, 2, 3, 4, 5, 6
SAMPLE = Path(__file__).parent.parent / "data" / "pride_and_prejudice_1-3.txt"
DEMO_QUESTION = "Where did Mrs. Hill keep the key of the library?"
DEMO_CONFIG = dict(window=1024)
PROMPT = "{document}\n\nAnswer the question using the document above.\nQuestion: {question}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reattn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"reattn-llm {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    ask = sub.add_parser(
        "ask",
        help="answer a question over one or more PDF/text files",
        usage='reattn ask [options] FILE [FILE ...] "QUESTION"',
        description="Answer QUESTION (the last argument, quoted) over the files before it.",
    )
    ask.set_defaults(usage=ask.format_usage())
    ask.add_argument(
        "files", nargs="+", metavar='FILE [FILE ...] "QUESTION"', help="the files, then the question"
    )
    answer_args(ask, system_help="a system prompt (the model's chat template places it)")
    ask.add_argument("--cite", action="store_true", help="print the pages the answer drew on")
    ask.add_argument(
        "--json", action="store_true", help="print one JSON object: text, usage, citations, timings"
    )
    document_args(ask)
    config_args(ask)
    info = sub.add_parser(
        "info", help="pages, tokens, memory and time for this machine, before any model work"
    )
    info.set_defaults(usage=info.format_usage())
    info.add_argument("files", nargs="+", metavar="FILE")
    document_args(info)
    config_args(info)
    add_calibrate(sub)
    demo = sub.add_parser("demo", help="answer a question over the bundled public-domain sample")
    demo.add_argument("--question", default=DEMO_QUESTION)
    demo.add_argument("--no-progress", action="store_true")
    add_serve(sub)
    return p


def cmd_info(a: argparse.Namespace) -> int:
    from ..runtime.models import load_config
    from ..runtime.plan import make_plan

    engine = make_engine(a, config=config_of(a), progress=False)
    doc = load_files(a.files, a, progress=sys.stderr.isatty())
    tokens = engine.count_tokens(str(doc))
    plan = make_plan(load_config(a.model), engine.config, tokens, engine.device, engine.dtype)
    gib = 1024**3
    c = engine.config
    rows = [
        ("files", ", ".join(a.files)),
        ("pages", str(len(doc.pages)) if doc.metadata.get("format") != "text" else "1 (text)"),
        ("characters", f"{len(doc):,}"),
        ("tokens", f"{tokens:,} ({engine.model_name} tokenizer)"),
        (
            "trained window",
            f"{c.window:,} tokens; scope {c.scope:,} = G {c.global_size} + "
            f"{c.max_spans} spans x {c.span_size} + L {c.local_size}",
        ),
        ("device", f"{engine.device} ({engine.dtype})"),
        ("KV cache", f"{plan.kv_bytes / gib:.2f} GiB on the device"),
        *(
            [("KV cache, host", f"{plan.host_kv_bytes / gib:.2f} GiB offloaded")]
            if plan.host_kv_bytes
            else []
        ),
        (
            "peak memory (est.)",
            f"{plan.peak_bytes / gib:.2f} GiB of {plan.capacity.available_bytes / gib:.1f} GiB free",
        ),
        ("capacity", f"{plan.capacity.max_tokens:,} tokens -> {'fits' if plan.fits else 'DOES NOT FIT'}"),
        (
            "prefill time (est.)",
            f"{plan.prefill_seconds:.1f} s at {plan.device_flops / 1e9:.0f} GFLOP/s measured",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return EXIT_OK if plan.fits else EXIT_CAPACITY


def _answer(engine: Any, prompt: Any, params: Any, cite: bool, as_json: bool = False) -> Any:
    def show(delta: str) -> None:
        if not as_json:
            sys.stdout.write(delta)
            sys.stdout.flush()

    t0 = time.perf_counter()
    done = engine.generate(prompt, params, cite_sources=cite or as_json).complete(on_delta=show)
    dt = time.perf_counter() - t0
    prefilled = engine.last_prefill_tokens
    from ..runtime.citations import cited_pages

    pages = cited_pages(done.citations)
    if as_json:
        usage = dict(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens)
        usage.update(prefilled_tokens=prefilled, reused_tokens=done.prompt_tokens - prefilled)
        timings = dict(prefill_s=done.prefill_seconds, decode_s=done.decode_seconds, total_s=dt)
        out = dict(text=done.text, finish_reason=done.finish_reason, model=done.model_name, usage=usage)
        out.update(timings={k: round(v, 4) for k, v in timings.items()}, cited_pages=pages)
        out["citations"] = [c.as_dict() for c in done.citations]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return done
    sys.stdout.write("\n")
    reused = f", {done.prompt_tokens - prefilled:,} reused" if prefilled < done.prompt_tokens else ""
    print(
        f"[{done.prompt_tokens:,} prompt tokens{reused}, prefill {done.prefill_seconds:.1f} s "
        f"({prefilled / max(done.prefill_seconds, 1e-9):,.0f} tok/s); "
        f"{done.completion_tokens} answer tokens in {done.decode_seconds:.1f} s; total {dt:.1f} s]",
        file=sys.stderr,
    )
    if cite:
        print("cited pages: " + (", ".join(map(str, pages)) if pages else "(none)"))
        for c in done.citations:
            where = f"page {c.page}" if c.page is not None else f"chars {c.start}-{c.end}"
            src = f"{c.source}, " if c.source else ""
            print(f"  [{src}{where}] {c.score:.0%}: {c.snippet[:100]}")
    return done


def _check_order(files: list[str], question: str) -> None:
    """Refuse a question given before the files (or no question at all) before anything is read."""
    if not Path(question).is_file():
        return
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise UsageError(
            f"{question!r} is a file and {missing[0]!r} is not: the question goes last, "
            f'as in: reattn ask {question} "{missing[0]}"'
        )
    raise UsageError(
        f"the last argument ({question!r}) is a file: add the question after the files, in quotes."
    )


def cmd_ask(a: argparse.Namespace) -> int:
    from ..runtime.sampling import SamplingParams

    if len(a.files) < 2:
        raise UsageError('ask needs at least one file and a question: reattn ask FILE [FILE ...] "QUESTION"')
    *files, question = a.files
    _check_order(files, question)
    progress = not a.no_progress and sys.stderr.isatty()
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar too
    engine = make_engine(a, config=config_of(a), progress=progress, prefix_store=document_store(a))
    doc = load_files(files, a, progress)
    prompt: Any = PROMPT.format(document=str(doc), question=question)
    if a.system is not None:
        prompt = [{"role": "system", "content": a.system}, {"role": "user", "content": prompt}]
    params = SamplingParams(max_new_tokens=a.max_tokens, temperature=a.temperature)
    prompt = engine.prepare(prompt, params)  # tokenized once, known to fit before the weights load
    _answer(engine, prompt, params, a.cite, a.json)
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from ..runtime.engine import Engine
    from ..runtime.sampling import SamplingParams

    text = SAMPLE.read_text(encoding="utf-8")
    engine = Engine(None, config=ReAttentionConfig(**DEMO_CONFIG), progress=not a.no_progress)
    c = engine.config
    print(
        f"Sample: {SAMPLE.name} ({engine.count_tokens(text):,} tokens), model {engine.model_name} with its window "
        f"shrunk to {c.window} tokens (local {c.local_size}), so most of the text lies outside it.",
        file=sys.stderr,
    )
    print(f"Question: {a.question}", file=sys.stderr)
    _answer(engine, PROMPT.format(document=text, question=a.question), SamplingParams(64), cite=False)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse's usage errors (2), --help and --version (0)
        return int(e.code or 0)
    handlers = {"ask": cmd_ask, "info": cmd_info, "calibrate": cmd_calibrate, "demo": cmd_demo}
    handlers.update(serve=cmd_serve, chat=cmd_chat)
    try:
        return handlers[a.command](a)
    except UsageError as e:
        sys.stderr.write(getattr(a, "usage", parser.format_usage()))
        print(f"reattn {a.command}: error: {cli_words(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except DocumentError as e:
        print(f"reattn: cannot read the document: {cli_words(str(e))}", file=sys.stderr)
        return EXIT_DOCUMENT
    except (UnsupportedModelError, ConfigError, PermissionError) as e:
        problem = fetch_problem(e)
        if problem is not None:
            print(fetch_message(e, problem, getattr(a, "model", None)), file=sys.stderr)
            return EXIT_FETCH
        print(f"reattn: {e}", file=sys.stderr)
        return EXIT_MODEL
    except (ContextTooLongError, OutOfMemoryError) as e:
        print(f"reattn: {e}", file=sys.stderr)
        return EXIT_CAPACITY
    except ReAttentionError as e:
        print(f"reattn: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nreattn: interrupted", file=sys.stderr)
        return 130
