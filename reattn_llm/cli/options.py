"""The ``reattn`` command's options and what it does with them before any model work: argparse
types that refuse bad values as usage errors, the files read (with a page range), the library's
messages reworded with the command's flags, and what to say when a model cannot be fetched."""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..errors import ReAttentionError
from ..method.config import ReAttentionConfig
from ..method.options import config_options

DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "half", "fp32", "float32", "float")
#: The library's keyword arguments that document errors name, and this command's flags for them.
FLAGS = {
    "timeout_s": "--timeout",
    "max_pages": "--max-pages",
    "max_chars": "--max-chars",
    "password": "--password",
    "device": "--device",
    "dtype": "--dtype",
}


def number(kind: type, low: float, what: str) -> Any:
    """An argparse type: a ``kind`` number of at least ``low`` (``what`` names the rule)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text}: must be {what}")
        return value

    return parse


def device_type(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda, cuda:N or mps")
    return text


def page_range_type(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    first, last = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    if not m or not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"{text!r}: give a page or a range of pages, such as 7 or 3-10")
    return first, last


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reattn-llm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and ReAttention settings")
    g.add_argument(
        "--model", default=None, help="Hub id or local folder (default: embedded SmolLM2-135M-Instruct)"
    )
    g.add_argument("--device", default="auto", type=device_type, help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument("--dtype", default="auto", choices=DTYPES, help="default: bf16 on CUDA, fp32 on CPU")
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


def answer_args(p: argparse.ArgumentParser, system_help: str = "a system prompt") -> None:
    """The flags of a command that answers questions: length, temperature, system prompt, progress
    bars and the document store."""
    p.add_argument(
        "--max-tokens", type=number(int, 1, "a positive integer"), default=256, help="longest answer"
    )
    p.add_argument("--temperature", type=number(float, 0.0, "0 (greedy) or more"), default=0.0)
    p.add_argument("--system", default=None, help=system_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-cache", action="store_true", help="do not keep or reuse prefilled documents on disk")


def document_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the files")
    g.add_argument("--password", default=None, help="password of an encrypted PDF")
    g.add_argument(
        "--pages", type=page_range_type, default=None, metavar="N-M", help="read only these PDF pages"
    )
    positive = number(int, 1, "a positive integer")
    g.add_argument("--max-pages", type=positive, default=None, help="read at most the first N PDF pages")
    g.add_argument(
        "--timeout", type=number(float, 1e-3, "positive"), default=None, help="seconds to read one PDF (120)"
    )
    g.add_argument(
        "--max-chars",
        type=number(int, 0, "0 (no limit) or more"),
        default=None,
        help="most characters of text per file (default 20,000,000; 0: no limit)",
    )


def make_engine(a: argparse.Namespace, **settings: Any) -> Any:
    """``Engine(a.model, device=a.device, dtype=a.dtype, **settings)``, the model's support and
    the config checked from the model's config (no weights); a device or dtype this machine cannot
    use is a usage error."""
    from ..runtime.engine import Engine

    try:
        engine = Engine(a.model, device=a.device, dtype=a.dtype, **settings)
    except ReAttentionError:
        raise
    except ValueError as e:  # device / dtype (resolve_device, resolve_dtype)
        raise UsageError(str(e)) from e
    engine.config  # noqa: B018  (the model's support and the config, from the model's config only)
    return engine


def document_store(a: argparse.Namespace) -> Any:
    """The document store of the flags: none with ``--no-cache`` (or ``REATTN_LLM_NO_CACHE=1``)."""
    from ..runtime.prefix_store import DocumentStore

    return None if a.no_cache else DocumentStore.default()


def config_of(a: argparse.Namespace) -> ReAttentionConfig:
    """The :class:`ReAttentionConfig` of the flags given (the others keep the config's defaults)."""
    given = {o.name: getattr(a, o.name) for o in config_options() if getattr(a, o.name) is not None}
    return ReAttentionConfig(**given)


def load_files(files: list[str], a: argparse.Namespace, progress: bool) -> Any:
    from ..documents import DEFAULT_MAX_CHARS, DEFAULT_TIMEOUT_S, load_document
    from ..documents.document import join_documents

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit="page", desc="extract", leave=False)

    def on_page(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    last = a.pages[1] if a.pages else None
    max_pages = min(p for p in (a.max_pages, last) if p) if a.max_pages or last else None
    options = dict(
        password=a.password,
        max_pages=max_pages,
        timeout_s=a.timeout or DEFAULT_TIMEOUT_S,
        max_chars=DEFAULT_MAX_CHARS if a.max_chars is None else (a.max_chars or None),
        on_page=on_page,
    )
    try:
        docs = [page_range(load_document(f, **options), a.pages) for f in files]
    finally:
        if bar is not None:
            bar.close()
    return docs[0] if len(docs) == 1 else join_documents(docs)


def page_range(doc: Any, pages: tuple[int, int] | None) -> Any:
    """``doc`` cut to ``pages`` (first, last), keeping its page numbers in the anchors."""
    from ..documents import Document, PageSpan

    if pages is None:
        return doc
    first, last = pages
    if doc.metadata.get("format") != "pdf":
        raise UsageError(f"--pages {first}-{last}: {doc.source} is a text file; --pages applies to PDFs.")
    spans = [s for s in doc.pages if first <= s.number <= last]
    if not spans:
        raise UsageError(f"--pages {first}-{last}: {doc.source} has {len(doc.pages)} pages.")
    parts: list[str] = []
    kept: list[PageSpan] = []
    offset = 0
    for span in spans:
        anchor = f"{'' if not parts else chr(10) * 2}[Page {span.number}]\n"
        body = doc.text[span.start : span.end]
        parts += [anchor, body]
        kept.append(PageSpan(span.number, offset + len(anchor), offset + len(anchor) + len(body)))
        offset += len(anchor) + len(body)
    meta = {**doc.metadata, "pages": len(kept), "page_range": [first, last]}
    return Document("".join(parts), kept, doc.source, meta, list(doc.warnings))


class UsageError(Exception):
    """A usage error found after parsing (exit 2, with the command's usage line)."""


def cli_words(message: str) -> str:
    """A library message with its keyword arguments (``timeout_s=``...) named as this command's flags."""
    message = message.replace("max_chars=None", "--max-chars 0").replace(
        " to load_document (or --password on the command line)", ""
    )
    for kwarg, flag in FLAGS.items():
        message = re.sub(rf"\b{kwarg}=(?=[\d'])", f"{flag} ", message)
        message = re.sub(rf"`?\b{kwarg}=(\.\.\.)?`?", flag, message)
    return message.replace(" (or --password)", "")


def fetch_problem(error: BaseException) -> str | None:
    """What went wrong when a model could not be fetched (network, offline mode, cache folder), or None."""
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    names = {cls.__name__ for x in seen for cls in type(x).__mro__}
    if names & {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "ConnectError",
        "ConnectionError",
        "Timeout",
    }:
        return "the Hub cannot be reached (offline, or no network) and the model is not in the local cache"
    if names & {"PermissionError"}:
        return "a cache folder cannot be used (permission denied)"
    return None


def fetch_message(error: BaseException, problem: str, model: str | None) -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE as where
    except ImportError:  # pragma: no cover  (transformers depends on it)
        where = "the Hugging Face cache"
    return (
        f"reattn: cannot get the model {model or 'SmolLM2-135M-Instruct (embedded)'}: {problem} ({where}). Connect once to download it "
        f"(or set HF_HOME / REATTN_LLM_CACHE to a folder you can write), or pass a local folder with --model.\n"
        f"  details: {str(error).splitlines()[0]}"
    )
