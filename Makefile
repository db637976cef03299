# Auxilio: `make demo` and `make test` are all a fresh machine needs.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed

.PHONY: setup demo test bench lint format firmware vectors clean

setup: $(STAMP)

# Reinstall when the dependency list or the pinned constraints change.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/auxilio demo

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m tests.bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

firmware: $(STAMP)
	$(BIN)/python -m auxilio.build

# Regenerate protocol/vectors from the codec (a test fails if they drift).
vectors: $(STAMP)
	$(BIN)/python protocol/vectors/generate.py

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
