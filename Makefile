# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs the pinned Python packages and Azurite (npm, into ./node_modules),
# starts what it needs on 127.0.0.1 and stops it when done.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite
PYTEST_ARGS ?=

.PHONY: setup lint test unit demo infra-check clean

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

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
