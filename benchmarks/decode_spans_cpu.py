"""Decode-step selections (``decode_spans``) on the CPU test's natural-prose needles, side by side.

The ten Emma prompts of tests/test_natural_needles.py (RULER-style numeric needles at ten depths,
the default model with its window shrunk to 256 tokens), each ``decode_spans`` choice on the same
prompts, greedy answers::

    python benchmarks/decode_spans_cpu.py --tokens 2000 union own question
    python benchmarks/decode_spans_cpu.py --tokens 4000 union union,span_shift=8

A choice is ``decode_spans[:extra spans]`` then ``,name=value`` settings of ReAttentionConfig. Prints one row per choice: found / samples and seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "choices", nargs="+", help="decode_spans values; 'union:8' sets decode_extra_spans, ',k=v' other settings"
    )
    ap.add_argument("--tokens", type=int, default=2000, help="prompt length (the window is 256)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import test_natural_needles as needles
    import torch

    from reattn_llm import ReAttentionConfig
    from reattn_llm.runtime.models import load_model

    needles.TOKENS = args.tokens
    model, tok = load_model(None, torch.device("cpu"), torch.float32)
    make_batch = needles.needle_batch.__wrapped__  # the fixture's function
    ids, question, answers = make_batch((model, tok), args.data)
    print("| decode_spans | tokens | found | seconds |\n|---|---|---|---|")
    for choice in args.choices:
        head, *settings = choice.split(",")
        name, _, extra = head.partition(":")
        kw: dict = {"decode_spans": name, **({"decode_extra_spans": int(extra)} if extra else {})}
        for k, _, v in (s.partition("=") for s in settings):
            kw[k] = int(v) if v.lstrip("-").isdigit() else v
        t0 = time.perf_counter()
        got = needles._answers(model, tok, ids, question, ReAttentionConfig(window=needles.WINDOW, **kw))
        found = sum(a in g for a, g in zip(answers, got, strict=True))
        print(
            f"| {choice} | {ids.shape[1]} | {found}/{len(answers)} | {time.perf_counter() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
