"""Running the notebooks in ``notebooks/``: their size, and executing them in a fresh kernel.

* :func:`notebook_size`: ``$REATTN_NOTEBOOK_SIZE`` (``small`` on a CPU, ``full`` on a GPU), read by
  each notebook's first cell;
* :func:`execute_notebook`: run one notebook with nbclient (tests/test_notebooks.py,
  ``benchmarks/run_notebooks_gpu.sh``), never writing the notebook itself.

From the command line (the executed copies go to ``--out``)::

    python -m reattn_llm.lab.notebooks notebooks/03_why_it_works.ipynb --size full --data DIR --out OUT

The notebooks' own helpers live beside this module: :mod:`~reattn_llm.lab.data` (data files,
excerpts, planted facts), :mod:`~reattn_llm.lab.evaluation` (perplexity and passkey runs),
:mod:`~reattn_llm.lab.report` (checks and tables) and :mod:`~reattn_llm.lab.plots`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import DATA_ENV

__all__ = ["SIZE_ENV", "execute_notebook", "notebook_size"]

#: ``small`` (CPU, CI: a few pages, a shrunk window) or ``full`` (GPU: whole documents, default config).
SIZE_ENV = "REATTN_NOTEBOOK_SIZE"


def notebook_size() -> str:
    """``$REATTN_NOTEBOOK_SIZE`` (``small`` or ``full``); unset: ``full`` with a CUDA GPU, else ``small``."""
    size = os.environ.get(SIZE_ENV, "").strip().lower()
    if not size:
        import torch

        return "full" if torch.cuda.is_available() else "small"
    if size not in ("small", "full"):
        raise ValueError(f"{SIZE_ENV}={size!r}: use 'small' (CPU, a few pages) or 'full' (GPU, whole books).")
    return size


def execute_notebook(
    path: str | os.PathLike[str],
    *,
    size: str,
    data: str | os.PathLike[str] | None = None,
    timeout: int = 1800,
    save_to: str | os.PathLike[str] | None = None,
) -> tuple[Any, float, BaseException | None]:
    """Execute the notebook at ``path`` with ``$REATTN_NOTEBOOK_SIZE=size`` in a fresh kernel
    (working directory: the notebook's folder) and return ``(notebook, seconds, error)``.

    ``data``, when given, becomes the kernel's ``$REATTN_DATA`` (the folder of the sample PDFs and
    texts); else the kernel inherits this process's. ``path`` itself is never written; ``save_to``
    receives the executed notebook, also when a cell failed or ran past ``timeout`` seconds
    (``error`` is then that exception, else None).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    if size not in ("small", "full"):
        raise ValueError(f"size={size!r}: use 'small' (CPU, a few pages) or 'full' (GPU, whole books).")
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
    if data is not None:
        env[DATA_ENV] = str(Path(data).resolve())
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
    ap.add_argument(
        "--data", default=None, help=f"folder of the sample PDFs and texts (default: ${DATA_ENV})"
    )
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in a.notebooks:
        target = Path(a.out) / Path(name).name
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        _, seconds, error = execute_notebook(
            name, size=a.size, data=a.data, timeout=a.timeout, save_to=target
        )
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
