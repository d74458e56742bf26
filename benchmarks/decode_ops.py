"""Torch ops per decoder layer of one decode step: stock attention against ReAttention's backends.

On a GPU a decode step of a small-batch model is bound by kernel launches, one per dispatched op
that computes something; views (``view``, ``slice``, ``expand``, ...) launch nothing. This counts
the aten ops one decode forward dispatches (``TorchDispatchMode``), after a prefill longer than
``G + L`` so the span selection runs, on a tiny Llama of ``tests/tiny_models.py``, and prints them
per layer: all ops, and the launching ones: views (``view``, ``slice``, ``expand``, ...) and bare
allocations (``empty``: the caching allocator, no kernel) left out. A Triton kernel counts as one
launching op (on CPU it runs in the interpreter, ``TRITON_INTERPRET=1``, whose own host copies are
not counted)::

    python benchmarks/decode_ops.py            # the table
    python benchmarks/decode_ops.py --ops      # and the launching ops of each ReAttention backend
    python benchmarks/decode_ops.py --prefill  # a prompt chunk's layer instead of a decode step's
    python benchmarks/decode_ops.py --prefill --joined 8  # per chunk, 8 whole chunks in one forward
    python benchmarks/decode_ops.py --selection two_level  # two-level selection's
    python benchmarks/decode_ops.py --past-limit   # a step past decode_extra_until: the question's spans only
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: aten ops that only make a new view of a tensor (no kernel launch on a GPU).
VIEW_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "unsqueeze",
        "squeeze",
        "slice",
        "expand",
        "alias",
        "t",
        "transpose",
        "permute",
        "select",
        "split",
        "split_with_sizes",
        "unbind",
        "chunk",
        "narrow",
        "detach",
        "as_strided",
        "unflatten",
        "lift_fresh",
        "_reshape_alias",
    }
)

#: The tiny model and sizes of the measurement (``G + L`` = 68 of a 391-token prompt).
LAYERS = 4
PROMPT = 390
CONFIG = {"global_size": 4, "local_size": 64, "span_size": 8, "max_spans": 8, "top_k": 2, "chunk_size": 32}


def op_name(func: object) -> str:
    """``aten.mul.Tensor`` -> ``mul``; a Triton kernel ``triton:<name>``."""
    s = str(func)
    return s if s.startswith("triton:") else s.split(".")[1] if s.count(".") >= 1 else s


#: aten ops that allocate (or only describe) memory without computing anything: no kernel launch.
NO_KERNEL_OPS = frozenset(
    {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "promote_types"}
)


def is_view(name: str) -> bool:
    return name in VIEW_OPS


def launches(name: str) -> bool:
    """Whether the op launches a kernel on a GPU (not a view, not a bare allocation)."""
    return name not in VIEW_OPS and name not in NO_KERNEL_OPS


@contextlib.contextmanager
def counting() -> Iterator[collections.Counter]:
    """Count the aten ops dispatched inside the block (and Triton launches, as ``triton:<kernel>``)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    counts: collections.Counter = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[op_name(func)] += 1
            return func(*args, **(kwargs or {}))

    restore = None
    try:
        from triton.runtime import interpreter

        original = interpreter.GridExecutor.__call__

        def launch(self, *args, **kwargs):
            counts[f"triton:{self.fn.__name__}"] += 1
            with _disable_current_modes():  # the interpreter's host copies are no launches
                return original(self, *args, **kwargs)

        interpreter.GridExecutor.__call__ = launch
        restore = (interpreter.GridExecutor, original)
    except ImportError:
        pass
    try:
        with torch.no_grad(), Count():
            yield counts
    finally:
        if restore is not None:
            restore[0].__call__ = restore[1]


def decode_counts(
    backend: str | None,
    prefill: bool = False,
    selection: str = "exact",
    past_limit: bool = False,
    joined: int = 1,
) -> collections.Counter:
    """Ops of one decode forward (the second token after the prompt) of the tiny model, stock
    (``backend=None``) or patched with ``backend``; ``prefill``: of one prompt chunk after the
    prompt instead (``chunk_size`` tokens, one chunk with its span selection). ``selection``: the
    config's (two-level: 32 candidate blocks of 8 rows, of the middle's 40). ``past_limit``: the step
    is past ``decode_extra_until`` (it keeps the question's spans and scores nothing). ``joined``: with
    ``prefill``, that many whole chunks in one forward (the engine's ``prefill_forward``), the counts
    per chunk."""
    import torch

    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import distinct_ids, tiny_model

    from reattn_llm import ReAttentionCache, ReAttentionConfig, patch
    from reattn_llm.method.chunks import chunk_bounds, plan_forwards

    model = tiny_model("llama", layers=LAYERS, window=512, seed=1)
    handle = None
    if backend is not None:
        until = {"decode_extra_until": PROMPT} if past_limit else {}
        handle = patch(model, ReAttentionConfig(**CONFIG, **until, backend=backend, selection=selection))
    ids = distinct_ids(1, PROMPT + 2, seed=2)
    cache = ReAttentionCache(LAYERS)
    try:
        with torch.no_grad():
            model(ids[:, :PROMPT], past_key_values=cache)
            model(ids[:, PROMPT : PROMPT + 1], past_key_values=cache)  # first step: lazy tables built
        if prefill:  # the prompt's next chunk(s): ``joined`` whole chunks of the same prompt in one forward
            state = handle.state if handle is not None else None
            n = joined * CONFIG["chunk_size"]
            (f,) = plan_forwards(chunk_bounds(n, CONFIG["chunk_size"], 0), n, answer=False)
            ctx = state.running(f) if state is not None else contextlib.nullcontext()
            with counting() as counts, ctx:
                model(distinct_ids(1, n, seed=3), past_key_values=cache)
            return collections.Counter({name: n / joined for name, n in counts.items()})
        with counting() as counts:
            model(ids[:, PROMPT + 1 : PROMPT + 2], past_key_values=cache)
    finally:
        if handle is not None:
            handle.unpatch()
    return counts


def per_layer(counts: collections.Counter) -> tuple[float, float, float, float]:
    """``(all, launching, views, allocations)`` ops per decoder layer."""
    total = sum(counts.values())
    launching = sum(n for name, n in counts.items() if launches(name))
    views = sum(n for name, n in counts.items() if is_view(name))
    return total / LAYERS, launching / LAYERS, views / LAYERS, (total - launching - views) / LAYERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", action="store_true", help="list the launching ops of each ReAttention backend")
    ap.add_argument(
        "--prefill",
        action="store_true",
        help=f"count a {CONFIG['chunk_size']}-token prompt chunk, not a decode step",
    )
    ap.add_argument("--selection", default="exact", choices=("exact", "two_level"))
    ap.add_argument("--past-limit", action="store_true", help="a decode step past decode_extra_until")
    ap.add_argument(
        "--joined", type=int, default=1, help="with --prefill: whole chunks per forward, ops per chunk"
    )
    args = ap.parse_args()
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: CPU runs the interpreter
    from reattn_llm.method import model_ops

    rows = [  # label, backend, the model's own norms and MLPs fused (method.model_ops.FUSE)
        ("stock", None, True),
        ("reattention torch", "torch", True),
        ("reattention triton", "triton", True),
        ("reattention triton, stock RMSNorm / MLP", "triton", False),
    ]
    results = {}
    for label, backend, fuse in rows:
        model_ops.FUSE = fuse
        results[label] = decode_counts(backend, args.prefill, args.selection, args.past_limit, args.joined)
    model_ops.FUSE = True
    what = f"prompt chunk of {CONFIG['chunk_size']}" if args.prefill else "decode"
    if args.prefill and args.joined > 1:
        what += f", {args.joined} joined per forward,"
    print(
        f"| ops per {what} layer ({LAYERS} layers, {PROMPT + 2}-token context) | all | launching | views | allocations |"
    )
    print("|---|---|---|---|---|")
    for label, counts in results.items():
        total, launching, views, allocs = per_layer(counts)
        print(f"| {label} | {total:g} | {launching:g} | {views:g} | {allocs:g} |")
    if args.ops:
        for label, counts in results.items():
            if label == "stock":
                continue
            print(f"\n{label}: launching ops per {what} ({LAYERS} layers)")
            for name, n in counts.most_common():
                if launches(name):
                    print(f"  {n:6g} {name}")


if __name__ == "__main__":
    main()
