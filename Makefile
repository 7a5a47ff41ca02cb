# deepmetric developer entry points. `make test` works from a fresh clone with only the machine's Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Installed first so that the CPU build is used (a bare `torch` requirement would pull the CUDA wheels).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.deepmetric-installed

.PHONY: install test lint demo fashion-mnist chromium bench-eval bench-data clean

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

# Fashion-MNIST from the Debian package when it is missing and apt can install it (root); otherwise the loader
# downloads it on first use, and its real-file tests are skipped with a message.
fashion-mnist: $(STAMP)
	@$(PY) -c "from deepmetric.data.fashion_mnist import locate; locate(download=False)" >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { \
	      apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	    echo "warning: could not install dataset-fashion-mnist"; \
	  else echo "warning: Fashion-MNIST not found and apt-get unavailable (not root?)"; fi; }

# Debian's chromium for the headless-browser tests of the report (skipped with a message when unavailable).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (Debian package) for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || { \
	      apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
	    echo "warning: could not install chromium"; \
	  else echo "warning: chromium not found and apt-get unavailable (not root?)"; fi; }

test: lint fashion-mnist chromium
	$(PY) -m pytest -q tests

# Train configs/demo.yaml (Fashion-MNIST zero-shot: classes 0–4 train, unseen 5–9 test) into runs/demo; prints the
# test metrics and the report's path.
demo: fashion-mnist
	rm -rf runs/demo
	$(PY) -m deepmetric train configs/demo.yaml --output runs/demo

bench-eval: $(STAMP)
	$(PY) benchmarks/eval_speed.py

bench-data: fashion-mnist
	$(PY) benchmarks/data_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build src/*.egg-info
