# Quick start: `make run` (serve on the embedded defaults), `make test` (the test suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint install clean reliability bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/websofttt init --if-new
	exec $(BIN)/websofttt serve

# The checked rules first (ARCHITECTURE.md): lint, types, and the floors as import contracts (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check policy relay inbound tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The suite on each event loop the workers may run (WEBSOFTTT_LOOP, relay/eventloop.py): uvloop, the default,
# then asyncio's own. Each run spreads the tests over the cores (pytest-xdist; TEST_JOBS=0 for one process),
# then runs those marked serial (timing comparisons) alone. Twice as many test processes as cores: most tests
# wait on sockets and subprocesses (221 s instead of 251-276 s for one pass on 2 cores).
TEST_JOBS ?= $(shell echo $$(( $$(nproc) * 2 )))
PARALLEL  := -n $(TEST_JOBS) --dist worksteal -m "not serial"
test: $(STAMP) lint
	WEBSOFTTT_LOOP=uvloop $(BIN)/python -m pytest $(PARALLEL)
	WEBSOFTTT_LOOP=uvloop $(BIN)/python -m pytest -m serial
	WEBSOFTTT_LOOP=asyncio $(BIN)/python -m pytest $(PARALLEL)
	WEBSOFTTT_LOOP=asyncio $(BIN)/python -m pytest -m serial

# Relay vs Postfix on this machine (root: installs postfix, opendkim, dovecot-core, knot, unbound, ldnsutils if missing);
# BENCH_ARGS=--quick for a short run.
bench: $(STAMP)
	$(BIN)/python tests/bench/run.py $(BENCH_ARGS)
	$(BIN)/python tests/bench/api_bench.py

# The long reliability runs (kill -9 loops, 100,000+ generated hostile inputs); figures in README, Reliability.
reliability: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider -o timeout=3600 -s tests/reliability

clean:
	rm -rf $(VENV) var
