"""``reattn``: ask questions over whole PDFs and text files from the command line.

    reattn ask book.pdf "Who wrote the foreword?" --cite
    reattn info manual.pdf
    reattn demo

Exit codes: 0 success; 2 bad usage; 3 the document cannot be read; 4 unsupported model or
impossible config; 5 the document does not fit (capacity) or memory ran out; 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .errors import (
    ConfigError,
    ContextTooLongError,
    DocumentError,
    OutOfMemoryError,
    ReAttentionError,
    UnsupportedModelError,
)
from .method.config import ReAttentionConfig, config_options

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DOCUMENT, EXIT_MODEL, EXIT_CAPACITY = 0, 1, 2, 3, 4, 5
SAMPLE = Path(__file__).parent / "data" / "pride_and_prejudice_1-3.txt"
DEMO_QUESTION = "Where did Mrs. Hill keep the key of the library?"
DEMO_CONFIG = dict(window=1024)
PROMPT = "{document}\n\nAnswer the question using the document above.\nQuestion: {question}"


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and ReAttention settings")
    g.add_argument(
        "--model", default=None, help="Hub id or local folder (default: embedded SmolLM2-135M-Instruct)"
    )
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32")
    for option in config_options():  # one flag per ReAttentionConfig field, typed as the field is
        default = "from the model's window" if option.default is None else option.default
        says_default = "default" in option.help  # the help names a default of its own
        g.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=option.type,
            choices=option.choices,
            default=None,  # unset flags leave the config's own default
            help=(option.help if says_default else f"{option.help} (default: {default})").replace("%", "%%"),
        )


def _config(a: argparse.Namespace) -> ReAttentionConfig:
    """The :class:`ReAttentionConfig` of the flags given (the others keep the config's defaults)."""
    given = {o.name: getattr(a, o.name) for o in config_options() if getattr(a, o.name) is not None}
    return ReAttentionConfig(**given)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reattn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer a question over one or more PDF/text files")
    ask.add_argument("files", nargs="+", help="PDF or text files, then the question as the last argument")
    ask.add_argument("--password", default=None, help="password of an encrypted PDF")
    ask.add_argument("--max-tokens", type=int, default=256, help="longest answer, in tokens")
    ask.add_argument("--temperature", type=float, default=0.0)
    ask.add_argument("--cite", action="store_true", help="print the pages the answer drew on")
    ask.add_argument("--no-progress", action="store_true", help="no progress bars")
    _config_args(ask)
    info = sub.add_parser(
        "info", help="pages, tokens, memory and time for this machine, before any model work"
    )
    info.add_argument("files", nargs="+")
    info.add_argument("--password", default=None)
    _config_args(info)
    demo = sub.add_parser("demo", help="answer a question over the bundled public-domain sample")
    demo.add_argument("--question", default=DEMO_QUESTION)
    demo.add_argument("--no-progress", action="store_true")
    return p


def _load(files: list[str], password: str | None, progress: bool) -> Any:
    from .documents import load_document, load_documents

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="page", desc="extract", leave=False)

    def on_page(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        if len(files) == 1:
            return load_document(files[0], password=password, on_page=on_page)
        return load_documents(files, password=password, on_page=on_page)
    finally:
        if bar is not None:
            bar.close()


def cmd_info(a: argparse.Namespace) -> int:
    from .runtime.engine import Engine
    from .runtime.models import load_config
    from .runtime.plan import make_plan

    doc = _load(a.files, a.password, progress=sys.stderr.isatty())
    engine = Engine(a.model, device=a.device, dtype=a.dtype, config=_config(a), progress=False)
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


def _answer(engine: Any, prompt: str, max_tokens: int, temperature: float, cite: bool) -> Any:
    from .runtime.sampling import SamplingParams

    def show(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    t0 = time.perf_counter()
    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature)
    completion = engine.generate(prompt, params, cite_sources=cite).complete(on_delta=show)
    sys.stdout.write("\n")
    dt = time.perf_counter() - t0
    print(
        f"[{completion.prompt_tokens:,} prompt tokens, prefill {completion.prefill_seconds:.1f} s "
        f"({completion.prompt_tokens / max(completion.prefill_seconds, 1e-9):,.0f} tok/s); "
        f"{completion.completion_tokens} answer tokens in {completion.decode_seconds:.1f} s; total {dt:.1f} s]",
        file=sys.stderr,
    )
    if cite:
        from .runtime.citations import cited_pages

        pages = cited_pages(completion.citations)
        print("cited pages: " + (", ".join(map(str, pages)) if pages else "(none)"))
        for c in completion.citations:
            where = f"page {c.page}" if c.page is not None else f"chars {c.start}-{c.end}"
            src = f"{c.source}, " if c.source else ""
            print(f"  [{src}{where}] {c.score:.0%}: {c.snippet[:100]}")
    return completion


def cmd_ask(a: argparse.Namespace) -> int:
    from .runtime.engine import Engine

    if len(a.files) < 2:
        raise _Usage('ask needs at least one file and a question: reattn ask FILE [FILE...] "question"')
    *files, question = a.files
    progress = not a.no_progress and sys.stderr.isatty()
    engine = Engine(a.model, device=a.device, dtype=a.dtype, config=_config(a), progress=progress)
    engine.config  # noqa: B018  (validates model support and config before reading files)
    doc = _load(files, a.password, progress)
    prompt = PROMPT.format(document=str(doc), question=question)
    n = len(engine.encode(prompt)[0])
    engine.check_fits(n, a.max_tokens)  # before loading weights
    _answer(engine, prompt, a.max_tokens, a.temperature, a.cite)
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from .runtime.engine import Engine

    text = SAMPLE.read_text(encoding="utf-8")
    engine = Engine(None, config=ReAttentionConfig(**DEMO_CONFIG), progress=not a.no_progress)
    c = engine.config
    print(
        f"Sample: {SAMPLE.name} ({engine.count_tokens(text):,} tokens), model {engine.model_name} with its window "
        f"shrunk to {c.window} tokens (local {c.local_size}), so most of the text lies outside it.",
        file=sys.stderr,
    )
    print(f"Question: {a.question}", file=sys.stderr)
    _answer(engine, PROMPT.format(document=text, question=a.question), 64, 0.0, cite=False)
    return EXIT_OK


class _Usage(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    handlers = {"ask": cmd_ask, "info": cmd_info, "demo": cmd_demo}
    try:
        return handlers[a.command](a)
    except _Usage as e:
        parser.print_usage(sys.stderr)
        print(f"reattn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DocumentError as e:
        print(f"reattn: cannot read the document: {e}", file=sys.stderr)
        return EXIT_DOCUMENT
    except (UnsupportedModelError, ConfigError) as e:
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


if __name__ == "__main__":
    raise SystemExit(main())
