# The two commands of the README. Each creates .venv on first use (only Python 3.11+ needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Paceline needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## make demo: set up, then run the demo on embedded defaults (SQLite, no PBX needed)
demo: $(BIN)/.installed
	$(BIN)/paceline demo

## make test: set up, then lint, type-check and run the whole test suite
test: lint typecheck unit

lint: $(BIN)/.installed
	$(BIN)/ruff check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/import_contacts.py
	$(BIN)/python bench/lease.py
	$(BIN)/python bench/ami_throughput.py
	$(BIN)/python bench/pacing_speed.py
	$(BIN)/python bench/pacing_quality.py
	$(BIN)/python bench/engine_load.py
	$(BIN)/python bench/ivr_sessions.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
