# deepmetric developer entry points. `make test` works from a fresh clone with only the machine's Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Installed first so that the CPU build is used (a bare `torch` requirement would pull the CUDA wheels).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.deepmetric-installed

.PHONY: install test lint demo fashion-mnist glyph-fonts chromium bench-eval bench-data clean

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

# Debian's font packages the glyphs dataset renders (deepmetric.data.glyphs.FONT_PACKAGES), installed when one is
# missing and apt can install them (root); the dataset then uses whatever fonts there are.
glyph-fonts: $(STAMP)
	@pkgs="$$($(PY) -c "from deepmetric.data.glyphs import FONT_PACKAGES; print(' '.join(FONT_PACKAGES))")" || exit 1; \
	[ "$$(dpkg -s $$pkgs 2>/dev/null | grep -c '^Status: install ok installed$$')" = "$$(echo $$pkgs | wc -w)" ] || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing the glyph fonts ($$(echo $$pkgs | wc -w) Debian font packages)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$pkgs >/dev/null 2>&1 || { \
	      apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$pkgs >/dev/null 2>&1; } || \
	    echo "warning: could not install the glyph fonts: apt-get install --no-install-recommends $$pkgs"; \
	  else echo "warning: glyph fonts missing and apt-get unavailable (not root?): apt-get install --no-install-recommends $$pkgs"; fi; }

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

test: lint fashion-mnist glyph-fonts chromium
	$(PY) -m pytest -q tests

# Train configs/demo.yaml into runs/demo: an ImageNet-pretrained EfficientNet-Lite0 fine-tuned on the glyphs dataset
# (characters rendered from Debian's fonts; tested on characters unseen in training); prints the test metrics beside
# the pretrained baseline's, and the report's path.
demo: glyph-fonts
	rm -rf runs/demo
	$(PY) -m deepmetric train configs/demo.yaml --output runs/demo

bench-eval: $(STAMP)
	$(PY) benchmarks/eval_speed.py

bench-data: fashion-mnist
	$(PY) benchmarks/data_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build src/*.egg-info
