#!/usr/bin/env bash
# Build .gpu/nbwhl/nbsite.tar.xz: what the notebooks need beyond the device image, installed for
# CPython 3.12 / manylinux x86_64, each package pinned to the version in this repo's .venv (the list,
# and why these and not others: BENCHMARKS.md, Notebooks). benchmarks/run_notebooks_gpu.sh unpacks
# it. Also writes .gpu/nbwhl/MANIFEST.txt (one "name==version  wheel" line per wheel), to compare
# with the device image when it changes. Needs the package registry (pip's configured index).
#
#   bash benchmarks/build_nbsite.sh        (PY=... to read the versions from another interpreter)
#
# Idempotent: everything is built in a temporary directory and the two files are replaced at the
# end, so a failed run leaves the previous ones as they were.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUTDIR=.gpu/nbwhl
[ -x "$PY" ] || { echo "build_nbsite: $PY not found; create the venv (README, Install) or set PY=" >&2; exit 2; }

PACKAGES=(
  nbclient nbformat ipykernel ipython jupyter-client jupyter-core traitlets pyzmq tornado comm
  matplotlib-inline jsonschema referencing rpds-py jsonschema-specifications fastjsonschema
  prompt-toolkit wcwidth stack-data executing asttokens pure-eval pexpect ptyprocess
  ipython-pygments-lexers nest-asyncio nest-asyncio2 platformdirs langchain-core
  langchain-protocol langsmith httpx2 httpcore2 truststore orjson uuid-utils distro
  requests-toolbelt sniffio jsonpatch jsonpointer tenacity pydantic pydantic-core
  annotated-types typing-inspection typing-extensions llama-index-core
  llama-index-workflows llama-index-instrumentation sqlalchemy greenlet dataclasses-json
  marshmallow banks griffe griffelib griffecli deprecated dirtyjson filetype tinytag
  defusedxml
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
  manylinux_2_24_x86_64 manylinux1_x86_64 manylinux_2_34_x86_64)
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all:)
for p in "${PLATFORMS[@]}"; do TARGET+=(--platform "$p"); done

# Pins from .venv; every missing package is named before anything is downloaded.
PINS_TXT=$("$PY" - "${PACKAGES[@]}" <<'EOF'
import importlib.metadata as md
import sys

missing = []
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"build_nbsite: not installed in {sys.prefix}: {', '.join(missing)}; "
             f"install them there (pip install -e '.[dev,llamaindex]') so that their versions can be pinned")
EOF
)
mapfile -t PINS <<<"$PINS_TXT"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PIP=("$PY" -m pip -q --disable-pip-version-check)

echo "build_nbsite: downloading ${#PINS[@]} wheels for CPython 3.12 manylinux x86_64"
if ! "${PIP[@]}" download --no-deps "${TARGET[@]}" -d "$TMP/whl" "${PINS[@]}"; then
  echo "build_nbsite: a package above has no CPython 3.12 manylinux x86_64 wheel at the version in" \
    "$PY; pin one that has (pip's message names it)" >&2
  exit 1
fi
"${PIP[@]}" install --no-index --no-deps --no-compile --target "$TMP/stage" "${TARGET[@]}" "$TMP/whl"/*.whl

# Left out because nothing on the notebooks' path imports them (BENCHMARKS.md, Notebooks).
rm -rf "$TMP/stage/bin" "$TMP/stage/llama_index/core/_static/nltk_cache"
find "$TMP/stage/sqlalchemy" -name '*.so' -delete
for d in nbclient llama_index/core langchain_core; do
  [ -d "$TMP/stage/$d" ] || { echo "build_nbsite: $d missing from the staged site" >&2; exit 1; }
done

mkdir -p "$OUTDIR"
{
  echo "# nbsite.tar.xz: CPython 3.12 manylinux x86_64 wheels, versions from $PY (benchmarks/build_nbsite.sh)"
  for w in "$TMP/whl"/*.whl; do
    b=$(basename "$w")
    IFS=- read -r name version _ <<<"$b"
    printf '%s==%s  %s\n' "$name" "$version" "$b"
  done | LC_ALL=C sort -f
} >"$TMP/MANIFEST.txt"

tar -cf - --sort=name -C "$TMP/stage" . | xz -9 >"$TMP/nbsite.tar.xz"
mv -f "$TMP/nbsite.tar.xz" "$OUTDIR/nbsite.tar.xz"
mv -f "$TMP/MANIFEST.txt" "$OUTDIR/MANIFEST.txt"

bytes=$(stat -c %s "$OUTDIR/nbsite.tar.xz")
wheels=$(du -sb "$TMP/whl" | cut -f1)
echo "build_nbsite: $OUTDIR/nbsite.tar.xz $(awk -v b="$bytes" 'BEGIN{printf "%.1f MB", b/1e6}') ($bytes bytes;" \
  "$(ls "$TMP/whl" | wc -l) wheels, $(awk -v b="$wheels" 'BEGIN{printf "%.1f MB", b/1e6}') as wheels); list: $OUTDIR/MANIFEST.txt"
