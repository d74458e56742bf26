"""Layers split over two GPUs (accelerate's device_map): the Llama-3.1-8B shape at 1M, SmolLM2 with a needle.

    python3 benchmarks/multi_gpu.py llama --tokens 1048576 --out $OUT/llama8b_1m.json
    python3 benchmarks/multi_gpu.py smol --tokens 1048576 --text /root/reattn/data/texts/austen_emma.txt \\
        --selection two_level --out $OUT/smol_1m.json
    python3 benchmarks/multi_gpu.py smol --tokens auto --history /root/reattn/mgpu ...   # next length
    python3 benchmarks/multi_gpu.py llama --device cpu --tokens 2048     # code paths, tiny shapes, CPU

Every layer's K/V stays on its layer's card (no fp8, no host offload): embeddings and the first
half of the decoder layers on ``cuda:0``, the second half and the final norm on ``cuda:1``; the LM
head sits with the embeddings when they are tied (SmolLM2), else on the last card.

``llama``: the Llama-3.1-8B shape (random weights, bf16, built from a ``LlamaConfig`` with the 8B
sizes: nothing is downloaded) patched with ReAttention, ``--tokens`` random ids prefilled in pieces
of ``--piece`` through one cache (stopped at ``--budget-s`` seconds of prefill, and the tokens
reached are reported), then ``--steps`` decode steps timed (median, after 3 warm-up steps). The bf16
K/V of the 8B shape is 128 KiB per token: 128 GiB at 1M, 64 GiB per card.

``smol``: the default model (SmolLM2-135M-Instruct) through the package's ``Engine(device_map=...)``
with ``--selection`` (default two-level): a needle (``reattn_llm.calibration.needles.make_needle`` on
``--text``, wrapped around when the text is shorter than the prompt; a passkey when no text is
given) at ``--depth``, answered greedily; found or not, prefill and decode time, and per card the
peak memory. ``--tokens auto`` picks the next length of 1M, 2M, 4M, 8M whose predicted wall time
(from the runs kept in ``--history``, time growing as a fitted power of the length) stays under
``--budget-s``.

Printed as a table; each row is also written as JSON to ``--out`` (and kept in ``--history``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

LADDER = [1 << 20, 1 << 21, 1 << 22, 1 << 23]


def split_map(n_layers: int, devices: list[str], tied: bool) -> dict[str, str]:
    """``{module: device}`` for a Llama-style model: layers split evenly, in order, over ``devices``."""
    m = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0], "model.norm": devices[-1]}
    m |= {f"model.layers.{i}": devices[i * len(devices) // n_layers] for i in range(n_layers)}
    m["lm_head"] = devices[0] if tied else devices[-1]
    return m


def _devices(a: argparse.Namespace) -> list[str]:
    if a.device == "cpu":
        return ["cpu"] * a.gpus
    if torch.cuda.device_count() < a.gpus:
        raise SystemExit(
            f"needs {a.gpus} CUDA devices, found {torch.cuda.device_count()}: run on nvidia-h200-x2"
        )
    return [f"cuda:{i}" for i in range(a.gpus)]


def _sync(devices: list[str]) -> None:
    for d in sorted(set(devices)):
        if d.startswith("cuda"):
            torch.cuda.synchronize(d)


def _reset_peaks(devices: list[str]) -> None:
    for d in sorted(set(devices)):
        if d.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(d)


def _gib(devices: list[str], what: str = "peak") -> list[float]:
    f = torch.cuda.max_memory_allocated if what == "peak" else torch.cuda.memory_allocated
    return [round(f(d) / 2**30, 2) if d.startswith("cuda") else 0.0 for d in sorted(set(devices))]


# ----------------------------------------------------------------------------- Llama-3.1-8B shape


def llama_config(tiny: bool):
    """The Llama-3.1-8B sizes (or a tiny Llama of the same family for the CPU check)."""
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, rms_norm_eps=1e-5,
        )  # fmt: skip
    return LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
    )  # fmt: skip


def build_llama(devices: list[str], dtype: torch.dtype, tiny: bool):
    """Random-weight model built on the first device, then its layers dispatched over ``devices``."""
    from accelerate import dispatch_model
    from transformers import LlamaForCausalLM

    cfg = llama_config(tiny)
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(devices[0]):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    m = split_map(cfg.num_hidden_layers, devices, tied=False)
    return dispatch_model(model, device_map=m, force_hooks=devices[0] == "cpu")


@torch.inference_mode()
def llama_run(a: argparse.Namespace) -> dict[str, Any]:
    from reattn_llm import ReAttentionConfig, patch
    from reattn_llm.method.patch import make_cache

    devices = _devices(a)
    cpu = a.device == "cpu"
    t0 = time.perf_counter()
    model = build_llama(devices, torch.float32 if cpu else torch.bfloat16, tiny=cpu)
    build_s = time.perf_counter() - t0
    if cpu:  # the tiny model's window is 256: sizes that make the selection run within 2K tokens
        cfg = ReAttentionConfig(window=128, global_size=8, local_size=64, span_size=8, max_spans=6,
                                chunk_size=32, backend="torch", selection=a.selection)  # fmt: skip
    else:
        cfg = ReAttentionConfig(backend="triton", selection=a.selection)
    vocab = model.config.vocab_size
    g = torch.Generator(device=devices[0]).manual_seed(0)
    steps, warm = a.steps, 3
    with patch(model, cfg):
        if not cpu:  # Triton compiles and cuBLAS handles, outside the timings
            c = make_cache(model)
            model(torch.randint(0, vocab, (1, 4096), device=devices[0], generator=g), past_key_values=c,
                  use_cache=True, logits_to_keep=1)  # fmt: skip
            model(torch.randint(0, vocab, (1, 1), device=devices[0]), past_key_values=c, use_cache=True)
            del c
            torch.cuda.empty_cache()
        before = _gib(devices, "now")
        _reset_peaks(devices)
        cache = make_cache(model, reserve=a.tokens + steps + warm + 1)
        done, prefill_s = 0, 0.0
        while done < a.tokens:
            n = min(a.piece, a.tokens - done)
            ids = torch.randint(0, vocab, (1, n), device=devices[0], generator=g)
            _sync(devices)
            t = time.perf_counter()
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            _sync(devices)
            prefill_s += time.perf_counter() - t
            done += n
            print(
                f"  prefill {done} tokens, {prefill_s:.1f} s, GiB per card {_gib(devices, 'now')}", flush=True
            )
            if prefill_s > a.budget_s and done < a.tokens:
                print(f"  prefill stopped by --budget-s {a.budget_s} at {done} tokens", flush=True)
                break
        peak_prefill = _gib(devices)
        after = _gib(devices, "now")
        tok = ids[:, -1:]
        times = []
        for s in range(warm + steps):
            _sync(devices)
            t = time.perf_counter()
            out = model(tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1:].argmax(-1).to(devices[0])
            _sync(devices)
            if s >= warm:
                times.append(time.perf_counter() - t)
        cache_devices = sorted({str(layer.keys.device) for layer in cache.layers})
    return {
        "bench": "llama8b" if not cpu else "llama-tiny",
        "gpus": len(devices),
        "devices": devices,
        "tokens": done,
        "selection": a.selection,
        "build_s": round(build_s, 1),
        "prefill_s": round(prefill_s, 2),
        "tok_per_s": round(done / prefill_s),
        "decode_ms": round(1e3 * sorted(times)[len(times) // 2], 2),
        "peak_gib": _gib(devices),
        "peak_prefill_gib": peak_prefill,
        "cache_gib": [round(x - y, 2) for x, y in zip(after, before, strict=True)],
        "cache_devices": cache_devices,
    }


# ----------------------------------------------------------------------------- SmolLM2 needle


class ParallelCount:
    """A tokenizer whose ``tokenizer(text).input_ids`` encodes a long text as a batch of pieces cut
    just before a space that follows a sentence's end, so the fast tokenizer's threads share it.

    ``make_needle`` sizes its prompt by a binary search that tokenizes the whole prompt ~20 times;
    at millions of tokens one thread would take minutes. A byte-level BPE pre-tokenizer never merges
    across a space that starts a word, so the pieces' ids, concatenated, are the whole text's ids
    (``--check-tokenizer`` compares the two on the text given).
    """

    def __init__(self, tokenizer: Any, piece_chars: int = 200_000) -> None:
        self._tok, self._n = tokenizer, piece_chars

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, text: str, add_special_tokens: bool = False, **kw: Any) -> Any:
        if kw or len(text) <= 2 * self._n:
            return self._tok(text, add_special_tokens=add_special_tokens, **kw)
        cuts, pos = [0], self._n
        while pos < len(text):
            m = re.compile(r"[.!?] (?=[A-Z\"'])").search(text, pos)
            if m is None:
                break
            cuts.append(m.start() + 1)
            pos = m.start() + 1 + self._n
        pieces = [text[s:e] for s, e in zip(cuts, [*cuts[1:], len(text)], strict=True)]
        enc = self._tok(pieces, add_special_tokens=add_special_tokens)
        return SimpleNamespace(input_ids=[i for p in enc["input_ids"] for i in p])


def _history(path: str | None) -> list[dict]:
    if not path or not Path(path).is_dir():
        return []
    rows = [json.loads(p.read_text()) for p in sorted(Path(path).glob("smol_*.json"))]
    return sorted(
        (r for r in rows if r.get("bench") == "smol" and r.get("completed")), key=lambda r: r["tokens"]
    )


def pick_tokens(history: list[dict], budget_s: float) -> int | None:
    """The longest ladder length not yet run whose predicted wall time fits ``budget_s``: time
    grows as ``T**p`` with ``p`` fitted on the two longest runs (``p = 2``, quadratic, from one)."""
    if not history:
        return LADDER[0]
    last = history[-1]
    p = 2.0
    if len(history) >= 2 and history[-2]["tokens"] < last["tokens"]:
        a, b = history[-2], last
        p = max(1.0, math.log(b["wall_s"] / a["wall_s"]) / math.log(b["tokens"] / a["tokens"]))
    best = None
    for t in LADDER:
        predicted = last["wall_s"] * (t / last["tokens"]) ** p
        if t > last["tokens"] and predicted <= budget_s:
            best = t
        print(f"  {t:>9} tokens: predicted {predicted:6.0f} s (power {p:.2f} from {last['tokens']})")
    return best


def smol_run(a: argparse.Namespace) -> dict[str, Any]:
    from reattn_llm import ReAttentionConfig
    from reattn_llm.calibration.needles import make_needle
    from reattn_llm.lab.evaluation import passkey_prompt
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.models import load_config
    from reattn_llm.runtime.sampling import SamplingParams

    t_start = time.perf_counter()
    devices = _devices(a)
    cpu = a.device == "cpu"
    shape = load_config(None)
    dmap = split_map(shape.num_hidden_layers, devices, tied=bool(shape.tie_word_embeddings))
    if cpu:
        cfg = ReAttentionConfig(window=512, global_size=4, local_size=256, span_size=16, max_spans=15,
                                chunk_size=128, selection=a.selection)  # fmt: skip
    else:
        cfg = ReAttentionConfig(selection=a.selection)
    eng = Engine(None, device=devices[0], config=cfg, device_map=dmap, progress=False, keep_prefix=False)
    tok = eng.tokenizer
    t = time.perf_counter()
    if a.text:
        text = " ".join(Path(p).read_text(encoding="utf-8") for p in a.text.split(","))
        needle = make_needle(text, ParallelCount(tok), a.tokens, a.depth, random.Random(a.seed), repeat=True)
        prompt, answer, kind = needle.prompt(tok), needle.answer, "needle"
    else:
        answer = str(random.Random(a.seed).randint(10000, 99999))
        prompt, kind = passkey_prompt(tok, a.tokens, a.depth, answer), "passkey"
    build_s = time.perf_counter() - t
    eng.load()
    _reset_peaks(devices)
    done = eng.complete(prompt, SamplingParams(max_new_tokens=16), chat=False, question_start=None)
    cache_devices = sorted({str(p.device) for p in eng.model.parameters()})
    return {
        "bench": "smol",
        "gpus": len(devices),
        "devices": devices,
        "tokens": done.prompt_tokens,
        "asked_tokens": a.tokens,
        "selection": a.selection,
        "what": kind,
        "depth": a.depth,
        "found": answer in done.text,
        "answer": done.text,
        "expected": answer,
        "build_prompt_s": round(build_s, 1),
        "prefill_s": round(done.prefill_seconds, 2),
        "tok_per_s": round(done.prompt_tokens / done.prefill_seconds),
        "decode_ms": round(1e3 * done.decode_seconds / max(1, done.completion_tokens), 2),
        "peak_gib": _gib(devices),
        "weight_devices": cache_devices,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "completed": True,
    }


def check_tokenizer(path: str) -> None:
    from reattn_llm.runtime.models import load_tokenizer

    tok = load_tokenizer(None)
    text = Path(path).read_text(encoding="utf-8")
    text = re.sub(r"\s+", " ", text)
    whole = tok(text, add_special_tokens=False).input_ids
    parts = ParallelCount(tok, piece_chars=20_000)(text).input_ids
    print(
        f"tokenizer check on {path}: {len(whole)} tokens whole, {len(parts)} in pieces, equal: {whole == parts}"
    )
    if whole != parts:
        raise SystemExit(1)


def _table(rows: list[dict]) -> None:
    print(f"\n{'bench':>10} {'gpus':>4} {'tokens':>9} {'sel':>9} {'found':>5} {'prefill s':>9} "
          f"{'tok/s':>7} {'decode ms':>9}  peak GiB per card")  # fmt: skip
    for r in rows:
        peaks = " ".join(f"{x:.1f}" for x in r["peak_gib"])
        print(f"{r['bench']:>10} {r['gpus']:>4} {r['tokens']:>9} {r['selection']:>9} {r.get('found', '-')!s:>5} "
              f"{r['prefill_s']:9.1f} {r['tok_per_s']:>7} {r['decode_ms']:9.1f}  {peaks}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", choices=["llama", "smol", "check-tokenizer"])
    p.add_argument("--tokens", default="1048576", help="prompt tokens, or 'auto' (smol: next ladder length)")
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: tiny shapes, code paths only"
    )
    p.add_argument("--selection", default=None, choices=["exact", "two_level"],
                   help="default: exact for llama, two_level for smol")  # fmt: skip
    p.add_argument("--piece", type=int, default=32768, help="llama: tokens per model call")
    p.add_argument("--steps", type=int, default=16, help="llama: decode steps timed")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="llama: stop the prefill past this; smol auto: predicted wall time allowed")  # fmt: skip
    p.add_argument("--text", default=None, help="smol: text file(s), comma-separated, for the needle")
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", default=None, help="folder keeping every smol result (for --tokens auto)")
    p.add_argument("--out", default=None, help="JSON file for the result")
    a = p.parse_args()
    if a.bench == "check-tokenizer":
        return check_tokenizer(a.text)
    a.selection = a.selection or ("two_level" if a.bench == "smol" else "exact")
    if a.tokens == "auto":
        if a.bench != "smol":
            raise SystemExit("--tokens auto is for smol")
        picked = pick_tokens(_history(a.history), a.budget_s)
        if picked is None:
            raise SystemExit(f"no longer length is predicted to fit {a.budget_s} s: done")
        a.tokens = picked
    a.tokens = int(a.tokens)
    if a.device == "cuda":
        print(
            f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}",
            flush=True,
        )
    print(
        f"{a.bench}: {a.tokens} tokens over {a.gpus} {a.device} devices, {a.selection} selection", flush=True
    )
    row = llama_run(a) if a.bench == "llama" else smol_run(a)
    print(json.dumps(row), flush=True)
    for dest in [a.out, a.history and os.path.join(a.history, f"smol_{row['asked_tokens']}.json")]:
        if dest and (dest == a.out or a.bench == "smol"):
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            Path(dest).write_text(json.dumps(row, indent=1))
    _table([row])


if __name__ == "__main__":
    main()
