"""One interface over both brokers for the shared router behaviour suite.

A driver plays the producer and the worker around a running ``dlq-router run``: it
publishes work, takes it as a worker would, fails it the way that broker's worker side
does, and reads the parking lot without consuming it. Implementations:
``RabbitDriver`` (tests/integration/rabbit_driver.py), ``RedisDriver``
(tests/integration/redis_driver.py).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlq_router.topology import Route, Topology


@dataclass
class Received:
    body: bytes
    headers: dict[str, Any]
    # message_id, correlation_id, content_type, content_encoding, priority (None if absent)
    properties: dict[str, Any]
    received_at: float  # time.time() when the worker got it
    raw: Any = field(default=None, repr=False)  # broker-specific handle (delivery tag, ...)


class BrokerDriver(ABC):
    kind: str
    # Does a dead letter without any headers still have an origin? On Redis it always came
    # from the route's work list; on RabbitMQ only x-death or dlq-origin-* can say.
    origin_without_headers = False

    def __init__(self, topology: Topology, route: Route) -> None:
        self.topology = topology
        self.route = route

    @abstractmethod
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
    ) -> None:
        """Publish a task to the route's work queue as a producer would."""

    @abstractmethod
    def receive(self, timeout: float) -> Received | None:
        """Take one message from the work queue as a worker would (None on timeout)."""

    @abstractmethod
    def ack(self, msg: Received) -> None:
        """The worker succeeded."""

    @abstractmethod
    def fail(
        self, msg: Received, *, error_type: str | None = None, error_message: str | None = None
    ) -> None:
        """Dead-letter it the way this broker's worker side does.

        RabbitMQ: ``basic.reject(requeue=False)`` when no error is given; with an error, the
        worker publishes the message to the route's DLX with ``dlq-error-*`` headers (and
        ``dlq-origin-*``), then acks. Redis: LPUSH the envelope with error headers onto the
        route's dead-letter list.
        """

    @abstractmethod
    def inject_dead_letter(self, body: bytes, headers: dict[str, Any] | None) -> None:
        """Put a raw dead letter straight into the DLQ (bad-input tests)."""

    @abstractmethod
    def parked(self) -> list[Received]:
        """Every parked message, without removing or reordering them."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Messages waiting in: work, dlq, retry (all tiers), parked."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def receive(driver: BrokerDriver, timeout: float = 5.0) -> Received:
    """One message from the work queue, or fail the test saying where messages are."""
    msg = driver.receive(timeout)
    assert msg is not None, f"nothing arrived within {timeout}s; counts: {driver.counts()}"
    return msg
