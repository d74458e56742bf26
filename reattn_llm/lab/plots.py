"""Pictures of the results of :mod:`reattn_llm.lab.evaluation` (notebook 03).

matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

from typing import Any

from .report import MODE_LABELS, passkey_counts, tokens_label

__all__ = ["plot_passkey_heatmap", "plot_perplexity_bands"]

_COLORS = {"full": "tab:red", "streaming": "tab:orange", "reattention": "tab:blue"}


def plot_perplexity_bands(results: dict[str, Any], ax: Any = None, title: str | None = None) -> Any:
    """Perplexity (log scale) per position band, one line per mode; the trained window is shaded.

    ``results`` is what :func:`~reattn_llm.lab.evaluation.run_perplexity` returns; returns the axes.
    """
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
    (columns). ``grid`` is what :func:`~reattn_llm.lab.evaluation.run_passkey_grid` returns;
    returns the figure."""
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
        ax.set_xticks(range(len(lengths)), [tokens_label(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("prompt length (tokens)")
        c = counts[mode]
        ax.set_title(f"{MODE_LABELS.get(mode, mode)}\n{c['found']}/{c['total']} found", fontsize=9)
    axes[0][0].set_ylabel("depth of the key")
    fig.suptitle(title or "Passkey retrieval", fontsize=11)
    fig.tight_layout()
    return fig
