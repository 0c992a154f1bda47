"""The RabbitMQ objects a topology needs, with every queue argument built here and only here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlq_router.names import RabbitNames, rabbit_names
from dlq_router.topology import Route, Topology


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: str
    kind: str = "exchange"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    kind: str = "queue"


@dataclass(frozen=True)
class BindingSpec:
    exchange: str
    queue: str
    routing_key: str
    kind: str = "binding"

    @property
    def name(self) -> str:
        return f"{self.exchange} -> {self.queue} ({self.routing_key or '*'})"


Spec = ExchangeSpec | QueueSpec | BindingSpec


def _quorum(route: Route, *, dead_letters: bool) -> dict[str, Any]:
    """Quorum arguments. At-least-once dead-lettering needs reject-publish overflow:
    with drop-head RabbitMQ silently falls back to at-most-once."""
    if route.queue_type != "quorum":
        return {}
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    if dead_letters and route.dead_letter_strategy == "at-least-once":
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


def work_queue_arguments(route: Route, names: RabbitNames) -> dict[str, Any]:
    # Fanout DLX, no x-dead-letter-routing-key: the original routing key stays in x-death.
    args: dict[str, Any] = {"x-dead-letter-exchange": names.dlx}
    args.update(_quorum(route, dead_letters=True))
    if route.overflow is not None:
        args["x-overflow"] = route.overflow
    return args


def tier_arguments(route: Route, names: RabbitNames, ttl_ms: int) -> dict[str, Any]:
    # One fixed TTL per queue: RabbitMQ only expires messages at the head, so a per-message
    # TTL in a shared queue would hold short delays behind long ones.
    return {
        "x-message-ttl": ttl_ms,
        "x-dead-letter-exchange": names.work_exchange,
        "x-dead-letter-routing-key": names.routing_key,
        **_quorum(route, dead_letters=True),
    }


def parking_arguments(route: Route) -> dict[str, Any]:
    # No TTL unless retention is asked for; no delivery limit, so that inspecting the
    # parking queue (consume, then return on channel close) can never dead-letter it.
    args: dict[str, Any] = _quorum(route, dead_letters=False)
    if route.parking.max_length is not None:
        args["x-max-length"] = route.parking.max_length
        args["x-overflow"] = route.parking.overflow
    if route.parking.retention is not None:
        args["x-message-ttl"] = route.parking.retention
    return args


def route_specs(topology: Topology, route: Route) -> list[Spec]:
    """Exchanges first, then queues, then bindings: the order they are created in."""
    n = rabbit_names(topology, route)
    specs: list[Spec] = []
    if n.work_exchange:  # "" is the default exchange: it always exists
        specs.append(ExchangeSpec(n.work_exchange, route.exchange_type))
    specs += [ExchangeSpec(n.dlx, "fanout"), ExchangeSpec(n.retry_exchange, "direct")]
    # Parks go through an exchange of the route's own, not the default exchange: write on
    # amq.default would let the router's user publish into every queue of the vhost.
    specs.append(ExchangeSpec(n.parking_exchange, "direct"))
    specs.append(QueueSpec(n.work_queue, work_queue_arguments(route, n)))
    specs.append(QueueSpec(n.dlq, _quorum(route, dead_letters=False)))
    lanes = [lane for tier in n.tiers for lane in tier.lanes]
    specs += [QueueSpec(lane.queue, tier_arguments(route, n, lane.ttl_ms)) for lane in lanes]
    specs.append(QueueSpec(n.parking, parking_arguments(route)))
    if n.work_exchange:
        specs.append(BindingSpec(n.work_exchange, n.work_queue, n.routing_key))
    specs.append(BindingSpec(n.dlx, n.dlq, ""))
    specs += [BindingSpec(n.retry_exchange, lane.queue, lane.queue) for lane in lanes]
    specs.append(BindingSpec(n.parking_exchange, n.parking, n.parking))
    return specs


def topology_specs(topology: Topology) -> list[Spec]:
    """All routes' objects, deduplicated (routes may share a work exchange)."""
    seen: set[tuple[str, str]] = set()
    out: list[Spec] = []
    for route in topology.routes:
        for spec in route_specs(topology, route):
            if (spec.kind, spec.name) not in seen:
                seen.add((spec.kind, spec.name))
                out.append(spec)
    order = {"exchange": 0, "queue": 1, "binding": 2}
    return sorted(out, key=lambda s: order[s.kind])
