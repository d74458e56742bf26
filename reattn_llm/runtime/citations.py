"""Citations: which parts of the prompt the answer's span selection drew on most.

While an answer is decoded, every layer's selection is counted per prompt token
(:class:`~reattn_llm.method.state.SelectionRecorder`). Here those counts become character ranges of
the prompt, scored and ranked, each with the page (``[Page N]`` anchor) and file
(``=== name ===`` header) of :func:`~reattn_llm.load_document`'s text that contains it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

import torch

_PAGE = re.compile(r"\[Page (\d+)\]")
_FILE = re.compile(r"^=== (.+) ===$", re.MULTILINE)


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


def cite(text: str, tokenizer: Any, ids: list[int], counts: torch.Tensor, top: int = 5) -> list[Citation]:
    """Rank contiguous runs of salient prompt tokens (see :func:`salience`).

    Args:
        text: the exact prompt text that was tokenized into ``ids``.
        counts: ``[len(ids)]`` selections per prompt token.
        top: how many ranges to return.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if list(enc["input_ids"]) != list(ids) or counts.numel() == 0 or float(counts.sum()) == 0:
        return []
    counts = salience(counts)
    if float(counts.max()) <= 0:
        return []
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
    page_starts, page_vals = _anchors(_PAGE, text)
    file_starts, file_vals = _anchors(_FILE, text)
    out = []
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
