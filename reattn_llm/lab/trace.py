"""Where given cache rows stand in each layer's scope: a diagnostic for retrieval misses.

:class:`RowTrace` is a :class:`~reattn_llm.method.state.ScopeObserver`. Hooked into a patched model
(:func:`traced`), it records, for every layer and every query chunk, how many of the watched rows
(a needle's value, say) are in the chunk's scope and how much attention the chunk's last query gives
them. :func:`text_rows` finds the rows of some strings in a prompt. Records stay on the device until
:attr:`RowTrace.entries` is read (no host sync per layer), but each costs a few small launches: this
is for measuring, not for serving.

    rows = text_rows(tok, text, ["9375710"])
    trace = RowTrace(rows)
    with traced(model, trace):
        ...  # prefill and decode
    trace.summary()  # one entry per forward: layers with all / any of the rows in scope, attention mass
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..method.selection import Scope
from ..method.state import PatchState, last_query_probs


@dataclass
class ScopeEntry:
    """One layer's view of the watched rows for one query chunk.

    Attributes:
        layer: index among the patched layers.
        queries: the chunk's queries (1 for a decode step).
        in_scope: watched rows among the scope's keys.
        mass: attention probability the chunk's last query gives the watched rows, mean over heads.
        top_mass: the same, largest over heads (a retrieval head reads what the mean hides).
    """

    layer: int
    queries: int
    in_scope: int
    mass: float
    top_mass: float


class RowTrace:
    """Records a :class:`ScopeEntry` per layer and query chunk for the cache rows ``rows``.

    Args:
        rows: absolute cache rows to watch (token indices of the prompt when the cache starts empty).
    """

    def __init__(self, rows: Sequence[int]) -> None:
        if not rows:
            raise ValueError(
                "RowTrace needs at least one row to watch: pass the rows of the text you look for."
            )
        self.rows = sorted(set(int(r) for r in rows))
        self._entries: list[ScopeEntry] = []
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # layer, queries, [2 + H] on the device
        self._rows: torch.Tensor | None = None

    @property
    def entries(self) -> list[ScopeEntry]:
        """One :class:`ScopeEntry` per layer and query chunk, in the order they ran."""
        if self._pending:
            rows = torch.stack([t for _, _, t in self._pending]).double().cpu()  # one sync for all
            for (layer, queries, _), r in zip(self._pending, rows, strict=True):
                per_head = r[1:]
                self._entries.append(
                    ScopeEntry(layer, queries, int(r[0]), float(per_head.mean()), float(per_head.max()))
                )
            self._pending.clear()
        return self._entries

    def __call__(
        self,
        layer: int,
        q: torch.Tensor,
        k_src: torch.Tensor,
        idx: torch.Tensor,
        scope: Scope,
        cos: torch.Tensor,
        sin: torch.Tensor,
        scale: float,
    ) -> None:
        dev = scope.gather_idx.device
        if self._rows is None or self._rows.device != dev:
            self._rows = torch.tensor(self.rows, dtype=torch.int64, device=dev)
        watched = torch.isin(scope.gather_idx[0], self._rows) & (scope.key_pos[0] >= 0)  # [N]
        probs = last_query_probs(q, k_src, idx, scope, cos, sin, scale)  # [H, N]
        per_head = (probs * watched).sum(dim=1)  # [H]
        record = torch.cat([watched.sum().to(per_head.dtype).reshape(1), per_head])
        self._pending.append((layer, q.shape[2], record.float()))

    def forwards(self) -> list[list[ScopeEntry]]:
        """The entries grouped by model forward (a forward's chunks all run inside each layer, so a
        new forward starts where the layer index falls back)."""
        out: list[list[ScopeEntry]] = []
        for e in self.entries:
            if not out or e.layer < out[-1][-1].layer:
                out.append([])
            out[-1].append(e)
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Per forward, from each layer's last chunk (whose last query predicts the next token):
        ``queries`` (the forward's), ``full`` / ``any`` (layers with all / some watched rows in scope),
        ``layers``, ``mass`` (mean over layers) and ``top_mass`` (largest over layers and heads)."""
        out = []
        n = len(self.rows)
        for fwd in self.forwards():
            last: dict[int, ScopeEntry] = {}
            queries: dict[int, int] = {}
            for e in fwd:
                last[e.layer] = e
                queries[e.layer] = queries.get(e.layer, 0) + e.queries
            ends = list(last.values())
            out.append(
                {
                    "queries": max(queries.values()),
                    "layers": len(ends),
                    "full": sum(e.in_scope == n for e in ends),
                    "any": sum(e.in_scope > 0 for e in ends),
                    "mass": round(sum(e.mass for e in ends) / len(ends), 4),
                    "top_mass": round(max(e.top_mass for e in ends), 4),
                }
            )
        return out


def trace_line(summary: list[dict[str, Any]]) -> str:
    """One line of :meth:`RowTrace.summary`: ``question F/A of N (mass, top) | steps F/A ...``, the
    last prompt forward then each decode step, as layers with all (F) / some (A) watched rows in scope."""
    prefill = [f for f in summary if f["queries"] > 1]
    steps = [f for f in summary if f["queries"] == 1]
    head = ""
    if prefill:
        q = prefill[-1]
        head = f"question {q['full']}/{q['any']} of {q['layers']} (mass {q['mass']:.3f}, top {q['top_mass']:.3f}) | "
    return head + "steps " + " ".join(f"{f['full']}/{f['any']}" for f in steps)


def patch_state(model: torch.nn.Module) -> PatchState:
    """The :class:`~reattn_llm.method.state.PatchState` of a model that :func:`reattn_llm.patch` patched."""
    for module in model.modules():
        state = getattr(module, "_reattn_state", None)
        if state is not None:
            return state
    raise ValueError(
        "the model is not patched: call reattn_llm.patch(model) (or load it through an Engine) first."
    )


@contextlib.contextmanager
def traced(model: torch.nn.Module, observer: Any) -> Iterator[Any]:
    """Call ``observer`` (a :class:`~reattn_llm.method.state.ScopeObserver`) from every patched layer of
    ``model`` for every query chunk inside the ``with`` block."""
    state = patch_state(model)
    state.observers.append(observer)
    try:
        yield observer
    finally:
        state.observers.remove(observer)


def text_rows(tokenizer: Any, text: str, needles: Sequence[str]) -> list[int]:
    """Token indices of ``text`` (tokenized without special tokens, as the engine does) that overlap any
    occurrence of any of ``needles``. Needs a fast tokenizer (offsets)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for needle in needles:
        start = text.find(needle)
        while needle and start >= 0:
            spans.append((start, start + len(needle)))
            start = text.find(needle, start + 1)
    return [
        i
        for i, (a, b) in enumerate(enc["offset_mapping"])
        if b > a and any(a < e and s < b for s, e in spans)
    ]
