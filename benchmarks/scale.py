"""Millions of tokens with the default model: passkey with prefill time and peak memory, and
reusable document caches (a fresh process loads a saved prefix and answers).

    python benchmarks/scale.py passkey --lengths 262144,1048576 --depths 0.1,0.5,0.9
    python benchmarks/scale.py doc-cache --tokens 1048576 --path /root/doc.safetensors
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.lab.evaluation import passkey_prompt, passkey_trial, random_passkey
from reattn_llm.runtime.models import load_model, resolve_device, resolve_dtype


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_passkey(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    model, tok = load_model(None, device, resolve_dtype(args.dtype, device))
    cfg = ReAttentionConfig(**({"selection": args.selection} if args.selection != "exact" else {}))
    rng = random.Random(args.seed)
    rows = []
    with patch(model, cfg) as handle:
        for n in args.lengths:
            for depth in args.depths:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                t0 = time.perf_counter()
                r = passkey_trial(model, tok, n, depth, random_passkey(rng), chunk=args.chunk)
                _sync(device)
                secs = time.perf_counter() - t0
                peak = (
                    torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                )
                rows.append(
                    {
                        "tokens": r.tokens,
                        "depth": depth,
                        "found": r.found,
                        "answer": r.answer,
                        "seconds": secs,
                        "peak_gib": peak,
                        "selection": args.selection,
                    }
                )
                print(
                    f"[passkey] {args.selection} {r.tokens} tokens depth {depth}: {r.found} {r.answer!r} "
                    f"{secs:.1f} s peak {peak:.1f} GiB",
                    file=sys.stderr,
                    flush=True,
                )
        largest = handle.state.largest_position()
    print(
        f"\n| selection | tokens | depth | found | prefill+answer s | peak GiB |  (largest position {largest})"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['selection']} | {r['tokens']:,} | {r['depth']} | {r['found']} | {r['seconds']:.1f} | "
            f"{r['peak_gib']:.1f} |"
        )
    return rows


def run_doc_cache(args: argparse.Namespace) -> dict:
    """Prefill a long document once (timed), save it; then a fresh process loads it and answers."""
    from reattn_llm.runtime.engine import Engine

    eng = Engine(None, device=args.device, dtype=args.dtype, progress=False).load()
    text = passkey_prompt(eng.tokenizer, args.tokens, 0.5, "62718")
    doc = text.rsplit("\n", 1)[0]
    _sync(eng.device)
    t0 = time.perf_counter()
    kept = eng.warm(doc, chat=False)
    _sync(eng.device)
    prefill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    eng.save_prefix(args.path)
    save_s = time.perf_counter() - t1
    size = Path(args.path).stat().st_size
    print(
        f"[doc-cache] {kept} tokens prefilled in {prefill_s:.1f} s, saved in {save_s:.1f} s ({size / 2**30:.1f} GiB)",
        file=sys.stderr,
        flush=True,
    )
    del eng
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "doc-cache-answer",
            "--path",
            args.path,
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--tokens",
            str(args.tokens),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(child.stdout.strip().splitlines()[-1])
    res = {
        "tokens": kept,
        "first_prefill_s": prefill_s,
        "save_s": save_s,
        "file_gib": size / 2**30,
        **answer,
        "ratio": answer["load_and_answer_s"] / prefill_s,
    }
    print(
        "\n| document tokens | first prefill s | save s | file GiB | fresh process: load s | answer s "
        "| load+answer / prefill | new tokens prefilled | answer |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {kept:,} | {prefill_s:.1f} | {save_s:.1f} | {res['file_gib']:.1f} | {answer['load_s']:.1f} | "
        f"{answer['answer_s']:.1f} | {res['ratio']:.3f} | {answer['prefilled']} | {answer['text']!r} |"
    )
    return res


def doc_cache_answer(args: argparse.Namespace) -> None:
    from reattn_llm.runtime.engine import Engine, SamplingParams

    t0 = time.perf_counter()
    eng = Engine(None, device=args.device, dtype=args.dtype, progress=False).load()
    load_model_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    eng.load_prefix(args.path)
    _sync(eng.device)
    load_s = time.perf_counter() - t1
    prompt = passkey_prompt(eng.tokenizer, args.tokens, 0.5, "62718")  # the parent's prompt, rebuilt
    t2 = time.perf_counter()
    c = eng.complete(prompt, SamplingParams(max_new_tokens=8), chat=False)
    answer_s = time.perf_counter() - t2
    print(
        json.dumps(
            {
                "model_load_s": load_model_s,
                "load_s": load_s,
                "answer_s": answer_s,
                "load_and_answer_s": load_s + answer_s,
                "prefilled": eng.last_prefill_tokens,
                "text": c.text,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["passkey", "doc-cache", "doc-cache-answer"])
    ap.add_argument("--lengths", default="262144,1048576")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--selection", default="exact")
    ap.add_argument(
        "--chunk",
        type=int,
        default=8192,
        help="passkey: tokens per prefill forward, the config's whole chunks joined (the engine's default on a GPU)",
    )
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--path", default="/tmp/reattn-doc.safetensors")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.depths = [float(x) for x in args.depths.split(",")]
    if args.what == "doc-cache-answer":
        doc_cache_answer(args)
        return 0
    res = run_passkey(args) if args.what == "passkey" else run_doc_cache(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
