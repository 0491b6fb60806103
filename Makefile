# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs the pinned Python packages and Azurite (npm, into ./node_modules),
# starts what it needs on 127.0.0.1 and stops it when done.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite
PYTEST_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?= --clusters 40
UP_ARGS ?=

.PHONY: setup lint test unit demo up chaos bench infra-check clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(AZURITE): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

setup: $(STAMP) $(AZURITE)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## the whole suite: lint, types, unit + integration tests (simulator over TLS, Azurite), infra checks
test: setup lint infra-check
	$(PY) -m pytest $(PYTEST_ARGS)

## checkov on infra/, offline, in its own virtualenv (.venv-checkov); the Bicep tests run with pytest
infra-check:
	PYTHON=$(PYTHON) scripts/infra-check.sh

## only the tests
unit: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## the main job on the local simulator, start to finish, leaving nothing running
demo: setup
	$(PY) scripts/demo.py

## simulator + Azurite + `rotation serve`, joined by an Event Grid subscription, until Ctrl-C; prints the
## commands to try from another shell (README, "Try it by hand"); another port: UP_ARGS="--port 8081"
up: setup
	$(PY) scripts/up.py $(UP_ARGS)

## chaos run: clusters, rotations, duplicated shuffled events, faults, killed workers; exit 1 on a violation
## (bigger: make chaos CHAOS_ARGS="--clusters 200 --keys 100 --rotations 5 --seed 2026")
chaos: setup
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

## the benchmark of the real path (Event Grid function, Azurite queue, worker process, simulator over TLS):
## prints a table, writes docs/benchmarks.json and docs/benchmarks.md; sizes and scale: BENCH_ARGS="--help"
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
