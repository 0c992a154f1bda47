"""Read-only status of each route on RabbitMQ: passive declares, and one scan of the parking
queue for its age and groups.

A passive declare of a missing queue closes the channel (404), so each miss costs a new
channel; ``message_count`` is the ready count (messages a consumer holds unacked are not in
it), and ``consumer_count`` on the DLQ tells whether a router is attached.
"""

from __future__ import annotations

import pika
import pika.exceptions as pe

from dlq_router.backends.rabbitmq.connection import describe
from dlq_router.backends.rabbitmq.parking import RabbitParkingLot
from dlq_router.durations import format_duration_ms
from dlq_router.errors import BrokerUnavailable
from dlq_router.names import rabbit_names
from dlq_router.status import RouteStatus, Status, TierStatus, add_warnings, read_parking
from dlq_router.topology import Route, Topology
from dlq_router.urls import redact_url


class _Queues:
    """Passive declares on one connection; a channel is reopened after each 404."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()

    def depth(self, queue: str) -> tuple[int, int] | None:
        """(ready messages, consumers), or None when the queue does not exist."""
        try:
            ok = self.channel.queue_declare(queue, passive=True).method
        except pe.ChannelClosedByBroker as exc:
            self.channel = self.connection.channel()
            if exc.reply_code == 404:
                return None
            raise
        return ok.message_count, ok.consumer_count

    def close(self) -> None:
        if self.channel.is_open:
            self.channel.close()


def route_status(queues: _Queues, topology: Topology, route: Route) -> RouteStatus:
    names = rabbit_names(topology, route)
    status = RouteStatus(route.name, parking_max_length=route.parking.max_length)

    def depth(queue: str) -> tuple[int, int]:
        found = queues.depth(queue)
        if found is None:
            status.missing.append(queue)
            return 0, 0
        return found

    status.work_depth = depth(names.work_queue)[0]
    status.dlq_depth, status.routers = depth(names.dlq)
    for tier in names.tiers:
        waiting = sum(depth(lane.queue)[0] for lane in tier.lanes)
        status.tiers.append(TierStatus(format_duration_ms(tier.delay_ms), tier.delay_ms, waiting))
    status.parked = depth(names.parking)[0]
    status.declared = not status.missing
    return status


def collect(connect: pika.BlockingConnection, topology: Topology, *, groups: bool = True) -> Status:
    """Every route's status; ``groups=False`` skips the parking-queue scans."""
    url = topology.url
    try:
        queues = _Queues(connect)
        routes = [route_status(queues, topology, r) for r in topology.routes]
        queues.close()
    except (pe.AMQPError, OSError) as exc:
        raise BrokerUnavailable(describe(exc, url)) from exc
    lot = RabbitParkingLot(lambda: connect, topology)
    for route, status in zip(topology.routes, routes, strict=True):
        if groups and status.declared and status.parked:
            read_parking(lot, route, status)
        add_warnings(route, status, dlq=rabbit_names(topology, route).dlq)
    return Status("rabbitmq", redact_url(url), routes)
