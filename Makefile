# The README's commands. `make test` is all a clean clone needs: it makes .venv, installs, tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint format seed migrate clean schema assets gateway-packages browser pgbouncer haproxy redis-server stack bench fuzz

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

run: install
	$(BIN)/python -m gql.transport.serve

test: install
	$(BIN)/python -m pytest $(ARGS)

# The compiled executor against the reference one, on many more generated operations than
# `make test` runs (docs/execution.md).
FUZZ_EXAMPLES ?= 5000
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_executor_differential.py -q $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core db services gql

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

seed: install
	$(BIN)/python -m db.seed $(ARGS)

# The deploy step before rolling out a new version: DATABASE_URL's database to the code's head
# revision (idempotent; concurrent runs wait on an advisory lock). `ARGS=--check` only checks.
migrate: install
	$(BIN)/python -m db.migrate $(ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

# The SDL contract: tests/test_schema_contract.py fails until schema.graphql matches the code.
schema: install
	$(BIN)/python -m gql.schema.export

# Node packages pinned by lock files: GraphiQL's assets (served by the app) and the federation
# gateway of the tests. `npm ci` runs only when a lock changed (the stamp holds its hash).
NPM_STAMP := node_modules/.npm-ci-lock-sha256
%/$(NPM_STAMP): %/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $* && npm ci --no-audit --no-fund --prefer-offline --loglevel=error \
	  && sha256sum package-lock.json | cut -d' ' -f1 > $(NPM_STAMP); \
	else echo "npm not found: $* not installed (tests that need it are skipped)"; fi

assets: gql/static/$(NPM_STAMP)
gateway-packages: tests/gateway/$(NPM_STAMP)

# Debian's Chromium for the browser test of GraphiQL, installed once (apt needs root).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    -o DPkg::Lock::Timeout=300 chromium; \
	else echo "chromium missing and not root: the GraphiQL browser test will be skipped"; fi

# Debian's packages, installed once when missing and running as root (like Chromium):
# PgBouncer and HAProxy for `make stack` and its tests (tests/test_pgbouncer.py,
# tests/test_stack.py), redis-server for a stack without REDIS_URL.
define debian_package
	@if command -v $(2) >/dev/null 2>&1 || [ -x /usr/sbin/$(2) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 $(1) \
	  || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    -o DPkg::Lock::Timeout=300 $(1); } \
	  || echo "$(1) could not be installed: $(3)"; \
	else echo "$(1) missing and not root: $(3)"; fi
endef
pgbouncer:
	$(call debian_package,pgbouncer,pgbouncer,the PgBouncer test will be skipped)
haproxy:
	$(call debian_package,haproxy,haproxy,make stack needs it)
redis-server:
	$(call debian_package,redis-server,redis-server,make stack needs it or REDIS_URL)

# The production topology on this machine: PostgreSQL (embedded, or DATABASE_URL), PgBouncer,
# Redis (REDIS_URL, or its own), STACK_INSTANCES gunicorn instances (default 2), the outbox
# worker, HAProxy in front on STACK_PORT (default 8080). Ctrl-C or SIGTERM stops it all.
stack: install assets pgbouncer haproxy redis-server
	$(BIN)/python -m stack $(ARGS)

run: assets
test: assets gateway-packages browser pgbouncer haproxy

.PHONY: worker
worker: install  # deliver the notification outbox and sweep expired holds (run any number)
	$(BIN)/python -m services.worker

# FAILED notifications back to pending, after the receiver's outage:
# `make requeue-failed ARGS="--kind order.created --older-than 1h --dry-run"`.
.PHONY: requeue-failed
requeue-failed: install
	$(BIN)/python -m services.worker requeue-failed $(ARGS)

# `make bench ARGS="--only order_history --targets floor,ours --duration 5"`: see README.
# A measurement, not a test; it needs wrk (Debian package) and PostGraphile (npm ci).
bench: install bench/postgraphile/$(NPM_STAMP)
	@command -v wrk >/dev/null || $(SUDO) apt-get install -y -q -o DPkg::Lock::Timeout=300 wrk \
		|| { $(SUDO) apt-get update -q \
		  && $(SUDO) apt-get install -y -q -o DPkg::Lock::Timeout=300 wrk; }
	$(BIN)/python -m bench $(ARGS)
