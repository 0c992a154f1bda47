"""RabbitMQ backend: DLX + fixed-TTL tier queues + parking queue."""

from __future__ import annotations

import contextlib

import pika

from dlq_router.backends.base import DeclareReport, RouterContext
from dlq_router.backends.rabbitmq import declare as _declare
from dlq_router.backends.rabbitmq.connection import connect
from dlq_router.backends.rabbitmq.parking import RabbitParkingLot
from dlq_router.backends.rabbitmq.spec import topology_specs
from dlq_router.status import Status
from dlq_router.topology import Topology


class RabbitBackend:
    kind = "rabbitmq"

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.url = topology.url
        self._connection: pika.BlockingConnection | None = None

    @property
    def connection(self) -> pika.BlockingConnection:
        """A blocking connection for short operations (declare, parking lot), opened lazily."""
        if self._connection is None or not self._connection.is_open:
            self._connection = connect(self.url)
        return self._connection

    def declare(self, *, dry_run: bool) -> DeclareReport:
        return _declare.declare(
            self.connection, self.url, topology_specs(self.topology), dry_run=dry_run
        )

    def run_router(self, ctx: RouterContext) -> None:
        from dlq_router.backends.rabbitmq.router import run

        run(self.topology, ctx)

    @property
    def parking(self) -> RabbitParkingLot:
        return RabbitParkingLot(lambda: self.connection, self.topology)

    def status(self, *, groups: bool = True) -> Status:
        from dlq_router.backends.rabbitmq.status import collect

        return collect(self.connection, self.topology, groups=groups)

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(Exception):  # closing a broken connection: best effort
                self._connection.close()
        self._connection = None
