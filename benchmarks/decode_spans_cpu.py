"""Decode-step selections (``decode_spans``) on the CPU test's natural-prose needles, side by side.

The ten Emma prompts of tests/test_natural_needles.py (RULER-style numeric needles at ten depths,
the default model with its window shrunk to 256 tokens), each ``decode_spans`` choice on the same
prompts, greedy answers::

    python benchmarks/decode_spans_cpu.py --tokens 2000 union own question
    python benchmarks/decode_spans_cpu.py --tokens 4000 union union,span_shift=8
    python benchmarks/decode_spans_cpu.py --tokens 8000 --trace 0,2,4 union union,vote_pooling=span

``--order first`` / ``mixed`` state the value before the words the question matches in every / every
other needle (the test's prompts are ``mixed``).
A choice is ``decode_spans[:extra spans]`` then ``,name=value`` settings of ReAttentionConfig. Prints one row per choice: found / samples and seconds.
With ``--trace I,J``, runs only those prompts, one at a time, and prints for each where the needle's
value was (:class:`reattn_llm.lab.trace.RowTrace`): layers with all / some of its tokens in scope
for the question's forward and for each decode step.
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
        "choices",
        nargs="+",
        help="decode_spans values; 'union:8' sets decode_extra_spans, ',k=v' other settings",
    )
    ap.add_argument(
        "--tokens",
        type=int,
        default=2000,
        help="prompt length (the window is 256 unless a choice sets ,window=N)",
    )
    ap.add_argument(
        "--order",
        choices=("after", "first", "mixed"),
        default="after",
        help="the needle states its value after the words the question matches (RULER's wording, the "
        "default), before them (first), or every other one first (mixed: tests/test_natural_needles.py)",
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--trace", default="", help="comma list of prompt indices to run one at a time, traced")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import test_natural_needles as needles
    import torch
    from ruler import _parse_overrides

    from reattn_llm import ReAttentionConfig
    from reattn_llm.runtime.models import load_model

    needles.TOKENS = args.tokens
    needles.ORDER = args.order
    model, tok = load_model(None, torch.device("cpu"), torch.float32)
    make_batch = needles.needle_batch.__wrapped__  # the fixture's function
    ids, question, answers = make_batch((model, tok), args.data)
    print("| decode_spans | tokens | found | seconds |\n|---|---|---|---|")
    for choice in args.choices:
        head, _, settings = choice.partition(",")
        name, _, extra = head.partition(":")
        kw: dict = {"decode_spans": name, **({"decode_extra_spans": int(extra)} if extra else {})}
        kw.update(_parse_overrides([settings] if settings else []))  # ruler.py's ',k=v' reading
        cfg = ReAttentionConfig(**{"window": needles.WINDOW, **kw})  # ',window=128' overrides it
        t0 = time.perf_counter()
        if args.trace:
            for i in (int(x) for x in args.trace.split(",")):
                _traced(needles, model, tok, ids[i : i + 1], question, answers[i], cfg, f"{choice} #{i}")
            continue
        got = needles._answers(model, tok, ids, question, cfg)
        found = sum(a in g for a, g in zip(answers, got, strict=True))
        print(
            f"| {choice} | {ids.shape[1]} | {found}/{len(answers)} | {time.perf_counter() - t0:.0f} |",
            flush=True,
        )


def _traced(needles, model, tok, ids, question: int, answer: str, cfg, label: str) -> None:
    """One prompt ``ids [1, T]`` with a :class:`~reattn_llm.lab.trace.RowTrace` of its answer's tokens."""
    from reattn_llm.lab.trace import RowTrace, text_rows, trace_line

    text = tok.decode(ids[0])
    if tok(text, add_special_tokens=False)["input_ids"] != ids[0].tolist():
        raise SystemExit(f"{label}: the prompt does not re-tokenize to its ids; its rows cannot be traced")
    trace = RowTrace(text_rows(tok, text, [answer]))
    t0 = time.perf_counter()
    got = needles._answers(model, tok, ids, question, cfg, observers=[trace])[0]
    verdict = "right" if answer in got else "MISS"
    print(f"{label}: {verdict} {got!r} ({answer}), {time.perf_counter() - t0:.0f} s", flush=True)
    print("  " + trace_line(trace.summary()), flush=True)


if __name__ == "__main__":
    main()
