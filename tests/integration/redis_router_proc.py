"""Run the router of a topology file in its own process, for kill -9 tests.

``python -m tests.integration.redis_router_proc TOPOLOGY`` runs ``open_backend(...).run_router``
until SIGTERM/SIGINT. Broker-neutral; a stand-in for ``dlq-router run`` in tests.
"""

from __future__ import annotations

import logging
import signal
import sys

from dlq_router.backends import open_backend
from dlq_router.backends.base import RouterContext
from dlq_router.metrics import Metrics
from dlq_router.topology import load_topology


def main(path: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ctx = RouterContext(metrics=Metrics())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ctx.stop.set())
    backend = open_backend(load_topology(path))
    try:
        backend.run_router(ctx)
    finally:
        backend.close()


if __name__ == "__main__":
    main(sys.argv[1])
