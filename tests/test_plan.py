"""The memory plan against what a prefill really uses, and its storage-aware arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from reattn_llm import ReAttentionConfig
from reattn_llm.runtime.capacity import host_kv_bytes_per_token, kv_bytes_per_token
from tests.tiny_models import SMOLLM2_SHAPE as SMOL

ROOT = Path(__file__).resolve().parents[1]


def test_plan_is_within_20_percent_of_the_measured_peak_at_8k():
    """A fresh process (so the peak resident set is this prefill's): weights + KV + working set.

    glibc's malloc raises its mmap threshold after large frees and then keeps freed tensors in its
    heap, so the resident set's peak depends on the order of allocations; a fixed threshold makes
    every large tensor its own mapping, returned when freed, and the peak the live bytes'."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peak_memory.py"), "--tokens", "8192"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1200,
        check=True,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["tokens"] == 8192
    assert 0.8 <= row["ratio"] <= 1.2, row


def test_storage_options_change_device_and_host_bytes_per_token():
    cfg = ReAttentionConfig(selection="two_level").resolve(8192)
    bf16 = kv_bytes_per_token(SMOL, torch.bfloat16)
    assert bf16 == 2 * 30 * 3 * 64 * 2
    fp8 = kv_bytes_per_token(SMOL, torch.bfloat16, ReAttentionConfig(kv_dtype="fp8").resolve(8192))
    assert fp8 == 2 * 30 * 3 * (64 + 4)  # a byte per value and a 4-byte scale per row and head
    values = ReAttentionConfig(offload="values").resolve(8192)
    assert kv_bytes_per_token(SMOL, torch.bfloat16, values) == bf16 // 2
    assert host_kv_bytes_per_token(SMOL, torch.bfloat16, values) == bf16 // 2
    both = ReAttentionConfig(offload="keys_values", selection="two_level", kv_dtype="fp8").resolve(8192)
    # only the two-level block summaries stay on the device: 3 x 64 bf16 values per 32-key block
    assert kv_bytes_per_token(SMOL, torch.bfloat16, both) == 30 * 3 * 12
    assert host_kv_bytes_per_token(SMOL, torch.bfloat16, both) == fp8
    assert kv_bytes_per_token(SMOL, torch.bfloat16, cfg) == bf16
