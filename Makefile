# Two commands set everything up on a fresh machine with Python 3.11+:
#   make serve   -- create .venv, install meter, serve it on SQLite (./meter.db)
#   make test    -- create .venv, install meter with its dev tools, run the whole suite
#                   (and the SDK tests again with openai 3.x, in .venv-sdk3: test-sdk3)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# The dev extra pins openai 2.x (built on httpx); openai 3.x is built on httpx2. A second, small
# venv runs the SDK tests with the SDKs people install today.
SDK3_VENV ?= .venv-sdk3
SDK3_BIN := $(SDK3_VENV)/bin
SDK_TESTS := tests/test_openai_sdk.py tests/test_mistral_sdk.py tests/test_transport_budget.py

.PHONY: serve test test-sdk3 lint check bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(SDK3_BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SDK3_VENV)
	$(SDK3_BIN)/python -m pip install --quiet --upgrade pip
	$(SDK3_BIN)/python -m pip install --quiet -e ".[postgres,httpx2,tokenizer]" \
		"openai>=3" "mistralai>=3" "pytest>=8" "pytest-xdist>=3.5"
	touch $@

serve: $(BIN)/.installed
	$(BIN)/meter serve

test: $(BIN)/.installed test-sdk3
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-sdk3: $(SDK3_BIN)/.installed
	$(SDK3_BIN)/python -m pytest -n 2 $(SDK_TESTS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy meter

check: lint test

bench: $(BIN)/.installed
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) $(SDK3_VENV) .pytest_cache .mypy_cache .hypothesis dist build
