"""``BrokerDriver`` for RabbitMQ: a producer and a worker around ``dlq-router run``.

The worker consumes with a small prefetch and fails a message either by
``basic.reject(requeue=False)`` (the broker dead-letters it, writing ``x-death``) or, when it
knows the error, by publishing it to the route's DLX with ``dlq-error-*`` and
``dlq-origin-*`` headers and then acking (the contract documented in docs-router.md).
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pika

from dlq_router import headers as h
from dlq_router.names import rabbit_names
from dlq_router.topology import Route, Topology
from tests.integration.drivers import BrokerDriver, Received

PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "message_id",
    "correlation_id",
    "priority",
    "timestamp",
    "type",
    "app_id",
    "reply_to",
    "delivery_mode",
    "user_id",
    "expiration",
)


def properties_dict(props: pika.BasicProperties) -> dict[str, Any]:
    return {name: getattr(props, name) for name in PROPERTY_NAMES}


class RabbitDriver(BrokerDriver):
    kind = "rabbitmq"

    def __init__(self, topology: Topology, route: Route, prefetch: int = 20) -> None:
        super().__init__(topology, route)
        self.names = rabbit_names(topology, route)
        self.conn = pika.BlockingConnection(pika.URLParameters(topology.url))
        self.ops = self.conn.channel()
        self.ops.confirm_delivery()
        self.worker = self.conn.channel()
        self.worker.basic_qos(prefetch_count=prefetch)
        self._consumer: Any = None

    # -- producer ---------------------------------------------------------------------

    def publish(
        self,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        content_type: str = "application/json",
        content_encoding: str = "utf-8",
        correlation_id: str | None = None,
        priority: int | None = None,
        **extra: Any,
    ) -> None:
        props = pika.BasicProperties(
            message_id=message_id,
            headers=headers,
            content_type=content_type,
            content_encoding=content_encoding,
            correlation_id=correlation_id,
            priority=priority,
            delivery_mode=extra.pop("delivery_mode", 2),
            **extra,
        )
        self.ops.basic_publish(
            self.names.work_exchange, self.names.routing_key, body, props, mandatory=True
        )

    # -- worker -----------------------------------------------------------------------

    def receive(self, timeout: float) -> Received | None:
        if self._consumer is None:
            self._consumer = self.worker.consume(self.names.work_queue, inactivity_timeout=0.05)
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = next(self._consumer)
            if method is not None:
                return Received(
                    body=body,
                    headers=dict(props.headers or {}),
                    properties=properties_dict(props),
                    received_at=time.time(),
                    raw=(method, props),
                )
            if time.monotonic() >= deadline:
                return None

    def ack(self, msg: Received) -> None:
        self.worker.basic_ack(msg.raw[0].delivery_tag)

    def fail(
        self, msg: Received, *, error_type: str | None = None, error_message: str | None = None
    ) -> None:
        method, props = msg.raw
        if error_type is None and error_message is None:
            self.worker.basic_reject(method.delivery_tag, requeue=False)
            return
        headers = dict(props.headers or {})
        if error_type is not None:
            headers[h.ERROR_TYPE] = error_type
        if error_message is not None:
            headers[h.ERROR_MESSAGE] = error_message
        headers.setdefault(h.ORIGIN_EXCHANGE, method.exchange)
        headers.setdefault(h.ORIGIN_ROUTING_KEY, method.routing_key)
        props.headers = headers
        self.ops.basic_publish(self.names.dlx, self.names.routing_key, msg.body, props)
        self.worker.basic_ack(method.delivery_tag)

    # -- inspection -------------------------------------------------------------------

    def inject_dead_letter(self, body: bytes, headers: dict[str, Any] | None, **props: Any) -> None:
        self.ops.basic_publish(
            "", self.names.dlq, body, pika.BasicProperties(headers=headers, **props)
        )

    def parked(self) -> list[Received]:
        ch = self.conn.channel()
        out: list[Received] = []
        try:
            while True:
                method, props, body = ch.basic_get(self.names.parking, auto_ack=False)
                if method is None:
                    break
                out.append(
                    Received(body, dict(props.headers or {}), properties_dict(props), time.time())
                )
        finally:
            ch.close()  # unacked messages go back in their original order
        return out

    def counts(self) -> dict[str, int]:
        def depth(queue: str) -> int:
            result = self.ops.queue_declare(queue, passive=True)
            count: int = result.method.message_count
            return count

        lanes = [lane.queue for tier in self.names.tiers for lane in tier.lanes]
        return {
            "work": depth(self.names.work_queue),
            "dlq": depth(self.names.dlq),
            "retry": sum(depth(q) for q in lanes),
            "parked": depth(self.names.parking),
        }

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def consumer_prefetch(queue: str) -> list[int]:
    """prefetch_count of every consumer of ``queue``, as the broker reports it."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_consumers", "queue_name", "prefetch_count"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    # Only "queue<TAB>count" rows: rabbitmqctl may add other lines (warnings) on a busy node.
    rows = (line.split("\t") for line in out.splitlines())
    return [int(row[1]) for row in rows if len(row) == 2 and row[0] == queue]
