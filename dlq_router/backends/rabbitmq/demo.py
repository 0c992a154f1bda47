"""The broker side of ``dlq-router demo``: a throwaway route, a toy worker, the real router.

Everything it declares has a unique ``demo-xxxxxx`` name and is deleted at the end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pika
import pika.exceptions as pe

from dlq_router import headers as h
from dlq_router.backends.base import RouterContext
from dlq_router.backends.rabbitmq import router
from dlq_router.backends.rabbitmq.connection import connect
from dlq_router.backends.rabbitmq.declare import declare
from dlq_router.backends.rabbitmq.spec import ExchangeSpec, QueueSpec, topology_specs
from dlq_router.errors import BrokerUnavailable, DlqRouterError
from dlq_router.metrics import Metrics
from dlq_router.names import rabbit_names
from dlq_router.topology import Topology, parse_topology

# What the toy worker does on each attempt of each message: "ok", "reject" (plain
# basic.reject: the broker dead-letters it) or "ErrorType: message" (the worker publishes
# it to the DLX with dlq-error-* headers, as an integration that knows the error does).
PLAN: dict[str, list[str]] = {
    "welcome-email": ["ok"],
    "flaky-payment": ["reject", "ok"],
    "slow-report": ["TimeoutError: report service timed out"] * 2 + ["ok"],
    "bad-address": ["ValueError: no such mailbox"],
    "always-broken": ["ConnectionError: SMTP server down"] * 3,
}


@dataclass(frozen=True)
class Event:
    at: float  # seconds since the first publish
    message: str
    kind: Literal["published", "ok", "failed", "parked"]
    attempt: int
    detail: str = ""


def demo_topology(url: str) -> Topology:
    name = f"demo-{uuid.uuid4().hex[:6]}"
    route = {
        "name": name,
        "exchange": name,
        "retry": {"delays": ["1s", "2s"], "max_attempts": 3},
        "non_retryable": ["ValueError"],
    }
    return parse_topology({"url": url, "routes": [route]}, source="<demo>")


def _cleanup(topology: Topology) -> int:
    """Delete exactly the objects the demo topology derives; how many were deleted."""
    deleted = 0
    with contextlib.closing(connect(topology.url, client_name="dlq-router demo")) as conn:
        ch = conn.channel()
        for spec in topology_specs(topology):
            if isinstance(spec, QueueSpec):
                ch.queue_delete(spec.name)
            elif isinstance(spec, ExchangeSpec):
                ch.exchange_delete(spec.name)
            else:
                continue
            deleted += 1
    return deleted


class _Worker:
    """Publishes the demo messages and plays a worker that follows ``PLAN``."""

    def __init__(self, topology: Topology, emit: Callable[[Event], None]) -> None:
        self.names = rabbit_names(topology, topology.routes[0])
        self.emit = emit
        self.conn = connect(topology.url, client_name="dlq-router demo worker")
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.started = time.monotonic()
        self.done: set[str] = set()

    def now(self) -> float:
        return time.monotonic() - self.started

    def publish_all(self) -> None:
        for name in PLAN:
            props = pika.BasicProperties(
                message_id=name, content_type="application/json", delivery_mode=2
            )
            body = b'{"task": "' + name.encode() + b'"}'
            self.ch.basic_publish(self.names.work_exchange, self.names.routing_key, body, props)
            self.emit(Event(self.now(), name, "published", 0))

    def step(self) -> None:
        method, props, body = self.ch.basic_get(self.names.work_queue)
        if method is not None:
            self._handle(method, props, body)
        method, props, _ = self.ch.basic_get(self.names.parking, auto_ack=True)
        if method is not None:
            hd = props.headers or {}
            reason = h.as_text(hd.get(h.PARK_REASON))
            detail = f"{reason}: {h.as_text(hd.get(h.PARK_DETAIL))}"
            self.emit(Event(self.now(), props.message_id, "parked", hd.get(h.ATTEMPTS, 0), detail))
            self.done.add(props.message_id)
        if method is None:
            time.sleep(0.005)

    def _handle(self, method: Any, props: Any, body: bytes) -> None:
        name = props.message_id
        hd = props.headers or {}
        attempt = int(hd.get(h.ATTEMPTS, 0)) + 1
        action = PLAN[name][min(attempt, len(PLAN[name])) - 1]
        detail = ""
        due = h.as_ms(hd.get(h.RETRY_DUE_AT))
        if due is not None:
            late = time.time() * 1000 - due
            detail = f"back from the {h.as_text(hd.get(h.RETRY_TIER))} tier ({late:+.0f} ms vs due)"
        if action == "ok":
            self.ch.basic_ack(method.delivery_tag)
            self.emit(Event(self.now(), name, "ok", attempt, detail))
            self.done.add(name)
            return
        if action == "reject":
            self.ch.basic_reject(method.delivery_tag, requeue=False)
            why = "basic.reject (no error info)"
        else:
            error_type, _, error_message = action.partition(": ")
            headers = dict(hd)
            headers[h.ERROR_TYPE] = error_type
            headers[h.ERROR_MESSAGE] = error_message
            headers.setdefault(h.ORIGIN_EXCHANGE, method.exchange)
            headers.setdefault(h.ORIGIN_ROUTING_KEY, method.routing_key)
            props.headers = headers
            self.ch.basic_publish(self.names.dlx, self.names.routing_key, body, props)
            self.ch.basic_ack(method.delivery_tag)
            why = action
        self.emit(Event(self.now(), name, "failed", attempt, f"{detail}; {why}".lstrip("; ")))

    def close(self) -> None:
        with contextlib.suppress(pe.AMQPError, OSError):
            self.conn.close()


def run_demo(url: str, emit: Callable[[Event], None], *, timeout: float = 20.0) -> Topology:
    """Declare, route, work, report through ``emit``, clean up. Returns the topology used."""
    topology = demo_topology(url)
    with contextlib.closing(connect(url, client_name="dlq-router demo")) as conn:
        declare(conn, url, topology_specs(topology), dry_run=False)
    quiet = logging.getLogger("dlq_router.demo.router")
    quiet.setLevel(logging.ERROR)
    ctx = RouterContext(metrics=Metrics(), log=quiet, prefetch=50, shutdown_timeout=2.0)
    failure: list[BaseException] = []

    def route() -> None:
        try:
            router.run(topology, ctx)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=route, name="dlq-router", daemon=True)
    worker: _Worker | None = None
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while not ctx.metrics.is_ready():
            if failure or time.monotonic() > deadline:
                raise BrokerUnavailable(f"the demo router did not start: {failure or 'timeout'}")
            time.sleep(0.02)
        worker = _Worker(topology, emit)
        worker.publish_all()
        deadline = time.monotonic() + timeout
        while len(worker.done) < len(PLAN):
            if time.monotonic() > deadline:
                raise DlqRouterError(f"demo did not finish within {timeout:.0f}s")
            worker.step()
    finally:
        ctx.stop.set()
        thread.join(5)
        if worker is not None:
            worker.close()
        _cleanup(topology)
    return topology
