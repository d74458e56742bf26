#!/usr/bin/env bash
# One device call: GPU correctness checks (the kernels against their torch twins; the GPU-only tests,
# CUDA-graph decode included, which need the default model: gpu_setup.sh 1 and 2 first), then kernel
# (and optionally end-to-end) benchmarks; end to end decodes from CUDA graphs too (kernels.py --graphs).
#   bash benchmarks/run_kernels_gpu.sh "--micro --sweep" "llama32k,llama128k"
#   AB=1 SKIP_CHECK= bash benchmarks/run_kernels_gpu.sh "" "llama32k"    # the scoring A/B, checks, one e2e
#   OPS_AB=1 SKIP_CHECK=1 bash benchmarks/run_kernels_gpu.sh "" "llama32k,llama128k"  # e2e (graphs) with the
#     model's RMSNorm / MLP fused (the default) and stock (kernels.py --stock-ops), the model-ops checks first
#   PREFIX_AB=1 SKIP_CHECK=1 bash benchmarks/run_kernels_gpu.sh "" "llama32k"  # e2e, then again with the
#     prefill prefix through cuDNN (kernels.py --attn-prefix cudnn), alternating, two of each
#   QS_AB=1 SKIP_CHECK=1 bash benchmarks/run_kernels_gpu.sh "" "llama32k,llama128k"  # e2e prefills (medians of
#     PREFILL_REPEATS, default 3) with every query voting and with query_stride=2, exact, then two-level at 128K
#   CARD=H200 bash benchmarks/run_kernels_gpu.sh "" "llama128k"   # only on that card (a target stated for the
#     H200, the two-level decode's 10 ms): on any other the call stops after nvidia-smi, costing seconds
#   PREFILL_REPEATS=5: --e2e's prefill figures are medians of 5 (stock and ReAttention; kernels.py --prefill-repeats)
# Logs and JSON land in $OUT (or ./gpu_out when OUT is unset).
set -o pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONWARNINGS=ignore
MICRO=${1:-"--micro --sweep"}
E2E=${2:-""}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv | tee "$OUT/gpu.txt"
if [ -n "$CARD" ] && ! grep -q "$CARD" "$OUT/gpu.txt"; then echo "not a $CARD: nothing run"; exit 0; fi
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
if [ -z "$SKIP_CHECK" ]; then
  python3 benchmarks/gpu_kernels_check.py --json "$OUT/check.json" 2>&1 | tee "$OUT/check.log" | grep -v '^PASS'
  python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_select_kernel.py tests/test_batched_chunks.py \
    tests/test_cudnn_prefix.py tests/test_phi3.py tests/test_model_ops.py -k "graph or cuda or gpu or partial_rotary_itself" \
    2>&1 | tail -3 | tee "$OUT/pytest_gpu.log"
fi
# AB=1: score_topk's, level 1's and decode attention's variants against their defaults first (same inputs;
# decode replayed from a graph)
if [ -n "$AB" ]; then
  python3 benchmarks/scoring_ab.py 2>&1 | tee "$OUT/scoring_ab.log" | grep '^|'
fi
args=($MICRO)
# the prefill into a cache reserved for the prompt and the decode steps, as the engine reserves (run 22 on)
if [ -n "$E2E" ]; then args+=(--e2e "$E2E" --graphs --reserve --prefill-repeats "${PREFILL_REPEATS:-1}"); fi
if [ -n "$OPS_AB" ] && [ -n "$E2E" ]; then
  python3 benchmarks/gpu_kernels_check.py --only "model ops" --json "$OUT/check_ops.json" 2>&1 | tee "$OUT/check_ops.log"
  for ops in fused stock; do
    flag=(); [ $ops = stock ] && flag=(--stock-ops)
    PROFILE=none python3 benchmarks/kernels.py --e2e "$E2E" --graphs --graph-buckets 32 "${flag[@]}" \
      --json "$OUT/e2e_ops_$ops.json" 2>&1 | tee "$OUT/e2e_ops_$ops.log" | grep '^\[e2e\]'
  done
  exit 0
fi
if [ -n "$QS_AB" ] && [ -n "$E2E" ]; then
  for sel in exact two_level; do
    e=$E2E; [ $sel = two_level ] && e=llama128k
    for qs in 1 2; do
      PROFILE=none python3 benchmarks/kernels.py --e2e "$e" --selection $sel --prefill-repeats "${PREFILL_REPEATS:-3}" \
        --set query_stride=$qs --json "$OUT/e2e_${sel}_qs$qs.json" 2>&1 | tee "$OUT/e2e_${sel}_qs$qs.log" | grep '^\[e2e\].*prefill'
    done
  done
  exit 0
fi
if [ -n "$PREFIX_AB" ] && [ -n "$E2E" ]; then
  for r in 1 2; do for p in triton cudnn; do
    PROFILE=none python3 benchmarks/kernels.py --e2e "$E2E" --attn-prefix $p --json "$OUT/e2e_${p}_$r.json" \
      2>&1 | tee "$OUT/e2e_${p}_$r.log" | grep '^\[e2e\].*prefill'
  done; done
  exit 0
fi
python3 benchmarks/kernels.py "${args[@]}" --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log" | grep -v -- '-sweep\]'
# PREFILL_FORWARDS=1: the engine's prefill with whole chunks joined against a forward per chunk, on the
# default model (gpu_setup.sh 1 and 2 first, call 2 carrying .gpu/data: the prose), BENCHMARKS.md "Prefill forwards"
if [ -n "$PREFILL_FORWARDS" ]; then
  python3 benchmarks/prefill_forward.py --device cuda --tokens 131072 --forwards 0,2048,8192,32768 --repeats 2 \
    --texts "${TEXTS:-/root/reattn/data/texts}" \
    2>&1 | tee "$OUT/prefill_forward.log"
  # the same joined forwards with their chunks selected one by one: the batched selection's baseline
  python3 benchmarks/prefill_forward.py --device cuda --tokens 131072 --forwards 8192 --batched both --repeats 2 \
    --texts "${TEXTS:-/root/reattn/data/texts}" \
    2>&1 | tee "$OUT/prefill_batched.log"
fi
