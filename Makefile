# `make test` is the README's test command and what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install brokers lint test bench demo clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

brokers:
	bash .ci/brokers.sh

lint: install
	$(VENV)/bin/ruff check dlq_router tests
	$(VENV)/bin/ruff format --check dlq_router tests
	$(VENV)/bin/mypy

test: install brokers lint
	$(VENV)/bin/pytest -q

bench: install brokers
	$(PY) tests/benchmarks/bench_rabbit_router.py
	$(PY) tests/benchmarks/bench_redis_router.py
	$(PY) tests/benchmarks/bench_parking.py

demo: install brokers
	$(VENV)/bin/dlq-router demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
