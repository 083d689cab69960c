# steerlens — `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
# Locked installs: requirements.lock holds every package at the version the suite passed with
# (made by `make lock`); requirements-nodeps.txt the three packages installed without their
# dependencies (two carry data, one is a parity reference). uv installs exactly that.
UV_VERSION := 0.13.9
LOCK       := requirements.lock
NODEPS     := requirements-nodeps.txt
# The CPU build of torch: from this machine type's wheel folder, else PyTorch's CPU index.
WHEELS     := /opt/wheels
TORCH_SRC  := $(if $(wildcard $(WHEELS)/torch-*.whl),--find-links $(WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
LATEST     := .venv-latest
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install lock demo study test test-all test-latest bench lint data chromium clean

install: $(STAMP)

# uv (itself pinned, and listed in the lock so that sync keeps it), then exactly the lock,
# then the three no-deps packages and the project itself (editable, no resolution).
$(STAMP): pyproject.toml $(LOCK) $(NODEPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PIP) install -q uv==$(UV_VERSION)
	$(UV) pip sync -q --python $(PY) $(TORCH_SRC) $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps -r $(NODEPS)
	$(UV) pip install -q --python $(PY) --no-deps -e .
	-$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# Refresh the lock: the newest versions pyproject.toml's ranges allow (torch pinned to the CPU
# build), for Linux x86_64 / CPython 3.11. Run `make test` after it and commit both files.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PIP) install -q uv==$(UV_VERSION)
	printf 'torch==2.13.0+cpu\nuv==$(UV_VERSION)\n' > $(VENV)/lock-constraints.txt
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(TORCH_SRC) --no-header \
		-c $(VENV)/lock-constraints.txt $(LOCK_ARGS) -o $(LOCK)

# The same suite on the newest versions the ranges allow (a separate environment), to see a
# moving dependency before a user does. torch stays the CPU build this machine type has.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	test -x $(LATEST)/bin/uv || $(LATEST)/bin/python -m pip install -q uv==$(UV_VERSION)
	printf 'torch==2.13.0+cpu\n' > $(LATEST)/constraints.txt
	$(LATEST)/bin/uv pip install -q --python $(LATEST)/bin/python --upgrade --refresh \
		$(TORCH_SRC) -c $(LATEST)/constraints.txt -e ".[dev]"
	$(LATEST)/bin/uv pip install -q --python $(LATEST)/bin/python --no-deps -r $(NODEPS)
	$(LATEST)/bin/uv pip list --python $(LATEST)/bin/python 2>/dev/null \
		| grep -iE '^(torch|transformers|transformer-lens|sae-lens|tokenizers) '
	$(LATEST)/bin/python -m pytest -q -m "not slow"

# PNG export (kaleido >= 1) needs a Chrome/Chromium; best effort, never fatal.
chromium:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: figures will be written as HTML only"; \
	else echo "no root/apt: figures will be written as HTML only"; fi

# The study, every step small (steerlens demo --quick), then its result page.
demo: install
	$(VENV)/bin/steerlens demo --quick --out .
	$(VENV)/bin/steerlens report --markdown --run . --out docs/results

# The whole study (steerlens demo --full).
study: install
	$(VENV)/bin/steerlens demo --full --out .
	$(VENV)/bin/steerlens report --markdown --run . --out docs/results

# Unit tests on tiny random models plus the integration tests not marked slow.
test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/run_all.py

data: install
	$(PY) -m steerlens.experiments.simulate --out steerlens/data/demo --seed 0

lint: install
	$(VENV)/bin/ruff check steerlens tests analyses benchmarks
	$(VENV)/bin/ruff format --check steerlens tests analyses benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .mypy_cache .ruff_cache
