# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bastion-setup

.PHONY: setup browser run test test-unit test-dist test-system test-fast bench lint clean

setup: $(STAMP)

# Idempotent: the stamp is rebuilt only when the project definition changes.
# torch is pinned to the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/bastion demo

# Debian's Chromium for the report's browser tests, installed when absent (skipped, saying why, where it cannot be).
browser:
	scripts/install_chromium.sh

# Every tier fails if a test rewrote a tracked file (tests/conftest.py).
PYTEST := BASTION_CHECK_TRACKED=1 $(BIN)/python -m pytest -q
# The single-process tiers spread over two workers (pytest-xdist); the multi-process and Slurm tiers already
# fill the cores with their own ranks, so they run one test at a time.
PYTEST_SPREAD := $(PYTEST) -n 2

test: setup browser
	$(PYTEST_SPREAD) tests/unit tests/validation
	$(PYTEST) tests/dist tests/system

test-unit: setup browser
	$(PYTEST_SPREAD) tests/unit

test-dist: setup
	$(PYTEST) tests/dist

test-system: setup
	$(PYTEST) tests/system

test-fast: setup browser
	$(PYTEST_SPREAD) tests/unit tests/validation

bench: setup
	$(BIN)/python benchmarks/run_all.py

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
