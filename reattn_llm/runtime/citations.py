"""Citations: which parts of the document the answer's attention drew on most.

While an answer is decoded, a few layers' attention over their whole scope (global rows,
selected spans and the local window) is summed per prompt token
(:class:`~reattn_llm.method.state.SelectionRecorder`). Here that mass becomes character ranges
of the document part of the prompt (from its first ``[Page N]`` anchor, or its start, to where
the question begins), scored and ranked, each with the page (``[Page N]`` anchor) and file
(``=== name ===`` header) of :func:`~reattn_llm.load_document`'s text that contains it. When no
attribution can be made the result is empty and :attr:`Citations.note` says why.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

import torch

_PAGE = re.compile(r"\[Page (\d+)\]")
_FILE = re.compile(r"^=== (.+) ===$", re.MULTILINE)

#: Why a requested attribution is empty when nothing was recorded at all.
NOT_RECORDED = (
    "no attribution: nothing was recorded while the answer was decoded (an answer of one token "
    "has no decode step to attribute)"
)


class Citations(list):  # type: ignore[type-arg]
    """The ranked :class:`Citation` s of one answer (a list); when it is empty, :attr:`note` says
    plainly why no attribution is available."""

    def __init__(self, items: Any = (), note: str | None = None) -> None:
        super().__init__(items)
        self.note = note


@dataclass(frozen=True)
class Citation:
    """A character range of the prompt the answer drew on, with its share of the salience."""

    start: int
    end: int
    score: float
    page: int | None
    source: str | None
    snippet: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 4),
            "page": self.page,
            "source": self.source,
            "snippet": self.snippet,
        }


def _anchors(pattern: re.Pattern[str], text: str) -> tuple[list[int], list[str]]:
    """Start offsets and captured values of every match of ``pattern`` (page or file anchors)."""
    starts, values = [], []
    for m in pattern.finditer(text):
        starts.append(m.start())
        values.append(m.group(1))
    return starts, values


def salience(counts: torch.Tensor, width: int = 129) -> torch.Tensor:
    """How much more a token was selected than its neighbourhood: ``counts`` minus their moving
    average over ``width`` tokens, clipped at 0.

    Raw counts are biased towards some places whatever the question (the tokens just after the
    global window attract many top-k hits, like attention sinks); a span the answer really drew
    on stands out as a plateau above its surroundings.
    """
    c = counts.float()[None, None]
    w = min(width, 2 * (c.shape[-1] // 2) - 1) if c.shape[-1] > 2 else 1
    avg = torch.nn.functional.avg_pool1d(c, w, stride=1, padding=w // 2, count_include_pad=False)
    return (c - avg).clamp(min=0)[0, 0]


def cite(
    text: str,
    tokenizer: Any,
    ids: list[int],
    counts: torch.Tensor,
    top: int = 5,
    question: int | None = None,
) -> Citations:
    """Rank contiguous runs of salient document tokens (see :func:`salience`).

    Args:
        text: the exact prompt text that was tokenized into ``ids``.
        counts: ``[len(ids)]`` attention mass per prompt token.
        top: how many ranges to return.
        question: the token where the question starts (it and what follows are not the document).
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if list(enc["input_ids"]) != list(ids):
        return Citations(
            note="no attribution: the prompt's text does not tokenize back to the tokens the model read"
        )
    page_starts, page_vals = _anchors(_PAGE, text)
    file_starts, file_vals = _anchors(_FILE, text)
    lo = 0
    if page_starts or file_starts:  # the document starts at its first anchor (a template precedes it)
        first = min(page_starts[:1] + file_starts[:1])
        lo = next((t for t, (a, _) in enumerate(offsets) if a >= first), len(ids))
    hi = len(ids) if question is None else min(question, len(ids))
    counts = counts.float().clone()
    counts[:lo] = 0
    counts[hi:] = 0
    if counts.numel() == 0 or float(counts.sum()) == 0:
        return Citations(note=NOT_RECORDED)
    counts = salience(counts)
    if float(counts.max()) <= 0:
        return Citations(note="no attribution: no part of the document stood out in the answer's attention")
    counts = torch.where(counts >= 0.25 * counts.max(), counts, torch.zeros_like(counts))
    total = float(counts.sum())
    nz = (counts > 0).tolist()
    runs: list[tuple[int, int, float]] = []
    i = 0
    while i < len(nz):
        if nz[i]:
            j = i
            while j + 1 < len(nz) and nz[j + 1]:
                j += 1
            runs.append((i, j + 1, float(counts[i : j + 1].sum())))
            i = j + 1
        else:
            i += 1
    runs.sort(key=lambda r: -r[2])
    out = Citations()
    runs = [r for r in runs if text[offsets[r[0]][0] : offsets[r[1] - 1][1]].strip()]  # not bare line breaks
    for a, b, score in runs[:top]:
        start, end = offsets[a][0], offsets[b - 1][1]
        p = bisect.bisect_right(page_starts, start) - 1
        f = bisect.bisect_right(file_starts, start) - 1
        out.append(
            Citation(
                start=start,
                end=end,
                score=score / total,
                page=int(page_vals[p]) if p >= 0 else None,
                source=file_vals[f] if f >= 0 else None,
                snippet=" ".join(text[start:end].split())[:200],
            )
        )
    return out


def cited_pages(citations: list[Citation]) -> list[int]:
    """Pages in order of the total score of their citations (best first)."""
    score: dict[int, float] = {}
    for c in citations:
        if c.page is not None:
            score[c.page] = score.get(c.page, 0.0) + c.score
    return sorted(score, key=lambda p: -score[p])
