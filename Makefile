# Every target does its own setup: a fresh clone needs nothing but python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the receiver on http://127.0.0.1:8000 (SQLite and images under ./data)
run: install
	$(BIN)/python -m scripts.run

## lint: ruff (lint + format check) and mypy --strict
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint, then the whole suite against real servers on loopback
##       (PostgreSQL is installed from Debian packages when missing; tests start their own)
test: install lint
	scripts/pg.sh >/dev/null
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: every benchmark in bench/ (prints figures; not part of test)
bench: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	scripts/pg.sh >/dev/null
	$(BIN)/python bench/ingest.py --database sqlite --database postgresql
	$(BIN)/python bench/burst.py --database sqlite --database postgresql
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache
