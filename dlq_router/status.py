"""``dlq-router status`` and the console's overview, broker-neutral: what each route looks like.

Backends fill ``RouteStatus`` from read-only broker queries (``backends/*/status.py``);
``warnings`` here turns the numbers into what an operator must act on. ``as_dict`` field names
are a stable interface (README, "dlq-router status"): add fields, never rename them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dlq_router.parking import LotSummary, Selector, group_row, iso, now_ms
from dlq_router.parking.lot import ParkingLot
from dlq_router.topology import Route

TOP_GROUPS = 3
NEAR_FULL = 0.9  # a parking lot at 90% of max_length gets a warning


@dataclass
class TierStatus:
    tier: str  # "10s"
    delay_ms: int
    waiting: int


@dataclass
class RouteStatus:
    route: str
    declared: bool = True
    missing: list[str] = field(default_factory=list)  # broker objects that do not exist
    work_depth: int | None = None
    dlq_depth: int | None = None
    routers: int | None = None  # RabbitMQ: consumers on the DLQ; Redis: routers connected
    in_flight: int | None = None  # Redis: dead letters leased by a router
    tiers: list[TierStatus] = field(default_factory=list)
    next_due_ms: int | None = None  # Redis: when the next waiting retry is due
    parked: int = 0
    parking_max_length: int | None = None
    oldest_parked_ms: int | None = None
    summary: LotSummary | None = None  # None: groups not read (--no-groups)
    warnings: list[str] = field(default_factory=list)

    @property
    def retries_waiting(self) -> int:
        return sum(t.waiting for t in self.tiers)

    def as_dict(self, now: int) -> dict[str, Any]:
        oldest = self.oldest_parked_ms
        return {
            "route": self.route,
            "declared": self.declared,
            "missing": self.missing,
            "work_depth": self.work_depth,
            "dlq_depth": self.dlq_depth,
            "routers": self.routers,
            "in_flight": self.in_flight,
            "retries_waiting": self.retries_waiting,
            "tiers": [
                {"tier": t.tier, "delay_ms": t.delay_ms, "waiting": t.waiting} for t in self.tiers
            ],
            "next_due": self.next_due_ms,
            "next_due_iso": iso(self.next_due_ms),
            "parked": self.parked,
            "parking_max_length": self.parking_max_length,
            "oldest_parked": oldest,
            "oldest_parked_iso": iso(oldest),
            "oldest_parked_age_s": None if oldest is None else max(0, now - oldest) // 1000,
            "top_groups": [group_row(g) for g in self.top_groups],
            "warnings": self.warnings,
        }

    @property
    def top_groups(self) -> list[Any]:
        return self.summary.groups()[:TOP_GROUPS] if self.summary is not None else []


@dataclass
class Status:
    broker: str  # rabbitmq / redis
    url: str  # redacted
    routes: list[RouteStatus]
    warnings: list[str] = field(default_factory=list)  # about the server, not one route
    taken_at: int = field(default_factory=now_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "url": self.url,
            "taken_at": self.taken_at,
            "taken_at_iso": iso(self.taken_at),
            "routes": [r.as_dict(self.taken_at) for r in self.routes],
            "warnings": self.warnings,
        }

    @property
    def all_warnings(self) -> Iterator[str]:
        yield from self.warnings
        for r in self.routes:
            yield from (f"{r.route}: {w}" for w in r.warnings)


def read_parking(lot: ParkingLot, route: Route, status: RouteStatus) -> None:
    """Fold the route's parking lot into ``status.summary`` in one pass (no message kept)."""
    summary = LotSummary()
    for msg in lot.scan(Selector(routes=(route.name,))):
        summary.add(msg)
    status.summary = summary
    if summary.oldest is not None and (
        status.oldest_parked_ms is None or summary.oldest < status.oldest_parked_ms
    ):
        status.oldest_parked_ms = summary.oldest


def add_warnings(route: Route, status: RouteStatus, *, dlq: str) -> None:
    """The route-level warnings: never declared, no router, parking lot near full."""
    if not status.declared:
        status.warnings.append(
            "never declared (missing: " + ", ".join(status.missing) + "): run `dlq-router declare`"
        )
        return
    if status.routers == 0:
        status.warnings.append(f"no router consuming {dlq}: dead letters are not routed")
    cap = route.parking.max_length
    if cap is not None and status.parked >= NEAR_FULL * cap:
        full = route.parking.overflow
        what = "new parks are refused" if full == "reject-publish" else "the oldest are dropped"
        status.warnings.append(
            f"parking lot near max_length ({status.parked}/{cap}); when full, {what}"
        )
