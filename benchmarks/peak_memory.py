"""Planned vs measured peak memory of a prefill (CPU: the process's peak resident set).

    python benchmarks/peak_memory.py --tokens 8192 [--kv-dtype fp8] [--offload values]

Prints one JSON line: the plan's KV / weights / working-reserve bytes, the measured peak and
their ratio. The peak is the process's peak resident set (VmHWM) during the prefill, reset once
the weights are loaded (so loading's transients, such as the file pages read, don't count),
minus the resident set before the weights were loaded. ``tests/test_plan.py`` runs it in a fresh process at 6K tokens on the default model.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

import torch


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Start the peak resident set (VmHWM) again from the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--kv-dtype", default="model")
    p.add_argument("--offload", default="none")
    p.add_argument("--selection", default="exact")
    p.add_argument(
        "--prefill-forward", type=int, default=None, help="tokens per prefill forward (default: the config's)"
    )
    a = p.parse_args()

    from reattn_llm import ReAttentionConfig
    from reattn_llm.cli import SAMPLE
    from reattn_llm.runtime.engine import Engine
    from reattn_llm.runtime.models import load_config
    from reattn_llm.runtime.plan import make_plan

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = ReAttentionConfig(
        kv_dtype=a.kv_dtype, offload=a.offload, selection=a.selection, prefill_forward=a.prefill_forward
    )
    engine = Engine(None, device="cpu", dtype="fp32", config=cfg, progress=False)
    tok = engine.tokenizer
    ids = tok(SAMPLE.read_text(), add_special_tokens=False)["input_ids"]
    ids = (ids * (a.tokens // len(ids) + 1))[: a.tokens]
    plan = make_plan(load_config(None), engine.config, a.tokens, engine.device, engine.dtype)
    before = _status_bytes("VmRSS")
    engine.load()
    gc.collect()
    loaded = _status_bytes("VmRSS") - before
    if not _reset_peak():  # loading's transients (file pages, conversions) then count in the peak
        print(
            "warning: cannot reset the peak resident set; it includes the weights' loading", file=sys.stderr
        )
    cache = engine._cache_for(ids, a.tokens)[0]
    with torch.inference_mode():
        engine.prefill(torch.tensor([ids]), cache, start=0, tail=0)
    peak = _status_bytes("VmHWM") - before
    planned = plan.kv_bytes + plan.host_kv_bytes + plan.weight_bytes + plan.reserve_bytes
    print(
        json.dumps(
            {
                "tokens": a.tokens,
                "planned_bytes": planned,
                "kv_bytes": plan.kv_bytes + plan.host_kv_bytes,
                "weight_bytes": plan.weight_bytes,
                "reserve_bytes": plan.reserve_bytes,
                "measured_weights_bytes": loaded,
                "measured_peak_bytes": peak,
                "ratio": planned / peak,
            }
        )
    )


if __name__ == "__main__":
    main()
