"""Producer and worker for the RabbitMQ chaos tests: blocking pika clients that reconnect.

They connect straight to the broker (only the router goes through the proxy), to each of
the given URLs in turn, and survive node restarts and failovers: a send that fails is sent
again (counted), and a worker that loses its connection gets its unacked messages again
from the broker (counted as re-handled when they were already processed).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pika
import pika.exceptions as pe

from dlq_router import headers as h
from dlq_router.names import RabbitNames
from tests.chaos.ledger import Ledger

AMQP_ERRORS: tuple[type[BaseException], ...] = (pe.AMQPError, OSError)


def _connect(urls: list[str]) -> pika.BlockingConnection:
    params = []
    for url in urls:
        p = pika.URLParameters(url)
        p.connection_attempts = 1
        p.socket_timeout = 5
        p.heartbeat = 10
        params.append(p)
    return pika.BlockingConnection(params)


class AmqpSender:
    """``send(id)`` publishes one persistent, mandatory message with confirms."""

    def __init__(self, urls: list[str], names: RabbitNames) -> None:
        self.urls, self.names = urls, names
        self.conn: pika.BlockingConnection | None = None
        self.ch: Any = None
        self.uncertain = 0  # publishes that failed after reaching an open channel

    def send(self, message_id: str) -> None:
        publishing = False
        try:
            if self.conn is None or not self.conn.is_open:
                self.conn = _connect(self.urls)
                self.ch = self.conn.channel()
                self.ch.confirm_delivery()
            props = pika.BasicProperties(message_id=message_id, delivery_mode=2)
            publishing = True
            self.ch.basic_publish(
                self.names.work_exchange,
                self.names.routing_key,
                message_id.encode(),
                props,
                mandatory=True,
            )
        except AMQP_ERRORS:
            self.uncertain += publishing
            self.close()
            raise

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(*AMQP_ERRORS):
                conn.close()


class AmqpWorker(threading.Thread):
    """Consumes the work queue: acks a success, ``basic.reject(requeue=False)`` a retryable
    failure, and publishes a non-retryable one to the DLX with ``dlq-error-type`` (confirmed)
    before acking it."""

    def __init__(
        self,
        urls: list[str],
        names: RabbitNames,
        ledger: Ledger,
        stop: threading.Event,
        prefetch: int = 10,
    ) -> None:
        super().__init__(name="chaos-amqp-worker", daemon=True)
        self.urls, self.names, self.ledger, self.stop = urls, names, ledger, stop
        self.prefetch = prefetch
        self.reconnects = 0
        # id -> the dlq-attempts header of each delivery, for a failed run's report
        self.seen: dict[str, list[int]] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            conn = None
            try:
                conn = _connect(self.urls)
                self._consume(conn)
            except AMQP_ERRORS:
                self.reconnects += 1
                self.stop.wait(0.3)
            finally:
                if conn is not None and conn.is_open:
                    with contextlib.suppress(*AMQP_ERRORS):
                        conn.close()

    def _consume(self, conn: pika.BlockingConnection) -> None:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=self.prefetch)
        ops = conn.channel()
        ops.confirm_delivery()
        for method, props, body in ch.consume(self.names.work_queue, inactivity_timeout=0.3):
            if self.stop.is_set():
                return
            if method is None:
                continue
            message_id = props.message_id
            headers = dict(props.headers or {})
            attempts = int(headers.get(h.ATTEMPTS, 0))
            error = self.ledger.verdict(message_id, attempts)
            self.seen.setdefault(message_id, []).append(attempts)
            if method.redelivered:
                self.ledger.worker_rehandled += 1
            if error is None:
                self.ledger.record_processed(message_id)
                ch.basic_ack(method.delivery_tag)
            elif error == "ChaosFlaky":
                ch.basic_reject(method.delivery_tag, requeue=False)
            else:
                headers[h.ERROR_TYPE] = error
                headers.setdefault(h.ORIGIN_EXCHANGE, method.exchange)
                headers.setdefault(h.ORIGIN_ROUTING_KEY, method.routing_key)
                props.headers = headers
                ops.basic_publish(self.names.dlx, self.names.routing_key, body, props)
                ch.basic_ack(method.delivery_tag)
