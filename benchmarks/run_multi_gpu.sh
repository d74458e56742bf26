#!/usr/bin/env bash
# Two GPUs (kind nvidia-h200-x2): the layer-split test and benchmarks, in the order, one
# device call per step (each well inside the 10-minute limit; timeout_s 600). The machine stays warm
# only 30 s after a call, so make the calls back to back; a step on a bare machine stops and says so.
#
#   call 1 (~1 min):  bash benchmarks/gpu_setup.sh 1
#                     carry: .gpu/smol.gguf.part_aa .gpu/whl
#   call 2 (~3 min):  bash benchmarks/gpu_setup.sh 2 && bash benchmarks/run_multi_gpu.sh test
#                     carry: .gpu/smol.gguf.part_ab .gpu/data      (within 30 s of call 1)
#                     the bf16 split-vs-one-GPU test (tests/test_multi_gpu.py) and tests/test_device_map.py
#   call 3 (~9 min):  bash benchmarks/run_multi_gpu.sh llama
#                     Llama-3.1-8B shape, random bf16 weights, 1M tokens, whole bf16 cache split over
#                     the two cards (64 GiB each); prefill stops at 450 s (the tokens reached are reported)
#   call 4 (~3-5 min): bash benchmarks/run_multi_gpu.sh smol           # 1M, two-level, needle in Emma
#   call 5.. (<= 9 min each): bash benchmarks/run_multi_gpu.sh smol    # the next of 2M/4M/8M predicted
#                     to fit 540 s from the runs before (kept in /root/reattn/mgpu); stops with "done"
#                     when none fits. `smol TOKENS` forces a length.
#
# .gpu/data must hold texts/austen_emma.txt (cp /work/shared/data/texts/austen_emma.txt .gpu/data/texts/);
# without it the needle is a passkey. .gpu/whl: the wheels the image lacks, as for the other GPU runs.
# Everything lands in $OUT (or ./gpu_out): logs, JSON, nvidia-smi; smol's history also in $OUT.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
test -d /root/reattn/site || { echo "bare machine: run benchmarks/gpu_setup.sh 1 and 2 first"; exit 3; }
source benchmarks/gpu_env.sh
export PYTHONWARNINGS=ignore NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
TEXT=${TEXT:-/root/reattn/data/texts/austen_emma.txt}
HIST=/root/reattn/mgpu
mkdir -p "$HIST"
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m >>"$OUT/gpu.txt" 2>&1
case "${1:-}" in
  test)
    python3 -m pytest -q -p no:cacheprovider -rs -s tests/test_multi_gpu.py tests/test_device_map.py 2>&1 |
      tee "$OUT/test_multi_gpu.log" ;;
  llama)
    python3 benchmarks/multi_gpu.py llama --tokens 1048576 --budget-s 450 --out "$OUT/llama8b_1m.json" 2>&1 |
      tee "$OUT/llama8b_1m.log" ;;
  smol)
    text=(); [ -f "$TEXT" ] && text=(--text "$TEXT")
    python3 benchmarks/multi_gpu.py smol --tokens "${2:-auto}" --selection two_level --budget-s 540 \
      "${text[@]}" --history "$HIST" --out "$OUT/smol.json" 2>&1 | tee "$OUT/smol.log"
    rc=$?
    cat "$HIST"/smol_*.json >"$OUT/smol_history.json" 2>/dev/null
    exit $rc ;;
  *)
    echo "usage: $0 test | llama | smol [TOKENS|auto]" >&2; exit 2 ;;
esac
