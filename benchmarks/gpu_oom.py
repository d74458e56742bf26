"""A real out-of-memory during prefill on the GPU: the engine raises OutOfMemoryError, frees the
request's cache (allocated memory back to its pre-request level) and answers the next request.

    python benchmarks/gpu_oom.py
"""

from __future__ import annotations

import sys

import torch

from reattn_llm.errors import OutOfMemoryError
from reattn_llm.lab.evaluation import passkey_prompt
from reattn_llm.runtime.engine import Engine, SamplingParams


def main() -> int:
    dev = torch.device("cuda")
    eng = Engine(None, device="cuda", progress=False, keep_prefix=False).load()
    small = passkey_prompt(eng.tokenizer, 20_000, 0.5, "46172")
    big = passkey_prompt(eng.tokenizer, 400_000, 0.5, "46172")  # ~9 GiB of bf16 K/V
    eng.complete(small, SamplingParams(max_new_tokens=2), chat=False)  # warm-up: one-time workspaces
    free, _ = torch.cuda.mem_get_info(dev)
    ballast = torch.empty(free - (4 << 30), dtype=torch.uint8, device=dev)  # leave ~4 GiB
    eng.check_fits = lambda *a: None  # type: ignore[method-assign]  # let the prompt reach the prefill
    before = torch.cuda.memory_allocated(dev)
    try:
        eng.complete(big, SamplingParams(max_new_tokens=4), chat=False)
        print("no OOM happened", file=sys.stderr)
        return 1
    except OutOfMemoryError as e:
        msg = str(e)
    after = torch.cuda.memory_allocated(dev)
    ok = eng.complete(small, SamplingParams(max_new_tokens=8), chat=False)
    del ballast
    print("| what | value |\n|---|---|")
    print(f"| error | OutOfMemoryError: {msg[:90]}... |")
    print(f"| allocated before the request | {before / 2**30:.3f} GiB |")
    print(f"| allocated after the error | {after / 2**30:.3f} GiB |")
    print(f"| next request (20K tokens) answer | {ok.text!r} (found: {'46172' in ok.text}) |")
    return 0 if after <= before and "46172" in ok.text else 1


if __name__ == "__main__":
    raise SystemExit(main())
