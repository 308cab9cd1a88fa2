# The two commands of the README: `make demo` (added with the install issue) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint typecheck unit bench-prepare bench-controller bench-webhook protos clean

# Everything CI runs: a fresh venv with the package and its test tools, then lint,
# type checks and the whole test suite (e2e tests skip themselves without --e2e).
test: $(VENV)/.installed lint typecheck unit

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest

bench-prepare: $(VENV)/.installed
	$(BIN)/python -m bench.prepare

bench-controller: $(VENV)/.installed
	$(BIN)/python -m bench.controller

bench-webhook: $(VENV)/.installed
	$(BIN)/python -m bench.webhook

protos: $(VENV)/.installed
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
