"""The engine's prefill with whole chunks joined per forward (``ReAttentionConfig.prefill_forward``)
against a forward per chunk, on the default model: wall time of ``Engine.prefill`` for one prompt of
natural prose, the same prompt under each setting, the logits compared to the first row's.

A joined forward runs the linear layers and norms once for all its chunks (bigger matrix products,
fewer launches), and its chunks select as if fed alone (``tests/test_joined_forwards.py``: bit for
bit on the CPU). On a GPU the small default model is bound by kernel launches, where this pays; on
the CPU the linear layers' cost per token barely depends on the forward's size::

    python benchmarks/prefill_forward.py                               # CPU, 8,192 tokens
    python benchmarks/prefill_forward.py --device cuda --tokens 131072 --forwards 0,4096,8192,32768
    python benchmarks/prefill_forward.py --selection two_level
    python benchmarks/prefill_forward.py --device cuda --tokens 131072 --forwards 8192 --batched both

``--forwards``: tokens per forward, 0 = one chunk (a forward per chunk, the engine before joining).
``--batched``: whether a forward's whole chunks select as one batch (``method.planning.plan_chunks``,
on by default where the backend is Triton), ``off`` (chunk by chunk) or ``both`` (a row each).
Each setting runs ``--repeats`` times after one warm-up prefill; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def prose_ids(tokenizer, tokens: int, texts: Path) -> list[int]:
    """``tokens`` ids of the shared texts, book after book (the first 2,000 characters skipped)."""
    ids: list[int] = []
    for path in sorted(texts.glob("*.txt")):
        ids += tokenizer(path.read_text(encoding="utf-8")[2000:], add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            return ids[:tokens]
    raise SystemExit(f"{texts} holds fewer than {tokens} tokens of text")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument(
        "--forwards", default="0,2048,8192", help="tokens per forward, comma-separated (0: one chunk)"
    )
    ap.add_argument("--selection", default="exact", choices=("exact", "two_level"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--texts", default=str(ROOT.parent / "shared" / "data" / "texts"))
    ap.add_argument("--batched", default="on", choices=("on", "off", "both"))
    args = ap.parse_args()

    from reattn_llm import ReAttentionConfig
    from reattn_llm.method import planning
    from reattn_llm.method.patch import make_cache
    from reattn_llm.runtime.engine import Engine

    device = torch.device(args.device)
    rows, first = [], None
    default_batched = planning.BATCHED_CHUNKS
    batched = {"on": (True,), "off": (False,), "both": (True, False)}[args.batched]
    settings = [(int(f), b) for f in args.forwards.split(",") for b in batched]
    for forward, on in settings:
        planning.BATCHED_CHUNKS = default_batched if on else ()
        probe = Engine(
            None, device=args.device, config=ReAttentionConfig(), progress=False, keep_prefix=False
        )
        chunk = probe.config.chunk_size
        cfg = ReAttentionConfig(selection=args.selection, prefill_forward=forward or chunk)
        engine = Engine(None, device=args.device, config=cfg, progress=False, keep_prefix=False).load()
        ids = torch.tensor([prose_ids(engine.tokenizer, args.tokens, Path(args.texts))], device=device)
        question = args.tokens - 20
        times = []
        for r in range(args.repeats + 1):
            cache = make_cache(engine.model, reserve=args.tokens)
            sync(device)
            t0 = time.perf_counter()
            logits = engine.prefill(ids, cache, question=question)
            sync(device)
            if r:
                times.append(time.perf_counter() - t0)
            del cache
        secs = statistics.median(times)
        first = logits if first is None else first
        diff = float((logits.float() - first.float()).abs().max())
        label = f"{engine.prefill_forward} ({engine.prefill_forward // chunk} chunks)" + (
            "" if on else ", unbatched"
        )
        rows.append((label, secs, diff))
        print(
            f"[prefill_forward] {label}: {secs:.2f} s, max |logit diff| {diff:g}", file=sys.stderr, flush=True
        )
        del engine
    base = rows[0][1]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\n| tokens per forward ({args.tokens:,} tokens, {args.selection}, {name}) | prefill s | vs first row "
        "| max abs logit diff vs first row |"
    )
    print("|---|---|---|---|")
    for label, secs, diff in rows:
        print(f"| {label} | {secs:.2f} | {secs / base:.2f}x | {diff:g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
