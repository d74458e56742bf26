"""Layers split across GPUs with accelerate's device_map: passkey, time and per-card peak memory.

    python benchmarks/multi_gpu.py --tokens 1048576 --gpus 2        # on the 2-GPU machine

Loads the default model with its decoder layers split evenly over ``--gpus`` cards (embeddings
on the first, norm and head on the last), patches it, and hides a passkey at each ``--depths``;
prints, per depth, whether it was found, the prefill time and every card's peak memory (each
card holds the KV cache of its own layers). ``--gpus 1`` is the single-card baseline for the same
lengths, run in the same command by ``--compare``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.lab.evaluation import passkey_trial
from reattn_llm.runtime.models import load_model, model_source


def _load(gpus: int):
    from accelerate import dispatch_model

    model, tok = load_model(None, torch.device("cpu"), torch.bfloat16)
    n = model.config.num_hidden_layers
    devs = [f"cuda:{i}" for i in range(gpus)]
    m = {
        "model.embed_tokens": devs[0],
        "model.rotary_emb": devs[0],
        "model.norm": devs[-1],
        "lm_head": devs[-1],
    }
    m |= {f"model.layers.{i}": devs[i * gpus // n] for i in range(n)}
    return dispatch_model(model, device_map=m), tok


def run(gpus: int, tokens: int, depths: list[float], selection: str) -> list[dict]:
    model, tok = _load(gpus)
    rows = []
    with patch(model, ReAttentionConfig(selection=selection)):
        for i, depth in enumerate(depths):
            key = str(31415 + 7919 * i)
            for d in range(gpus):
                torch.cuda.reset_peak_memory_stats(d)
            t0 = time.perf_counter()
            r = passkey_trial(model, tok, tokens, depth, key, chunk=1024)
            secs = time.perf_counter() - t0
            peaks = [torch.cuda.max_memory_allocated(d) / 2**30 for d in range(gpus)]
            rows.append(
                {
                    "gpus": gpus,
                    "tokens": r.tokens,
                    "depth": depth,
                    "found": r.found,
                    "seconds": secs,
                    "peak_gib": peaks,
                    "selection": selection,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=262144)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--depths", default="0.5")
    p.add_argument("--selection", default="exact", choices=["exact", "two_level"])
    p.add_argument("--compare", action="store_true", help="also run on one card")
    a = p.parse_args()
    if torch.cuda.device_count() < a.gpus:
        raise SystemExit(f"needs {a.gpus} CUDA devices, found {torch.cuda.device_count()}")
    depths = [float(x) for x in a.depths.split(",")]
    print(f"model {model_source(None)}, torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    rows = run(a.gpus, a.tokens, depths, a.selection)
    if a.compare:
        rows += run(1, a.tokens, depths, a.selection)
    print(f"{'gpus':>4} {'tokens':>9} {'depth':>5} {'found':>5} {'time s':>7}  peak GiB per card")
    for r in rows:
        peaks = " ".join(f"{x:.1f}" for x in r["peak_gib"])
        print(
            f"{r['gpus']:>4} {r['tokens']:>9} {r['depth']:>5} {r['found']!s:>5} {r['seconds']:7.1f}  {peaks}"
        )


if __name__ == "__main__":
    main()
