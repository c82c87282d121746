# Two commands on a fresh machine: `make demo` runs the local stack end to end,
# `make test` installs everything and runs lint, types and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml tools/package-lock.json
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	./scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/pip install --quiet --no-cache-dir -e '.[dev]'
	npm ci --prefix tools --no-audit --no-fund --silent
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trace demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python bench/kernel_bench.py

clean:
	rm -rf $(VENV) .trace .mypy_cache .ruff_cache
