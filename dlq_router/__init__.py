"""dlq-router: broker-level retries for AMQP and Redis consumers."""

from dlq_router import native

__version__ = "0.1.0"

# Compiled hot modules, or their sources when the compile is missing, stale or switched off
# (DLQ_ROUTER_PURE_PYTHON=1): decided before any of them is imported (native.py).
native.select()
