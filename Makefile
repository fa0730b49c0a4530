# Panda Professor: `make run` serves the app, `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TEST_TIMEOUT ?= 3600
PYTEST_ARGS ?=

.PHONY: run test install install-dev test-deps lint clean

$(BIN)/python:
	bash scripts/ensure-venv.sh $(PYTHON) $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "Installing Panda Professor into $(VENV) (a few minutes the first time)..."
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "Installing Panda Professor and its test tools into $(VENV) (a few minutes the first time)..."
	$(PIP) install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## Serve on http://127.0.0.1:8080 with SQLite under var/ (demo content on a new data directory).
run: install
	$(BIN)/panda migrate
	$(BIN)/panda demo --if-empty
	$(BIN)/panda serve --no-migrate

## What the tests need from the system: Chromium, PostgreSQL and Redis binaries (Debian packages).
test-deps:
	bash scripts/install-test-deps.sh

## Install everything the tests need, then run the whole suite under a hard timeout
## (SIGABRT first, so a hang ends with every thread's traceback).
test: test-deps install-dev
	timeout -s ABRT -k 30 $(TEST_TIMEOUT) $(BIN)/python -m pytest -q -rR -p no:cacheprovider $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
