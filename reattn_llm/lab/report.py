"""Checks and tables over the results of :mod:`reattn_llm.lab.evaluation` and of the wrappers.

* checks: :func:`flatness` and :func:`gap` (perplexity bands relative to a band or to another
  mode), :func:`passkey_counts` and :func:`passkey_found`;
* tables: :func:`markdown_table`, with rows from :func:`perplexity_rows`, :func:`passkey_rows`,
  :func:`answer_row` (one answer of the engine, LangChain or LlamaIndex) and :func:`citation_rows`.

IPython is imported inside :func:`markdown_table` only, and only when it is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "MODE_LABELS",
    "answer_row",
    "citation_rows",
    "flatness",
    "gap",
    "markdown_table",
    "passkey_counts",
    "passkey_found",
    "passkey_rows",
    "perplexity_rows",
    "tokens_label",
]

#: How the three attention modes are named in tables and plots.
MODE_LABELS = {
    "full": "stock (full attention)",
    "streaming": "streaming (global + local)",
    "reattention": "ReAttention",
}


def tokens_label(n: int) -> str:
    """``8192`` -> ``"8K"``; a count that is not a whole number of K keeps its digits (``"1,000"``)."""
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def flatness(results: dict[str, Any], mode: str, reference: str, beyond: int) -> dict[str, float]:
    """Each band of ``mode`` that starts at or after position ``beyond``, as its perplexity's
    relative change from the ``reference`` band (``+0.08`` = 8% higher)."""
    bands = results["modes"][mode]["bands"]
    ref = bands[reference]
    starts = {name: a for name, (a, _) in zip(bands, results["bands"], strict=False)}
    return {name: ppl / ref - 1 for name, ppl in bands.items() if starts.get(name, 0) >= beyond}


def gap(results: dict[str, Any], mode: str, baseline: str, beyond: int) -> dict[str, float]:
    """Each band of ``mode`` that starts at or after position ``beyond``, as its perplexity's
    relative change from the same band of the ``baseline`` mode."""
    ours, theirs = results["modes"][mode]["bands"], results["modes"][baseline]["bands"]
    starts = {name: a for name, (a, _) in zip(ours, results["bands"], strict=False)}
    return {name: ppl / theirs[name] - 1 for name, ppl in ours.items() if starts.get(name, 0) >= beyond}


def passkey_counts(grid: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per mode: ``found`` / ``total`` trials, and ``by_depth`` / ``by_length`` found counts."""
    out = {}
    for mode, r in grid["modes"].items():
        rows = r["rows"]
        out[mode] = {
            "found": sum(x["found"] for x in rows),
            "total": len(rows),
            "by_depth": {d: sum(x["found"] for x in rows if x["depth"] == d) for d in grid["depths"]},
            "by_length": {n: sum(x["found"] for x in rows if x["length"] == n) for n in grid["lengths"]},
        }
    return out


def passkey_found(
    grid: dict[str, Any], mode: str, *, depths: Sequence[float] | None = None, min_length: int = 0
) -> tuple[int, int]:
    """``(found, trials)`` of ``mode``, over the given depths (default: all) and lengths >= ``min_length``."""
    rows = [
        r
        for r in grid["modes"][mode]["rows"]
        if r["length"] >= min_length and (depths is None or r["depth"] in depths)
    ]
    return sum(r["found"] for r in rows), len(rows)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """``rows`` as a Markdown table (an IPython ``Markdown`` object when IPython is there)."""
    columns = list(columns or (rows[0].keys() if rows else []))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - outside IPython
        return text
    return Markdown(text)


def answer_row(question: str, result: Any, seconds: float) -> dict[str, Any]:
    """One table row for an answer: its question, prompt and answer tokens, prefill and decode
    seconds, the wall time ``seconds`` and the cited pages. ``result`` is the engine's
    :class:`~reattn_llm.runtime.engine.Completion`, a LangChain ``AIMessage`` of
    :class:`ChatReAttention` or a LlamaIndex ``Response`` of ``WholeDocumentQueryEngine``."""
    if hasattr(result, "prompt_tokens"):  # Completion
        prompt, answer = result.prompt_tokens, result.completion_tokens
        prefill, decode = result.prefill_seconds, result.decode_seconds
        from ..runtime.citations import cited_pages

        pages = cited_pages(result.citations)
    elif hasattr(result, "usage_metadata"):  # AIMessage
        meta = result.response_metadata
        prompt, answer = result.usage_metadata["input_tokens"], result.usage_metadata["output_tokens"]
        prefill, decode, pages = meta["prefill_seconds"], meta["decode_seconds"], meta.get("cited_pages", [])
    else:  # LlamaIndex Response
        meta = result.metadata
        prompt, answer = meta["prompt_tokens"], meta["completion_tokens"]
        prefill, decode, pages = meta["prefill_seconds"], meta["decode_seconds"], meta.get("cited_pages", [])
    return {
        "question": question,
        "prompt tokens": f"{prompt:,}",
        "prefill s": prefill,
        "prefill tok/s": f"{prompt / max(prefill, 1e-9):,.0f}",
        "answer tokens": answer,
        "decode s": decode,
        "total s": seconds,
        "cited pages": ", ".join(map(str, pages)) or "-",
    }


def citation_rows(result: Any, width: int = 110) -> list[dict[str, Any]]:
    """The cited passages of a ``ChatReAttention`` answer (``cite=True``) or of a
    ``WholeDocumentQueryEngine`` response (its source nodes): page, share of the salience, text."""
    if hasattr(result, "source_nodes"):
        items = [(n.node.metadata.get("page"), n.score, n.node.get_content()) for n in result.source_nodes]
    else:
        items = [(c["page"], c["score"], c["snippet"]) for c in result.response_metadata.get("citations", [])]
    return [
        {"page": page, "share": f"{score:.0%}", "text": " ".join(text.split())[:width]}
        for page, score, text in items
    ]


def perplexity_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per mode: perplexity per band, largest RoPE position, seconds."""
    rows = []
    for mode, r in results["modes"].items():
        row: dict[str, Any] = {"mode": MODE_LABELS.get(mode, mode)}
        row.update({name: round(v, 1) for name, v in r["bands"].items()})
        row["largest position"] = r["largest_position"]
        row["seconds"] = round(r["seconds"], 1)
        rows.append(row)
    return rows


def passkey_rows(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per mode: found / depths per prompt length, largest RoPE position, seconds."""
    counts = passkey_counts(grid)
    rows = []
    for mode, r in grid["modes"].items():
        row: dict[str, Any] = {"mode": MODE_LABELS.get(mode, mode)}
        for n in grid["lengths"]:
            row[tokens_label(n)] = f"{counts[mode]['by_length'][n]}/{len(grid['depths'])}"
        row["largest position"] = r["largest_position"]
        row["seconds"] = round(r["seconds"], 1)
        rows.append(row)
    return rows
