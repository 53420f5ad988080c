# Fanfinity engagement analytics: every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=
# `make simulate URL=http://host:port` or `make simulate PORT=8100` (default http://127.0.0.1:8000);
# plain assignments, so only the command line overrides them, not a PORT/URL in the environment.
PORT = 8000
URL =
SIMULATE_URL = $(or $(URL),http://127.0.0.1:$(PORT))

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

.PHONY: uv
uv:
	@command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

.PHONY: install
install: uv ## Install the locked dependencies (runtime and dev) into .venv
	@$(UV) sync --frozen --all-groups --quiet

.PHONY: run
run: install ## Serve on http://127.0.0.1:8000 on the embedded engine (memory://)
	@FANFINITY_API_KEYS=$${FANFINITY_API_KEYS:-local-dev-producer-key} $(UV) run --frozen fanfinity serve

.PHONY: browser
browser: ## Install Debian's Chromium and ChromeDriver for the page test (best effort, needs root)
	@command -v chromium >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "make browser: no Chromium could be installed; the dashboard page test will skip"

.PHONY: test
test: install browser ## Run every test (integration tests skip without FANFINITY_TEST_MONGODB_URL) with coverage
	@$(UV) run --frozen pytest --cov=fanfinity --cov-branch --cov-report=term --cov-report=xml --cov-fail-under=85 $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: install ## Run the integration tests against FANFINITY_TEST_MONGODB_URL (a replica set)
	@test -n "$$FANFINITY_TEST_MONGODB_URL" || { echo "set FANFINITY_TEST_MONGODB_URL to a replica set URL"; exit 2; }
	@$(UV) run --frozen pytest -m integration $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff, format check, mypy --strict, and the Docker/compose/workflow/Kubernetes checks
	@$(UV) run --frozen ruff check src tests scripts
	@$(UV) run --frozen ruff format --check src tests scripts
	@$(UV) run --frozen mypy
	@if [ -f scripts/lint_delivery.sh ]; then bash scripts/lint_delivery.sh; fi

.PHONY: format
format: install ## Apply ruff's fixes and formatting
	@$(UV) run --frozen ruff check --fix src tests scripts
	@$(UV) run --frozen ruff format src tests scripts

.PHONY: typecheck
typecheck: install ## mypy --strict on src/
	@$(UV) run --frozen mypy

.PHONY: bench
bench: install ## Benchmark ingest and reads against a bare Litestar app (installs wrk)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@$(UV) run --frozen python -m scripts.bench

.PHONY: bench-streams
bench-streams: install ## 18,000 SSE subscribers on one worker: how fast a goal reaches them all
	@$(UV) run --frozen python -m scripts.bench.streams

.PHONY: load
load: install ## Match-day spike with locust against its own service (about 2 minutes); writes docs/images/loadtest.png
	@$(UV) run --frozen --with matplotlib==3.11.2 python -m scripts.loadtest --start-service

.PHONY: simulate
simulate: install ## Replay a 90-minute match against URL (or 127.0.0.1:PORT; default 8000; start `make run` first)
	@$(UV) run --frozen python -m scripts.simulator --speed $${SPEED:-60} --url "$(SIMULATE_URL)"

.PHONY: docker
docker: ## Build the container image (needs a Docker engine)
	docker build -t fanfinity:dev .

.PHONY: clean
clean: ## Remove caches, coverage files and the virtualenv
	rm -rf .venv .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage coverage.xml htmlcov dist
