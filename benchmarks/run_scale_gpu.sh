#!/usr/bin/env bash
# The scale measurements still owed to BENCHMARKS.md, one step per device call (each fits the
# 10-minute limit). Run after benchmarks/gpu_setup.sh and `source benchmarks/gpu_env.sh`:
#   bash benchmarks/run_scale_gpu.sh storage      # fp8 / offload on the GPU: quality, bytes, time (128K)
#   bash benchmarks/run_scale_gpu.sh ppl1m        # all six novels + the dictionary (~1.09M tokens)
#   bash benchmarks/run_scale_gpu.sh passkey2m D  # 2M-token passkey at depth D (0.1, 0.5 or 0.9)
#   bash benchmarks/run_scale_gpu.sh twogpu       # layers split over 2 cards vs 1 (nvidia-h200-x2)
# Logs and JSON land in $OUT (or ./gpu_out when OUT is unset).
set -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
TEXTS=${TEXTS:-/root/reattn/data/texts}  # copied there by gpu_setup.sh from .gpu/data/texts
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/gpu.txt"
case "$1" in
  storage)
    python3 benchmarks/storage.py --device cuda --window 8192 --tokens 131072 \
      --text "$TEXTS/austen_emma.txt" --json "$OUT/storage_gpu.json" 2>&1 | tee "$OUT/storage.log" ;;
  ppl1m)
    all=$(ls "$TEXTS"/austen_*.txt "$TEXTS"/bierce_devils_dictionary.txt | paste -sd, -)
    python3 benchmarks/long_context.py ppl --text "$all" --modes reattention --selection "${SELECTION:-exact}" \
      --out "$OUT/ppl1m.json" 2>&1 | tee "$OUT/ppl1m.log" ;;
  passkey2m)
    python3 benchmarks/scale.py passkey --lengths 2097152 --depths "${2:-0.5}" --selection "${SELECTION:-exact}" \
      --out "$OUT/passkey2m_${2:-0.5}.json" 2>&1 | tee "$OUT/passkey2m.log" ;;
  twogpu)
    exec bash benchmarks/run_multi_gpu.sh "${2:-test}" ;;  # test | llama | smol: see that script
  *)
    echo "usage: $0 storage | ppl1m | passkey2m DEPTH | twogpu" >&2; exit 2 ;;
esac
