"""What fp8 storage and host offload cost in quality, bytes and time, against the model-dtype cache.

    python benchmarks/storage.py                               # CPU: window 512, 4,096 tokens
    python benchmarks/storage.py --device cuda --window 8192 --tokens 131072 --text emma.txt

For each storage (``model``; ``fp8``; ``fp8`` + ``offload=values``; ``model`` + ``offload=values``)
the default model reads the same text through ReAttention in chunks (as a prefill does) and the
script prints one table row: perplexity past the first window and its change against ``model``,
passkey retrieval at 3 depths, device and host KV bytes per token (from the cache itself) and the
time of the perplexity pass, as a ratio to ``model`` measured in the same run. Every storage uses
the same config otherwise (exact selection, the paper's sizes scaled to ``--window``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reattn_llm import ReAttentionConfig, patch
from reattn_llm.cli import SAMPLE
from reattn_llm.lab.evaluation import passkey_trial, token_nll
from reattn_llm.method.patch import make_cache
from reattn_llm.runtime.models import load_model

STORAGES = {
    "model": {},
    "fp8": {"kv_dtype": "fp8"},
    "fp8+offload V": {"kv_dtype": "fp8", "offload": "values"},
    "offload V": {"offload": "values"},
}
KEYS = (("0.1", "48213"), ("0.5", "90127"), ("0.9", "31864"))


def _bytes_per_token(model, tokens: int) -> tuple[float, float]:
    cache = make_cache(model)
    ids = torch.randint(100, 1000, (1, tokens), device=model.device)
    with torch.inference_mode():
        for s in range(0, tokens, 512):
            model(input_ids=ids[:, s : s + 512], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache.nbytes() / tokens, cache.host_nbytes() / tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--text", default=str(SAMPLE))
    p.add_argument("--chunk", type=int, default=None, help="prefill chunk (default: the config's)")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args()

    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model, tok = load_model(None, dev, dtype)
    text = Path(a.text).read_text(encoding="utf-8")
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[:, : a.tokens].to(dev)
    rows = []
    base_ppl = base_time = None
    for name, extra in STORAGES.items():
        cfg = ReAttentionConfig(window=a.window, **extra)
        with patch(model, cfg) as handle:
            chunk = a.chunk or handle.state.config.chunk_size
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            nll = token_nll(model, ids, chunk)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            ppl = float(nll[a.window :].double().mean().exp())
            found = [
                passkey_trial(model, tok, min(a.tokens, 4 * a.window), float(d), k, chunk).found
                for d, k in KEYS
            ]
            dev_b, host_b = _bytes_per_token(model, min(a.tokens, 4096))
        base_ppl = base_ppl or ppl
        base_time = base_time or secs
        rows.append(
            {
                "storage": name,
                "ppl": ppl,
                "ppl_change": ppl / base_ppl - 1,
                "passkey": sum(found),
                "device_bytes_per_token": dev_b,
                "host_bytes_per_token": host_b,
                "time_ratio": secs / base_time,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.tokens} tokens, window {a.window}, {dev} {dtype}, torch {torch.__version__}")
    print(
        f"{'storage':<14} {'ppl':>8} {'change':>8} {'passkey':>8} {'dev B/tok':>10} {'host B/tok':>10} {'time':>6}"
    )
    for r in rows:
        print(
            f"{r['storage']:<14} {r['ppl']:8.3f} {r['ppl_change']:+8.2%} {r['passkey']:>6}/3 "
            f"{r['device_bytes_per_token']:10.0f} {r['host_bytes_per_token']:10.0f} {r['time_ratio']:5.2f}x"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
