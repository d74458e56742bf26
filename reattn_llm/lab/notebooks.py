"""What the notebooks in ``notebooks/`` call, so that they hold no logic of their own.

* sizes and data: :func:`notebook_size` (``$REATTN_NOTEBOOK_SIZE``: ``small`` on a CPU, ``full``
  on a GPU), :func:`data_file` (``$REATTN_DATA``, default ``<repo>/../shared/data``);
* documents: :func:`excerpt` (some pages of a loaded document) and :func:`plant_fact` (a sentence
  inserted into one page, to ask about something the model cannot know from training);
* measurements, as ``benchmarks/long_context.py`` makes them: :func:`run_perplexity` (perplexity
  by position band, one pass per attention mode) and :func:`run_passkey_grid` (passkey found or
  not, per mode, prompt length and depth);
* checks and pictures: :func:`flatness`, :func:`passkey_counts`, :func:`plot_perplexity_bands`,
  :func:`plot_passkey_heatmap`, :func:`markdown_table`.

matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..documents.reader import Document, PageSpan
from ..method.config import ReAttentionConfig

__all__ = [
    "DATA_ENV",
    "MODE_LABELS",
    "SIZE_ENV",
    "answer_row",
    "band_edges",
    "citation_rows",
    "data_dir",
    "data_file",
    "excerpt",
    "execute_notebook",
    "flatness",
    "gap",
    "load_default_model",
    "markdown_table",
    "mode_config",
    "notebook_size",
    "passkey_counts",
    "passkey_found",
    "passkey_rows",
    "perplexity_rows",
    "plant_fact",
    "plot_passkey_heatmap",
    "plot_perplexity_bands",
    "run_passkey_grid",
    "run_perplexity",
]

#: ``small`` (CPU, CI: a few pages, a shrunk window) or ``full`` (GPU: whole documents, default config).
SIZE_ENV = "REATTN_NOTEBOOK_SIZE"
#: Folder holding the PDFs and texts (``pdfs/`` and ``texts/`` below it, or the files themselves).
DATA_ENV = "REATTN_DATA"
#: How the three attention modes are named in tables and plots.
MODE_LABELS = {
    "full": "stock (full attention)",
    "streaming": "streaming (global + local)",
    "reattention": "ReAttention",
}
_COLORS = {"full": "tab:red", "streaming": "tab:orange", "reattention": "tab:blue"}
_REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Sizes and data
# ---------------------------------------------------------------------------------------------


def notebook_size() -> str:
    """``$REATTN_NOTEBOOK_SIZE`` (``small`` or ``full``); unset: ``full`` with a CUDA GPU, else ``small``."""
    size = os.environ.get(SIZE_ENV, "").strip().lower()
    if not size:
        import torch

        return "full" if torch.cuda.is_available() else "small"
    if size not in ("small", "full"):
        raise ValueError(f"{SIZE_ENV}={size!r}: use 'small' (CPU, a few pages) or 'full' (GPU, whole books).")
    return size


def data_dir() -> Path:
    """``$REATTN_DATA``, else ``shared/data`` beside the repository (independent of the working directory)."""
    return Path(os.environ.get(DATA_ENV) or _REPO.parent / "shared" / "data")


def data_file(name: str) -> Path:
    """The data file ``name``, looked up in :func:`data_dir` and its ``pdfs/`` and ``texts/`` folders."""
    root = data_dir()
    for folder in (root, root / "pdfs", root / "texts"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{name} is not in {root} (nor in its pdfs/ or texts/ folders): set {DATA_ENV} to the folder with it."
    )


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


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
    return Document("".join(parts), out, doc.source, meta)


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
    return Document(text, pages, doc.source, {**doc.metadata, "planted": {"fact": fact, "page": page}})


# ---------------------------------------------------------------------------------------------
# Measurements (the same calls as benchmarks/long_context.py)
# ---------------------------------------------------------------------------------------------


def load_default_model(device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """The embedded default model (SmolLM2-135M-Instruct), unpatched, and its tokenizer."""
    from ..runtime.models import load_model, resolve_device, resolve_dtype

    dev = resolve_device(device)
    return load_model(None, dev, resolve_dtype(dtype, dev))


def mode_config(mode: str, **sizes: int) -> ReAttentionConfig:
    """The config of one attention mode with the given sizes (streaming keeps no spans)."""
    if mode == "streaming":
        sizes = {k: v for k, v in sizes.items() if k != "max_spans"}
    return ReAttentionConfig(mode=mode, **sizes)  # type: ignore[arg-type]


def band_edges(window: int, tokens: int) -> list[tuple[int, int]]:
    """Position bands for perplexity: ``[0, W/4)``, ``[W/4, W)``, then doubling from the window
    ``W`` (``[W, 2W)``, ``[2W, 4W)``, ...) to the end of a ``tokens``-long text."""
    bands = [(0, window // 4), (window // 4, window)]
    a = window
    while a < tokens - 1:
        bands.append((a, 2 * a))
        a *= 2
    last = bands[-1]
    bands[-1] = (last[0], 10**12)
    return bands


def _sync(model: Any) -> None:
    if model.device.type == "cuda":
        import torch

        torch.cuda.synchronize(model.device)


def run_perplexity(
    model: Any,
    tokenizer: Any,
    text_path: str | os.PathLike[str],
    *,
    modes: Sequence[str] = ("full", "streaming", "reattention"),
    sizes: dict[str, int] | None = None,
    bands: Sequence[tuple[int, int]] | None = None,
    max_tokens: int = 0,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Teacher-forced perplexity of a text by position band, once per attention mode (the model
    is patched for each mode and restored afterwards).

    Returns ``{"tokens", "window", "bands": [[a, b], ...], "modes": {mode: {"bands": {name: ppl},
    "seconds", "largest_position"}}}``. ``bands`` default: :func:`band_edges` of the model's window
    (or ``sizes["window"]``).
    """
    from ..method.patch import model_window, patch
    from .evaluation import perplexity_by_band, token_nll

    text = Path(text_path).read_text(encoding="utf-8")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if max_tokens:
        ids = ids[:, :max_tokens]
    ids = ids.to(model.device)
    sizes = dict(sizes or {})
    window = sizes.get("window") or model_window(model.config)
    bands = list(bands or band_edges(window, ids.shape[1]))
    out: dict[str, Any] = {
        "text": Path(text_path).name,
        "tokens": int(ids.shape[1]),
        "window": window,
        "bands": [list(b) for b in bands],
        "modes": {},
    }
    for mode in modes:
        handle = patch(model, mode_config(mode, **sizes))
        try:
            t0 = time.perf_counter()
            nll = token_nll(model, ids, chunk)
            _sync(model)
            seconds = time.perf_counter() - t0
            pos = handle.state.largest_position() if handle.state is not None else ids.shape[1] - 1
        finally:
            handle.unpatch()
        out["modes"][mode] = {
            "bands": perplexity_by_band(nll, bands),
            "seconds": seconds,
            "largest_position": pos,
        }
    return out


def run_passkey_grid(
    model: Any,
    tokenizer: Any,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    modes: Sequence[str] = ("full", "streaming", "reattention"),
    sizes: dict[str, int] | None = None,
    chunk: int = 1024,
    seed: int = 0,
) -> dict[str, Any]:
    """Passkey retrieval for every (mode, length, depth): a random five-digit key hidden at
    ``depth`` of a ``length``-token prompt, found when the greedy answer contains it.

    Returns ``{"lengths", "depths", "modes": {mode: {"rows": [{length, tokens, depth, passkey,
    answer, found, seconds}], "largest_position", "seconds"}}}``. Every mode sees the same keys.
    """
    from ..method.patch import patch
    from .evaluation import passkey_trial, random_passkey

    sizes = dict(sizes or {})
    rng = random.Random(seed)
    keys = {(n, d): random_passkey(rng) for n in lengths for d in depths}
    out: dict[str, Any] = {"lengths": list(lengths), "depths": list(depths), "modes": {}}
    for mode in modes:
        handle = patch(model, mode_config(mode, **sizes))
        rows = []
        start = time.perf_counter()
        try:
            for n in lengths:
                for d in depths:
                    t0 = time.perf_counter()
                    r = passkey_trial(
                        model, tokenizer, n, d, keys[(n, d)], chunk=chunk, tail=sizes.get("tail_size", 16)
                    )
                    _sync(model)
                    rows.append(
                        {
                            "length": n,
                            "tokens": r.tokens,
                            "depth": d,
                            "passkey": r.passkey,
                            "answer": r.answer,
                            "found": r.found,
                            "seconds": time.perf_counter() - t0,
                        }
                    )
            pos = handle.state.largest_position() if handle.state is not None else max(lengths)
        finally:
            handle.unpatch()
        out["modes"][mode] = {"rows": rows, "largest_position": pos, "seconds": time.perf_counter() - start}
    return out


# ---------------------------------------------------------------------------------------------
# Checks and tables
# ---------------------------------------------------------------------------------------------


def flatness(results: dict[str, Any], mode: str, reference: str, beyond: int) -> dict[str, float]:
    """Each band of ``mode`` that starts at or after position ``beyond``, as its perplexity's
    relative change from the ``reference`` band (``+0.08`` = 8% higher)."""
    bands = results["modes"][mode]["bands"]
    ref = bands[reference]
    starts = {name: a for name, (a, _) in zip(bands, results["bands"], strict=False)}
    return {name: ppl / ref - 1 for name, ppl in bands.items() if starts.get(name, 0) >= beyond}


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


def _tokens_label(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


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
    :class:`~reattn_llm.engine.Completion`, a LangChain ``AIMessage`` of :class:`ChatReAttention`
    or a LlamaIndex ``Response`` of ``WholeDocumentQueryEngine``."""
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
            row[_tokens_label(n)] = f"{counts[mode]['by_length'][n]}/{len(grid['depths'])}"
        row["largest position"] = r["largest_position"]
        row["seconds"] = round(r["seconds"], 1)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot_perplexity_bands(results: dict[str, Any], ax: Any = None, title: str | None = None) -> Any:
    """Perplexity (log scale) per position band, one line per mode; the trained window is shaded."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    names = list(next(iter(results["modes"].values()))["bands"])
    x = list(range(len(names)))
    for mode, r in results["modes"].items():
        ax.plot(
            x,
            [r["bands"][n] for n in names],
            marker="o",
            color=_COLORS.get(mode),
            label=f"{MODE_LABELS.get(mode, mode)} (largest position {r['largest_position']:,})",
        )
    inside = sum(1 for (a, b) in results["bands"][: len(names)] if b <= results["window"])
    ax.axvspan(-0.5, inside - 0.5, color="0.92", zorder=0)
    ax.text(
        inside - 0.55,
        ax.get_ylim()[0],
        f" window {results['window']:,} ",
        ha="right",
        va="bottom",
        fontsize=8,
        color="0.4",
    )
    ax.set_yscale("log")
    ax.set_xticks(x, names)
    ax.set_xlabel("token positions")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title or f"Perplexity by position, {results['text']} ({results['tokens']:,} tokens)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_passkey_heatmap(grid: dict[str, Any], title: str | None = None) -> Any:
    """One panel per mode: passkey found (green) or missed (red) by depth (rows) and prompt length
    (columns), with the model's answer for misses."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    modes = list(grid["modes"])
    lengths, depths = grid["lengths"], grid["depths"]
    fig, axes = plt.subplots(
        1, len(modes), figsize=(3.6 * len(modes) + 0.6, 0.55 * len(depths) + 1.6), squeeze=False, sharey=True
    )
    cmap = ListedColormap(["#e45756", "#54a24b"])
    counts = passkey_counts(grid)
    for ax, mode in zip(axes[0], modes, strict=True):
        found = {(x["length"], x["depth"]): x["found"] for x in grid["modes"][mode]["rows"]}
        cells = [[1.0 if found[(n, d)] else 0.0 for n in lengths] for d in depths]
        ax.imshow(cells, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i, d in enumerate(depths):
            for j, n in enumerate(lengths):
                ax.text(
                    j,
                    i,
                    "found" if found[(n, d)] else "missed",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
        ax.set_xticks(range(len(lengths)), [_tokens_label(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("prompt length (tokens)")
        c = counts[mode]
        ax.set_title(f"{MODE_LABELS.get(mode, mode)}\n{c['found']}/{c['total']} found", fontsize=9)
    axes[0][0].set_ylabel("depth of the key")
    fig.suptitle(title or "Passkey retrieval", fontsize=11)
    fig.tight_layout()
    return fig


def gap(results: dict[str, Any], mode: str, baseline: str, beyond: int) -> dict[str, float]:
    """Each band of ``mode`` that starts at or after position ``beyond``, as its perplexity's
    relative change from the same band of the ``baseline`` mode."""
    ours, theirs = results["modes"][mode]["bands"], results["modes"][baseline]["bands"]
    starts = {name: a for name, (a, _) in zip(ours, results["bands"], strict=False)}
    return {name: ppl / theirs[name] - 1 for name, ppl in ours.items() if starts.get(name, 0) >= beyond}


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
# Running the notebooks (tests and benchmarks/run_notebooks_gpu.sh)
# ---------------------------------------------------------------------------------------------


def execute_notebook(
    path: str | os.PathLike[str],
    *,
    size: str,
    timeout: int = 1800,
    save_to: str | os.PathLike[str] | None = None,
) -> tuple[Any, float, BaseException | None]:
    """Execute the notebook at ``path`` with ``$REATTN_NOTEBOOK_SIZE=size`` in a fresh kernel
    (working directory: the notebook's folder) and return ``(notebook, seconds, error)``.

    ``path`` itself is never written; ``save_to`` receives the executed notebook, also when a
    cell failed or ran past ``timeout`` seconds (``error`` is then that exception, else None).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: the size, and no terminal progress bars or
    # the warning tqdm gives in a notebook without ipywidgets (they would clutter saved outputs).
    env = {
        SIZE_ENV: size,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": "ignore:IProgress not found",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    error: BaseException | None = None
    t0 = time.perf_counter()
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            coalesce_streams=True,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    except (CellExecutionError, TimeoutError, RuntimeError) as e:
        error = e  # a failed cell, a cell past its timeout, a dead kernel
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    if save_to is not None:
        nbformat.write(nb, save_to)
    return nb, seconds, error


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import resource

    ap = argparse.ArgumentParser(description="Execute notebooks; write the executed copies to --out.")
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--size", default="full", choices=["small", "full"])
    ap.add_argument("--out", required=True, help="folder for the executed notebooks")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in a.notebooks:
        target = Path(a.out) / Path(name).name
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        _, seconds, error = execute_notebook(name, size=a.size, timeout=a.timeout, save_to=target)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        print(
            f"{name}: {'FAILED' if error else 'ok'} in {seconds:.1f} s (kernel CPU {cpu:.1f} s) -> {target}",
            flush=True,
        )
        if error is not None:
            failed += 1
            print(str(error)[-3000:], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(_main())
