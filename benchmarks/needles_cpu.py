"""The CPU natural-prose needle test (``tests/test_natural_needles.py``: ten RULER-style needles in
Emma at depths 0.05..0.95, 2,000-token prompts, the default model's window shrunk to 256) under
several configs, one table: how each selection answers the same prompts.

    python benchmarks/needles_cpu.py                                   # exact, streaming, two-level variants
    python benchmarks/needles_cpu.py --set "k8:top_k=8"   # LABEL:name=value,... (repeatable; ruler.py's --variant form)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DEFAULT_SETS = [
    "exact:mode=reattention",
    "streaming:mode=streaming",
    "two-level:selection=two_level",
    "two-level-answers-too:selection=two_level,exact_answer=none",
    "two-level-c8:selection=two_level,candidate_blocks=8",
    "two-level-c8-answers-too:selection=two_level,candidate_blocks=8,exact_answer=none",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", help="LABEL:name=value,... (default: the six of DEFAULT_SETS)")
    ap.add_argument("--texts", default=str(ROOT.parent / "shared" / "data" / "texts"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ruler import _parse_variant
    from test_natural_needles import SAMPLES, WINDOW, _answers, build_batch

    from reattn_llm import ReAttentionConfig
    from reattn_llm.runtime.models import load_model

    model, tok = load_model(None, torch.device("cpu"), torch.float32)
    ids, question, answers = build_batch(
        tok, (Path(args.texts) / "austen_emma.txt").read_text(encoding="utf-8")
    )
    rows = []
    for label, settings in map(_parse_variant, args.set or DEFAULT_SETS):
        t0 = time.perf_counter()
        got = _answers(model, tok, ids, question, ReAttentionConfig(window=WINDOW, **settings))
        found = [a in g for a, g in zip(answers, got, strict=True)]
        secs = time.perf_counter() - t0
        rows.append((label, settings, found, secs))
        print(f"[needles] {label}: {sum(found)}/{SAMPLES} {secs:.1f} s", file=sys.stderr, flush=True)
    print(
        f"\n| config (window {WINDOW}, {ids.shape[1]} tokens) | settings | found / {SAMPLES} | by depth | s |"
    )
    print("|---|---|---|---|---|")
    for label, settings, found, secs in rows:
        marks = "".join("x" if f else "." for f in found)
        print(f"| {label} | {settings} | {sum(found)} | `{marks}` | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
