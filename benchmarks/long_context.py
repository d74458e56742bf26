"""Long-context quality: perplexity by position and passkey retrieval, stock vs streaming vs ReAttention.

    python benchmarks/long_context.py ppl --text ../shared/data/texts/austen_emma.txt
    python benchmarks/long_context.py passkey --lengths 8192,16384,32768,65536,131072

Runs the embedded default model (SmolLM2-135M-Instruct, window 8192) with the default config
(the paper's sizes). Prints a table per measurement; ``--out FILE`` also writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from bench_data import default_text

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.lab.evaluation import passkey_trial, perplexity_by_band, random_passkey, token_nll
from reattn_llm.runtime.models import load_model, resolve_device, resolve_dtype

BANDS = [
    (0, 2048),
    (2048, 8192),
    (8192, 16384),
    (16384, 32768),
    (32768, 65536),
    (65536, 131072),
    (131072, 10**12),
]
MODES = ("full", "streaming", "reattention")


_SIZES = ("window", "global_size", "local_size", "span_size", "max_spans", "top_k", "chunk_size", "tail_size")


def _config(mode: str, args: argparse.Namespace) -> ReAttentionConfig:
    sizes = {k: getattr(args, k) for k in _SIZES if getattr(args, k) is not None}
    if mode == "streaming":
        sizes.pop("max_spans", None)
    mode, _, selection = mode.partition("/")
    storage = {} if mode == "full" else {"kv_dtype": args.kv_dtype, "offload": args.offload}
    return ReAttentionConfig(mode=mode, selection=selection or "exact", **sizes, **storage)  # type: ignore[arg-type]


def _runs(args: argparse.Namespace) -> list[str]:
    """``--modes`` with ``reattention`` once per ``--selection`` (``reattention/two_level`` for two-level)."""
    out = []
    for mode in args.modes:
        if mode == "reattention":
            out += [mode if sel == "exact" else f"{mode}/{sel}" for sel in args.selection]
        else:
            out.append(mode)
    return out


def run_ppl(model, tok, args) -> dict:
    # a comma list of files is read as one text, in order (e.g. all six novels + the dictionary)
    text = "\n\n".join(Path(t).read_text(encoding="utf-8") for t in args.text.split(","))
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    if args.max_tokens:
        ids = ids[:, : args.max_tokens]
    ids = ids.to(model.device)
    results = {"tokens": ids.shape[1], "modes": {}}
    for mode in _runs(args):
        handle = patch(model, _config(mode, args))
        t0 = time.perf_counter()
        nll = token_nll(model, ids, args.chunk)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        bands = perplexity_by_band(nll, BANDS)
        pos = handle.state.largest_position() if handle.state is not None else ids.shape[1] - 1
        handle.unpatch()
        results["modes"][mode] = {"bands": bands, "seconds": secs, "largest_position": pos}
        print(f"[ppl] {mode}: {secs:.1f} s, largest position {pos}", file=sys.stderr, flush=True)
    names = list(next(iter(results["modes"].values()))["bands"])
    print(
        f"\nPerplexity by position, {', '.join(Path(t).name for t in args.text.split(','))} ({results['tokens']} tokens)"
    )
    print("| mode | " + " | ".join(names) + " | largest position | seconds |")
    print("|---" * (len(names) + 3) + "|")
    for mode, r in results["modes"].items():
        cells = " | ".join(f"{r['bands'][n]:.1f}" for n in names)
        print(f"| {mode} | {cells} | {r['largest_position']} | {r['seconds']:.1f} |")
    return results


def run_passkey(model, tok, args) -> dict:
    rng = random.Random(args.seed)
    results = {"modes": {}}
    for mode in _runs(args):
        handle = patch(model, _config(mode, args))
        rows = []
        for n in args.lengths:
            for depth in args.depths:
                t0 = time.perf_counter()
                r = passkey_trial(
                    model, tok, n, depth, random_passkey(rng), chunk=args.chunk, tail=args.tail_size or 16
                )
                rows.append(
                    {
                        "length": n,
                        "tokens": r.tokens,
                        "depth": depth,
                        "found": r.found,
                        "answer": r.answer,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(f"[passkey] {mode} {n} {depth}: {r.found} {r.answer!r}", file=sys.stderr, flush=True)
        pos = handle.state.largest_position() if handle.state is not None else max(args.lengths)
        handle.unpatch()
        results["modes"][mode] = {"rows": rows, "largest_position": pos}
    print(f"\nPasskey retrieval (found / depths {args.depths})")
    print("| mode | " + " | ".join(f"{n // 1024}K" for n in args.lengths) + " | largest position |")
    print("|---" * (len(args.lengths) + 2) + "|")
    for mode, r in results["modes"].items():
        cells = []
        for n in args.lengths:
            hits = [row["found"] for row in r["rows"] if row["length"] == n]
            cells.append(f"{sum(hits)}/{len(hits)}")
        print(f"| {mode} | " + " | ".join(cells) + f" | {r['largest_position']} |")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ppl", "passkey"])
    ap.add_argument(
        "--text",
        default=None,
        help="text file (default: austen_emma.txt in $REATTN_DATA, else in shared/data beside the repository)",
    )
    ap.add_argument("--max-tokens", type=int, default=0)
    ap.add_argument("--lengths", default="8192,16384,32768,65536,131072")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument(
        "--selection",
        default="exact",
        help="ReAttentionConfig.selection of mode reattention: exact, two_level, or a comma list",
    )
    for k in _SIZES:
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"ReAttentionConfig.{k}")
    ap.add_argument(
        "--kv-dtype", default="model", choices=["model", "fp8"], help="ReAttentionConfig.kv_dtype"
    )
    ap.add_argument("--offload", default="none", choices=["none", "values", "keys_values"])
    ap.add_argument("--model", default=None, help="model name or folder (default: the embedded default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.text = args.text or default_text()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.depths = [float(x) for x in args.depths.split(",")]
    args.modes = args.modes.split(",")
    args.selection = args.selection.split(",")
    device = resolve_device(args.device)
    model, tok = load_model(args.model, device, resolve_dtype(args.dtype, device))
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"torch {torch.__version__}, dtype {model.dtype}",
        file=sys.stderr,
    )
    res = run_ppl(model, tok, args) if args.what == "ppl" else run_passkey(model, tok, args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
