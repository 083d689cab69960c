# steerlens — `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
# Locked installs: requirements.lock holds every package at the version the suite passed with
# (made by `make lock`): the default environment, every feature (TransformerLens 3.9 and the
# sae extra, until a sae-lens release accepts TransformerLens 4). requirements-tl4.lock is the
# same without sae-lens, on TransformerLens 4 (`make test-tl4`). requirements-nodeps.txt: the
# three packages installed without their dependencies (two carry data, one is a parity
# reference). uv installs exactly that.
UV_VERSION := 0.13.9
LOCK       := requirements.lock
NODEPS     := requirements-nodeps.txt
# The CPU build of torch: from this machine type's wheel folder, else PyTorch's CPU index.
WHEELS     := /opt/wheels
TORCH_SRC  := $(if $(wildcard $(WHEELS)/torch-*.whl),--find-links $(WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
LATEST     := .venv-latest
TL4        := .venv-tl4
TL4_LOCK   := requirements-tl4.lock
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header
# The serve environment (steerlens serve, engine="vllm"): vLLM's CPU build pins transformers and
# numpy below the main lock's, so it has its own lock and venv; the CUDA-only wheels PyPI gives
# for vLLM's torchvision / torchaudio / torchcodec / triton break `import vllm` on CPU torch and
# are left out of the lock (vLLM runs without them on the CPU).
SERVE      := .venv-serve
SERVE_LOCK := requirements-serve.lock
SERVE_SKIP := $(foreach p,torchvision torchaudio torchcodec triton,--no-emit-package $(p))
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install lock demo study test test-tl4 test-serve test-all test-latest _latest bench lint data chromium clean

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

# The locks, for Linux x86_64 / CPython 3.11 (torch pinned to the CPU build): brought in line
# with pyproject.toml, keeping every pinned version that still fits; `make lock
# LOCK_ARGS=--upgrade` moves them to the newest versions the ranges allow. The TransformerLens 4
# lock starts from the default one's versions. Run `make test test-tl4`, then commit them.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PIP) install -q uv==$(UV_VERSION)
	printf 'torch==2.13.0+cpu\nuv==$(UV_VERSION)\n' > $(VENV)/lock-constraints.txt
	$(UV) pip compile pyproject.toml --extra dev --extra explore --extra sae $(LOCK_PLATFORM) $(TORCH_SRC) \
		-c $(VENV)/lock-constraints.txt $(LOCK_ARGS) -o $(LOCK)
	test -f $(TL4_LOCK) || cp $(LOCK) $(TL4_LOCK)
	$(UV) pip compile pyproject.toml --extra dev --extra serve-cpu $(LOCK_PLATFORM) $(TORCH_SRC) \
		-c $(VENV)/lock-constraints.txt $(SERVE_SKIP) $(LOCK_ARGS) -o $(SERVE_LOCK)
	printf 'transformer-lens>=4\n' >> $(VENV)/lock-constraints.txt
	$(UV) pip compile pyproject.toml --extra dev --extra explore $(LOCK_PLATFORM) $(TORCH_SRC) \
		-c $(VENV)/lock-constraints.txt $(LOCK_ARGS) -o $(TL4_LOCK)

# The suite on TransformerLens 4, without sae-lens (its own environment, exactly its lock):
# the hooked-backend and SAE-training tests skip there, by name; the rest must pass.
$(TL4)/.installed: pyproject.toml $(TL4_LOCK) $(NODEPS)
	test -x $(TL4)/bin/python || $(PYTHON) -m venv $(TL4)
	test -x $(TL4)/bin/uv || $(TL4)/bin/python -m pip install -q uv==$(UV_VERSION)
	$(TL4)/bin/uv pip sync -q --python $(TL4)/bin/python $(TORCH_SRC) $(TL4_LOCK)
	$(TL4)/bin/uv pip install -q --python $(TL4)/bin/python --no-deps -r $(NODEPS)
	$(TL4)/bin/uv pip install -q --python $(TL4)/bin/python --no-deps -e .
	touch $@

test-tl4: $(TL4)/.installed
	$(TL4)/bin/python -m pytest -q -m "not slow"

# The serve suite in its own environment, exactly its lock: vLLM with the steering worker on
# the embedded model, offline and over HTTP (tests/serve), and the serve unit tests.
$(SERVE)/.installed: pyproject.toml $(SERVE_LOCK) $(NODEPS)
	test -x $(SERVE)/bin/python || $(PYTHON) -m venv $(SERVE)
	test -x $(SERVE)/bin/uv || $(SERVE)/bin/python -m pip install -q uv==$(UV_VERSION)
	$(SERVE)/bin/uv pip sync -q --python $(SERVE)/bin/python $(TORCH_SRC) $(SERVE_LOCK)
	$(SERVE)/bin/uv pip install -q --python $(SERVE)/bin/python --no-deps -r $(NODEPS)
	$(SERVE)/bin/uv pip install -q --python $(SERVE)/bin/python --no-deps -e .
	touch $@

test-serve: $(SERVE)/.installed
	$(SERVE)/bin/python -m pytest -q -p no:cacheprovider tests/serve tests/unit/serve

# The same suite on the newest versions the ranges allow, one environment per line, to see a
# moving dependency before a user does: every feature (the sae extra: TransformerLens 3.x while
# sae-lens requires it) in $(LATEST), and TransformerLens 4 without sae-lens in $(LATEST)-tl4.
# torch stays the CPU build this machine type has.
# Both lines run even when the first fails; the target fails if either did.
test-latest:
	status=0; \
	$(MAKE) --no-print-directory _latest LATEST_ENV=$(LATEST) LATEST_EXTRAS=dev,explore,sae LATEST_TL= \
		|| status=1; \
	$(MAKE) --no-print-directory _latest LATEST_ENV=$(LATEST)-tl4 LATEST_EXTRAS=dev,explore \
		LATEST_TL='transformer-lens>=4' || status=1; \
	exit $$status

_latest:
	test -x $(LATEST_ENV)/bin/python || $(PYTHON) -m venv $(LATEST_ENV)
	test -x $(LATEST_ENV)/bin/uv || $(LATEST_ENV)/bin/python -m pip install -q uv==$(UV_VERSION)
	printf 'torch==2.13.0+cpu\n$(LATEST_TL)\n' > $(LATEST_ENV)/constraints.txt
	$(LATEST_ENV)/bin/uv pip install -q --python $(LATEST_ENV)/bin/python --upgrade --refresh \
		$(TORCH_SRC) -c $(LATEST_ENV)/constraints.txt -e ".[$(LATEST_EXTRAS)]"
	$(LATEST_ENV)/bin/uv pip install -q --python $(LATEST_ENV)/bin/python --no-deps -r $(NODEPS)
	$(LATEST_ENV)/bin/uv pip list --python $(LATEST_ENV)/bin/python 2>/dev/null \
		| grep -iE '^(torch|transformers|transformer-lens|sae-lens|tokenizers) '
	$(LATEST_ENV)/bin/python -m pytest -q -m "not slow"

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
	rm -rf $(VENV) $(LATEST) $(LATEST)-tl4 $(TL4) $(SERVE) .pytest_cache .mypy_cache .ruff_cache
