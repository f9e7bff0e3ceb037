# bridge: every target installs what it needs first (`make install` is idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint fmt typecheck coverage demo e2e clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

run: install
	$(BIN)/bridgectl serve

test: install lint
	$(BIN)/python -m pytest -q

# The same without the tests marked slow (real-time soaks, load, worker processes).
test-fast: install lint
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check bridge tests benchmarks examples
	$(BIN)/ruff format --check bridge tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff format bridge tests benchmarks examples
	$(BIN)/ruff check --fix bridge tests benchmarks examples

coverage: install
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage report --skip-covered --sort=cover

demo: install
	$(BIN)/python -m bridge.process.demo

# The real Claude Code and Codex CLIs (from npm) against the gateway and the mock upstream.
include benchmarks/Makefile.inc

e2e: install
	npm install -g --silent @anthropic-ai/claude-code @openai/codex
	BRIDGE_REAL_CLIENTS=1 $(BIN)/python -m pytest -q tests/api/test_real_clients.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
