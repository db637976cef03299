# Auxilio: `make demo` and `make test` are all a fresh machine needs.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed

.PHONY: setup system-deps demo test bench chaos lint format firmware vectors catalogue clean

setup: $(STAMP)

# Reinstall when the dependency list or the pinned constraints change.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The tests start their own mosquitto and PostgreSQL on free loopback ports.
# Install the Debian packages when they are missing (as root), else say how.
SYSTEM_PACKAGES := mosquitto postgresql
system-deps:
	@if ! { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } \
	   || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "error: the tests need: sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; \
	  fi; \
	fi

# The demo needs no system packages: without mosquitto it uses an embedded broker.
demo: $(STAMP)
	$(BIN)/auxilio demo

# The suite mostly waits on real parts (interpreters, brokers, serial links), so
# workers overlap those waits: on 2 cores 3 workers take about half the time of 1.
TEST_WORKERS ?= 3
test: $(STAMP) system-deps
	$(BIN)/pytest -n $(TEST_WORKERS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench

# The seeded fault runs of the C4 path, many more than CI's 200 (CHAOS_RUNS=N to change).
CHAOS_RUNS ?= 3000
chaos: $(STAMP) system-deps
	AUXILIO_CHAOS_RUNS=$(CHAOS_RUNS) $(BIN)/pytest -q tests/gateway/test_chaos.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

firmware: $(STAMP)
	$(BIN)/python -m auxilio.build

# Extract the operator-facing strings (Babel), update the .po files, compile the .mo.
catalogue: $(STAMP)
	$(BIN)/python -m auxilio.catalogue

# Regenerate protocol/vectors from the codec (a test fails if they drift).
vectors: $(STAMP)
	$(BIN)/python protocol/vectors/generate.py

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
