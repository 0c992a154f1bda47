# `make test` is the README's test command and what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install brokers browser lint test bench bench-attribution bench-parity bench-celery demo clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Then the hot modules compiled with mypyc (dlq_router/native.py; a no-op while their sources
# are unchanged). DLQ_ROUTER_PURE_PYTHON=1 make install removes them instead.
install: $(VENV)/.installed
	$(PY) .ci/native.py

brokers:
	bash .ci/brokers.sh

# Headless Chromium and its driver from Debian, for tests/browser (console). Idempotent: only
# runs apt-get when a binary is missing (root, as in CI; otherwise via sudo).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
			chromium chromium-driver; \
	fi

lint: install
	$(VENV)/bin/ruff check dlq_router tests .ci
	$(VENV)/bin/ruff format --check dlq_router tests .ci
	$(VENV)/bin/mypy

# The suite runs the compiled modules; the unit tests then run again on the plain sources.
test: install brokers browser lint
	$(VENV)/bin/pytest -q
	DLQ_ROUTER_PURE_PYTHON=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

# The pauses let RabbitMQ clean up the previous script's queues before the next one measures.
bench: install brokers
	$(PY) tests/benchmarks/bench_rabbit_router.py
	sleep 20
	$(PY) tests/benchmarks/bench_redis_router.py
	sleep 20
	$(PY) tests/benchmarks/bench_parking.py

# Where the broker's CPU per dead letter goes (shovels, router, one wire choice at a time).
# Not part of `bench`: it takes 10-20 minutes. Pass options with ARGS="--n 20000 --repeats 5".
bench-attribution: install brokers
	$(PY) tests/benchmarks/bench_rabbit_attribution.py $(ARGS)

# Issue 12's figures in one run: router and replay against the TCP and in-node shovels, broker
# on its own core and on shared cores (own node, about 5 min on 2 cores). ARGS=--quick: 1 min.
bench-parity: install brokers
	$(PY) tests/benchmarks/bench_rabbit_parity.py $(ARGS)

# dlq-router against Celery's own retries (README "dlq-router against Celery's own retries").
# N = 10,000 by default; ARGS=--quick for N = 1,000.
bench-celery: install brokers
	$(PY) tests/benchmarks/bench_celery.py $(ARGS)

demo: install brokers
	$(VENV)/bin/dlq-router demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dlq_router/_native_build.json
	find dlq_router -name '*.so' -delete
