# The README's commands. `make test` is all a clean clone needs: it makes .venv, installs, tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: install run test lint format seed clean bench

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

run: install
	$(BIN)/python -m gql.serve

test: install
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core db services

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

seed: install
	$(BIN)/python -m db.seed $(ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

# `make bench ARGS="--only order_history --targets floor,ours --duration 5"`: see README.
# A measurement, not a test; it needs wrk (Debian package) and PostGraphile (npm ci).
PG_BENCH := bench/postgraphile
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(PG_BENCH)/node_modules/.installed-stamp: $(PG_BENCH)/package.json $(PG_BENCH)/package-lock.json
	cd $(PG_BENCH) && npm ci --no-audit --no-fund
	touch $@

bench: install $(PG_BENCH)/node_modules/.installed-stamp
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y wrk \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
	$(BIN)/python -m bench $(ARGS)
