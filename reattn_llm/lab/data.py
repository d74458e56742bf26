"""Sample construction for the notebooks and benchmarks: where the data is, and documents built from it.

* :func:`data_folder` / :func:`data_file`: the data folder (``$REATTN_DATA``, else a default the
  caller passes) and one file in it. Nothing here knows where the repository is: a notebook or a
  benchmark passes the folder it expects (the notebooks pass the data folder beside the repository).
* :func:`excerpt`: some pages of a loaded document, each behind its own ``[Page N]`` anchor.
* :func:`plant_fact`: a copy of a document with one sentence inserted into one page, to ask about
  something the model cannot know from its training.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..documents import Document, PageSpan

__all__ = ["DATA_ENV", "data_file", "data_folder", "excerpt", "plant_fact"]

#: Folder holding the PDFs and texts (``pdfs/`` and ``texts/`` below it, or the files themselves).
DATA_ENV = "REATTN_DATA"


def data_folder(default: str | os.PathLike[str] | None = None) -> Path:
    """``$REATTN_DATA`` when set, else ``default``: the folder holding the sample PDFs and texts.

    Raises:
        FileNotFoundError: neither is given, or the folder does not exist; the message names
            ``REATTN_DATA``, the variable to set.
    """
    chosen = os.environ.get(DATA_ENV) or default
    if chosen is None:
        raise FileNotFoundError(
            f"No data folder: set {DATA_ENV} to the folder holding the sample PDFs and texts "
            "(its pdfs/ and texts/ folders, or the files themselves)."
        )
    folder = Path(chosen).expanduser()
    if not folder.is_dir():
        origin = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "the default"
        raise FileNotFoundError(
            f"The data folder {folder} ({origin}) does not exist: set {DATA_ENV} to the folder holding "
            "the sample PDFs and texts (its pdfs/ and texts/ folders, or the files themselves)."
        )
    return folder


def data_file(name: str, folder: str | os.PathLike[str]) -> Path:
    """The file ``name`` in ``folder`` or in its ``pdfs/`` and ``texts/`` sub-folders."""
    root = Path(folder)
    for candidate in (root, root / "pdfs", root / "texts"):
        if (candidate / name).is_file():
            return candidate / name
    raise FileNotFoundError(
        f"{name} is not in {root} (nor in its pdfs/ or texts/ folders): set {DATA_ENV} to the folder with it."
    )


def excerpt(doc: Document, first_page: int, last_page: int) -> Document:
    """Pages ``first_page..last_page`` (inclusive, 1-based, their own numbers kept) of ``doc``,
    each still introduced by its ``[Page N]`` anchor, as a new :class:`Document`."""
    spans = [s for s in doc.pages if first_page <= s.number <= last_page]
    if not spans:
        raise ValueError(f"{doc.source} has no pages {first_page}-{last_page} (it has {len(doc.pages)}).")
    parts: list[str] = []
    out: list[PageSpan] = []
    offset = 0
    for s in spans:
        anchor = f"[Page {s.number}]\n"
        body = doc.text[s.start : s.end]
        if parts:
            parts.append("\n\n")
            offset += 2
        parts += [anchor, body]
        out.append(PageSpan(s.number, offset + len(anchor), offset + len(anchor) + len(body), s.source))
        offset += len(anchor) + len(body)
    meta = {**doc.metadata, "pages": len(out), "excerpt": (first_page, last_page)}
    return Document("".join(parts), out, doc.source, meta, list(doc.warnings))


def plant_fact(doc: Document, fact: str, page: int, where: float = 0.5) -> Document:
    """A copy of ``doc`` with the sentence ``fact`` inserted as a line of its own into page
    ``page``, at the line break nearest to ``where`` (0 = the page's start, 1 = its end)."""
    index = next((i for i, s in enumerate(doc.pages) if s.number == page), None)
    if index is None:
        raise ValueError(f"{doc.source} has no page {page}.")
    span = doc.pages[index]
    body = doc.text[span.start : span.end]
    target = int(len(body) * min(max(where, 0.0), 1.0))
    breaks = [i + 1 for i, ch in enumerate(body) if ch == "\n"] or [len(body)]
    cut = span.start + min(breaks, key=lambda b: abs(b - target))
    line = fact.strip() + "\n"
    if cut > 0 and doc.text[cut - 1] != "\n":
        line = "\n" + line
    text = doc.text[:cut] + line + doc.text[cut:]
    shift = len(line)
    pages = []
    for i, s in enumerate(doc.pages):
        if i == index:
            s = dataclasses.replace(s, end=s.end + shift)
        elif s.start >= cut:
            s = dataclasses.replace(s, start=s.start + shift, end=s.end + shift)
        pages.append(s)
    planted = {**doc.metadata, "planted": {"fact": fact, "page": page}}
    return Document(text, pages, doc.source, planted, list(doc.warnings))
