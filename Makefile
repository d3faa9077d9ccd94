# django-redis-broker: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# A Django release to install over requirements.txt's pin, for another corner of the
# support matrix: `make test PYTHON=/path/to/python3.13 VENV=.venv-py313 DJANGO=6.1.3` (CI).
DJANGO ?=
BIN := $(VENV)/bin
# The stamp names the Django override, so changing DJANGO reinstalls.
STAMP := $(VENV)/.installed$(if $(DJANGO),-django-$(DJANGO))
CHROMIUM := /usr/bin/chromium

.DEFAULT_GOAL := help
.PHONY: help install demo test test-cluster test-postgres lint format typecheck bench chromium clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(if $(DJANGO),$(BIN)/python -m pip install -q "Django==$(DJANGO)")
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed*
	touch $(STAMP)

install: $(STAMP) ## Create .venv (or VENV), install the pins (DJANGO= overrides Django's) and the app

chromium: ## Install Debian's Chromium for the browser tests, when missing and possible
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests"; \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
		|| echo "Could not install chromium: browser tests will be skipped"; \
	else echo "No $(CHROMIUM) and no root to install it: browser tests will be skipped"; fi

demo: install ## Run the demo (daphne + runconsumers) on http://127.0.0.1:8000
	$(BIN)/python -m demo_site.run

# SKIP_LINT=1 skips ruff and mypy (CI lints once, in its first corner).
test: install chromium $(if $(SKIP_LINT),,lint) ## Lint, type-check, then run the whole suite (real Redis, real browser)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The Redis-facing tests, run a second time on a private three-master Redis Cluster
# (redis-server --cluster-enabled yes; redis-cli --cluster create). The demo's browser
# tests stay single-node: the demo's presence consumer subscribes to a pattern, which
# sharded Pub/Sub does not have. The relay under uvicorn (tests/relay/test_uvicorn.py) is
# not run again: which ASGI server carries the sockets does not depend on the topology,
# and the relay's own cluster paths are run under daphne.
CLUSTER_TESTS := tests/cluster tests/consumers tests/model_events tests/relay tests/inspector \
	tests/test_publishing.py tests/test_connection.py tests/test_metrics_view.py \
	--ignore=tests/relay/test_uvicorn.py

test-cluster: install ## Run the Redis-facing tests again on a private Redis Cluster
	$(BIN)/python -m pytest --redis-broker-cluster -m "not browser" $(CLUSTER_TESTS) $(PYTEST_ARGS)

test-postgres: install ## Run the database-dependent tests against PostgreSQL (DATABASE_URL)
	$(BIN)/python -m pytest -m postgres $(PYTEST_ARGS)

# mypy's cache lives in the venv: venvs differ in their Django (DJANGO).
lint: install ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --cache-dir $(VENV)/.mypy_cache

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## Run every benchmark (each starts its own private Redis)
	$(BIN)/python bench/publish.py
	$(BIN)/python bench/consume.py
	$(BIN)/python bench/subscribers.py
	$(BIN)/python bench/model_events.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/admin.py
	$(BIN)/python bench/rpc.py

clean: ## Remove the virtualenv, caches and local databases
	rm -rf $(VENV) var test-artifacts .pytest_cache .ruff_cache .mypy_cache
