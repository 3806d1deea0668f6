# Everything a fresh clone needs: `make test` and `make demo` create the environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
POSTGRES_DSN ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: install test demo lint format bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# PostgreSQL tests run when a server answers at 127.0.0.1:5432 (or INDEXER_TEST_POSTGRES_DSN is set).
test: install
	@if [ -z "$$INDEXER_TEST_POSTGRES_DSN" ] && $(PY) -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null; then \
		export INDEXER_TEST_POSTGRES_DSN=$(POSTGRES_DSN); fi; \
	$(PY) -m pytest $(PYTEST_ARGS)

DEMO_COUNT ?= 20000

# Generates a local feed once, indexes it into the embedded SQLite store, shows the status.
demo: install
	@test -f demo/feed/$$(($(DEMO_COUNT) - 1)).chk || \
		$(VENV)/bin/indexer generate --out demo/feed --count $(DEMO_COUNT) --seed 1
	$(VENV)/bin/indexer run -c config.example.toml --last-checkpoint $$(($(DEMO_COUNT) - 1))
	$(VENV)/bin/indexer status -c config.example.toml

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy indexer reducers workers

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Every scenario beside its reference (README, Performance); add --postgres-dsn for PostgreSQL.
bench: install
	$(VENV)/bin/indexer bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
