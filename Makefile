# Every target does its own setup: a fresh clone needs nothing but python3 and make.
# Two stamps: `make run` installs the runtime dependencies only; the targets that develop
# (test, lint, format, bench) add the dev extra.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev

.PHONY: install install-runtime run test lint format bench clean

$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

## install-runtime: .venv with the commands and their runtime dependencies only
install-runtime: $(RUNTIME_STAMP)

## install: .venv with the dev extra too (pytest, ruff, mypy...)
install: $(DEV_STAMP)

## run: the receiver on http://127.0.0.1:8000 (SQLite and images under ./data)
run: install-runtime
	$(BIN)/python -m scripts.run

## lint: ruff (lint + format check) and mypy --strict
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint, then the whole suite against real servers on loopback
##       (PostgreSQL is installed from Debian packages when missing; tests start their own;
##       so are podman and the image test's base image: tests/test_image.py says why if it skips)
test: install lint
	scripts/pg.sh >/dev/null
	scripts/podman.sh base >/dev/null || echo "scripts/podman.sh failed: tests/test_image.py says why" >&2
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
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/slowloris.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/chat_latency.py
	$(BIN)/python bench/gcp_function.py
	$(BIN)/python bench/serverless.py --database sqlite --database postgresql

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache
