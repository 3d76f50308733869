# Two commands for a newcomer: `make run` (local stack, shows it working) and
# `make test` (the whole suite). Both bootstrap ./.venv from the lock file
# requirements/test.txt (exact versions and hashes), then the project itself, editable.

# The first Python 3.11+ that actually runs. Its errors go to /dev/null: a pyenv shim for a
# version that is not installed is on PATH yet fails when run, loudly.
PYTHON ?= $(shell for p in python3.14 python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/test.txt
RUNTIME_LOCK := requirements/runtime.txt
LATEST_VENV := .venv-latest
PIP := python -m pip --quiet --disable-pip-version-check
# The locks are universal (any OS, Python 3.11+) and carry every file's hash.
UV_COMPILE := pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock'

.PHONY: run test test-latest lint bench venv wheel lock lock-upgrade clean

$(STAMP): pyproject.toml $(LOCK)
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11 or newer on PATH)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) install --upgrade pip
	$(BIN)/$(PIP) install --require-hashes -r $(LOCK)
	@# setuptools warns that an editable install prefers folders named like the package
	@# in the working directory: here that folder is the very source it installs.
	PYTHONWARNINGS='ignore:Editable installation' \
		$(BIN)/$(PIP) install --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/audit-service dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# Test processes (pytest-xdist). Most of the suite waits on daemons, brokers and
# PostgreSQL rather than computing (one process keeps 2 cores about a quarter busy), so
# four share 2 cores well; each starts its own PostgreSQL and broker. worksteal: the long
# fault scenarios do not end up queued behind each other at the end.
TEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist worksteal

test: lint
	$(BIN)/pytest $(PYTEST_PARALLEL)

# The suite against the newest versions pyproject.toml's ranges allow (not the lock), in
# a separate, fresh virtualenv: what someone installing the package into their own
# environment gets today.
test-latest:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11 or newer on PATH)"; exit 2; }
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/$(PIP) install --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' \
		$(LATEST_VENV)/bin/$(PIP) install --upgrade -e '.[test]'
	@echo "newest versions the ranges allow:"
	@$(LATEST_VENV)/bin/python -m pip list --disable-pip-version-check --format=freeze
	$(LATEST_VENV)/bin/ruff check .
	$(LATEST_VENV)/bin/pytest $(PYTEST_PARALLEL)

# Re-resolve the locks after a change to pyproject.toml, keeping every pin that still
# fits; lock-upgrade moves every pin to the newest version the ranges allow. The runtime
# lock is constrained by the test lock, so the two never disagree.
lock:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11 or newer on PATH)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) install 'uv>=0.5'
	$(BIN)/uv $(UV_COMPILE) --extra test $(UPGRADE) -o $(LOCK)
	$(BIN)/uv $(UV_COMPILE) -c $(LOCK) -o $(RUNTIME_LOCK)

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

# The wheel operators install (docs/operations.md), built offline with the locked tools.
wheel: $(STAMP)
	$(BIN)/python -m build --wheel --no-isolation --outdir dist .

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) .audit-dev .pytest_cache .ruff_cache build dist *.egg-info
