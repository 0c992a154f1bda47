"""The one interface both brokers implement, and the broker-neutral values it passes.

A backend is opened on a validated ``Topology``. Nothing outside ``backends/rabbitmq`` imports
pika and nothing outside ``backends/redis`` imports redis.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from dlq_router.metrics import Metrics

if TYPE_CHECKING:  # dlq_router/parking/ imports ParkedMessage from here
    from dlq_router.parking import ParkingLot
    from dlq_router.status import Status

PlanStatus = Literal["create", "unchanged", "conflict", "warning"]


@dataclass(frozen=True)
class PlanItem:
    """One object of a declare plan: what it is and what declare does (or did) to it."""

    kind: str  # exchange / queue / binding / key / server
    name: str
    status: PlanStatus
    detail: str = ""


@dataclass
class DeclareReport:
    items: list[PlanItem] = field(default_factory=list)
    applied: bool = False

    @property
    def conflicts(self) -> list[PlanItem]:
        return [i for i in self.items if i.status == "conflict"]


@dataclass
class RouterContext:
    """What the run loop needs from outside: stop flag, metrics, logger, clock, randomness."""

    metrics: Metrics
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("dlq_router.run"))
    stop: threading.Event = field(default_factory=threading.Event)
    # Set by a second signal: give up on outstanding confirms and close at once.
    abort: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    prefetch: int | None = None  # None: the backend's default (DEFAULT_PREFETCH there)
    # RabbitMQ: bodies held at once before consuming pauses; None: DEFAULT_MAX_IN_FLIGHT_BYTES
    max_in_flight_bytes: int | None = None
    shutdown_timeout: float = 10.0
    # A dead letter held (its park not confirmed) this long is reported: metric + warning.
    hold_alert_after: float = 60.0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


@dataclass(frozen=True)
class ParkedMessage:
    """A parked message, broker-neutral. ``body`` is opaque bytes and is never decoded here.

    ``properties`` uses AMQP property names (content_type, content_encoding, message_id,
    correlation_id, priority, ...); on Redis it also keeps kombu's other envelope properties
    (delivery_info, reply_to, ...) so that an export/import round trip loses nothing.
    """

    id: str
    route: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)


class Backend(Protocol):
    """declare / run the router / the parking lot, for one broker."""

    kind: str

    def declare(self, *, dry_run: bool) -> DeclareReport: ...

    def run_router(self, ctx: RouterContext) -> None:
        """Consume dead letters of every route until ``ctx.stop`` is set."""
        ...

    @property
    def parking(self) -> ParkingLot:
        """The parking lot of every route: list, show, replay, purge, import."""
        ...

    def status(self, *, groups: bool = True) -> Status:
        """Read-only status of every route (``groups``: also scan each parking lot)."""
        ...

    def close(self) -> None: ...
