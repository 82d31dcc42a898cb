# ragtune: `make demo` installs everything and answers a question over examples/docs;
# `make test` runs the test suite. Both work from a clean clone (Python 3.11).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .ragtune-demo
QUESTION ?= What does the manifest record for every file?

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ragtune needs Python 3.11 (set PYTHON=python3.11)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ragtune models pull
	$(BIN)/ragtune index examples/docs --index $(DEMO_DIR)/index
	$(BIN)/ragtune search "$(QUESTION)" --index $(DEMO_DIR)/index -k 3
	@if $(BIN)/ragtune ask --help >/dev/null 2>&1; then \
		$(BIN)/ragtune ask "$(QUESTION)" --index $(DEMO_DIR)/index; fi

# the fast suite: tiny random models plus a few integration tests on the smallest real models
test: install
	$(BIN)/ragtune models pull all-minilm-l6-v2 smollm2-135m
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/ragtune models pull
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
