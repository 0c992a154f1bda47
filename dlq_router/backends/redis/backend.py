"""Redis backend: dead-letter list, sorted set of waiting retries, parking hash + index.

Thin: ``declare`` lives in ``declare.py``, the run loop in ``router.py``, the parking lot in
``parking.py``.
"""

from __future__ import annotations

import contextlib

from dlq_router.backends.base import DeclareReport, RouterContext
from dlq_router.backends.redis.connection import RedisClient, connect
from dlq_router.backends.redis.parking import RedisParkingLot
from dlq_router.status import Status
from dlq_router.topology import Topology


class RedisBackend:
    kind = "redis"

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.url = topology.url
        self.client: RedisClient = connect(self.url)

    def declare(self, *, dry_run: bool) -> DeclareReport:
        from dlq_router.backends.redis.declare import declare

        return declare(self.client, self.topology, dry_run=dry_run)

    def run_router(self, ctx: RouterContext) -> None:
        from dlq_router.backends.redis.declare import check_declared
        from dlq_router.backends.redis.router import run

        check_declared(self.client, self.topology)
        run(self.topology, ctx)

    @property
    def parking(self) -> RedisParkingLot:
        return RedisParkingLot(self.client, self.topology)

    def status(self, *, groups: bool = True) -> Status:
        from dlq_router.backends.redis.status import collect

        return collect(self.client, self.topology, groups=groups)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
