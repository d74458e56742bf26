#!/usr/bin/env bash
# Device-machine set-up, in two calls (one command may carry at most 64 MiB):
#   call 1: bash benchmarks/gpu_setup.sh 1   (carry .gpu/smol.gguf.part_aa and .gpu/whl)
#   call 2: bash benchmarks/gpu_setup.sh 2   (carry .gpu/smol.gguf.part_ab and .gpu/data), within 30 s
# Afterwards: source benchmarks/gpu_env.sh in every later call on the same (warm) machine.
set -euo pipefail
stage=${1:?stage 1 or 2}
mkdir -p /root/reattn
if [ "$stage" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/reattn/site .gpu/whl/*.whl
  cp .gpu/smol.gguf.part_aa /root/reattn/
  echo "stage 1 done: $(ls /root/reattn)"
else
  test -f /root/reattn/smol.gguf.part_aa || { echo "stage 1 missing: the machine was given back; run stage 1 again"; exit 3; }
  cat /root/reattn/smol.gguf.part_aa .gpu/smol.gguf.part_ab > /root/reattn/smol.gguf
  echo "a1231443440b107ff29f02bdb38c9d0a  /root/reattn/smol.gguf" | md5sum -c -
  mkdir -p /root/reattn/data && cp -r .gpu/data/* /root/reattn/data/ 2>/dev/null || true
  source benchmarks/gpu_env.sh
  python3 -c "from reattn_llm.runtime.models import default_model_dir; print(default_model_dir())"
fi
