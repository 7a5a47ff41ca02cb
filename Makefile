# deepmetric developer entry points. `make test` works from a fresh clone with only the machine's Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Installed first so that the CPU build is used (a bare `torch` requirement would pull the CUDA wheels).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.deepmetric-installed

.PHONY: install test lint demo bench-eval clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev]"
	@touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

test: lint
	$(PY) -m pytest -q tests

demo: $(STAMP)
	@echo "make demo: the training engine is not available yet (see the open training issue)."

bench-eval: $(STAMP)
	$(PY) benchmarks/eval_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build src/*.egg-info
