# Two commands work on a fresh machine (Python 3.11+, Node 20+); each installs what it needs, no more.
#   make run       Azurite + the Graph/identity emulator (demo tenant) + the local Functions host (.venv, node_modules)
#   make test      lint, type-check, check the import layers, then the whole suite against Azurite and the emulator
#                  (also the checkov venv, .venv-infra, that tests/infra scan with)
#   make services  Azurite + the emulator only, for `func start` (Core Tools)
#   make clean     delete the local state (Azurite's data, the emulator's state): the next run is a fresh demo
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# checkov (IaC scan of infra/) lives in its own venv: its pins conflict with ours (requirements-infra.txt).
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed
PYTEST_ARGS ?= -n 2 -q
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

.PHONY: walkthrough-tools mail-server install install-infra run services test lint unit bench clean

# What running needs; the infra scan venv (about 290 MB) only comes with `make test` or `make install-infra`.
install: $(PY_STAMP) $(NODE_STAMP)

install-infra: $(INFRA_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

$(INFRA_STAMP): requirements-infra.txt
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install -q --upgrade pip
	$(INFRA_VENV)/bin/python -m pip install -q -r requirements-infra.txt
	@# pycep builds its Bicep parser tables once (30-70 s) into lark's cache in the temp dir, shared by
	@# both venvs (same pinned lark and grammar): build it here rather than inside the first test run.
	$(INFRA_VENV)/bin/python -c "from pycep import BicepParser; BicepParser()"
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install mail-server
	$(BIN)/python -m tools.stack run

services: install mail-server
	$(BIN)/python -m tools.stack services

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The README walkthrough and its test use curl and jq: installed from Debian's packages when missing.
WALKTHROUGH_TOOLS := curl jq
walkthrough-tools:
	@missing=""; for tool in $(WALKTHROUGH_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "the walkthrough test needs:$$missing (e.g. sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# The IMAP provider's tests and `make run` use a real Dovecot (tools/mailserver.py): Debian's packages,
# installed when missing (as root); otherwise it says which command installs them.
mail-server: $(PY_STAMP)
	@$(BIN)/python -c "from tools.mailserver import ensure_installed; ensure_installed()"

test: install $(INFRA_STAMP) walkthrough-tools mail-server lint
	$(BIN)/python -m tools.stack test -- $(PYTEST_ARGS)

unit: $(PY_STAMP)
	$(BIN)/python -m pytest tests/unit -q

$(BENCH_STAMP): $(PY_STAMP) requirements-bench.txt
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	touch $@

# Regenerates docs/performance.md (about 10 min). BENCH_ARGS: e.g. --quick, --only backfill,idle.
bench: $(BENCH_STAMP) $(NODE_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Local state only (installs stay): Azurite's data and the emulator's state, kept across restarts together.
clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
