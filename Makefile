# Two commands work on a fresh machine (Python 3.11+, Node 20+); each installs what it needs.
#   make run    Azurite + the Graph/identity emulator (demo tenant) + the local Functions host
#   make test   lint, type-check, then the whole test suite against Azurite and the emulator
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PYTEST_ARGS ?= -n 2 -q

.PHONY: install run test lint unit bench clean

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(BIN)/python -m tools.stack run

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m tools.stack test -- $(PYTEST_ARGS)

unit: $(PY_STAMP)
	$(BIN)/python -m pytest tests/unit -q

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache
