"""Read-only status of each route on Redis: list lengths, the retry zset, the parking index.

Waiting retries of every tier share one zset (score = due ms * 4096 + sequence), so the
per-tier counts read each member's ``dlq-retry-tier`` header, a page at a time, with a byte
regex instead of decoding the envelope. "Router attached" is the number of routers whose
announcement in ``{q}:routers`` still holds (each refreshes it every second, for 5 s); when
reading it is refused the count is unknown, not zero.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import redis.exceptions as rex

from dlq_router.backends.redis.connection import RedisClient, describe
from dlq_router.backends.redis.declare import server_warnings
from dlq_router.backends.redis.mover import SEQ_SPAN
from dlq_router.backends.redis.parking import RedisParkingLot
from dlq_router.durations import format_duration_ms
from dlq_router.errors import BrokerUnavailable
from dlq_router.names import redis_keys
from dlq_router.status import RouteStatus, Status, TierStatus, add_warnings, read_parking
from dlq_router.topology import Route, Topology
from dlq_router.urls import redact_url

PAGE = 1000
_TIER = re.compile(rb'"dlq-retry-tier"\s*:\s*"([^"]*)"')


def routers(client: RedisClient, key: str, now_ms: int) -> int | None:
    """Routers announced for this route and not yet expired, or None when unreadable."""
    try:
        return int(client.zcount(key, now_ms, "+inf"))
    except rex.ResponseError:  # NOPERM on the key
        return None


def tier_counts(client: RedisClient, key: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    total = int(client.zcard(key))
    for start in range(0, total, PAGE):
        members: list[bytes] = client.zrange(key, start, start + PAGE - 1)  # type: ignore[assignment]
        for member in members:
            found = _TIER.search(member)
            counts[found.group(1).decode("utf-8", "replace") if found else "?"] += 1
    return counts


def route_status(client: RedisClient, topology: Topology, route: Route) -> RouteStatus:
    keys = redis_keys(topology, route)
    status = RouteStatus(route.name, parking_max_length=route.parking.max_length)
    if not client.exists(keys.topology):
        status.missing.append(keys.topology)
    status.declared = not status.missing
    status.work_depth = int(client.llen(keys.work))
    status.dlq_depth = int(client.llen(keys.dlq))
    status.in_flight = int(client.zcard(keys.inflight))
    counts = tier_counts(client, keys.retry)
    for delay in route.retry.delays:
        name = format_duration_ms(delay)
        status.tiers.append(TierStatus(name, delay, counts.pop(name, 0)))
    if counts:  # retries of tiers no longer in the topology: still waiting, still counted
        status.tiers += [TierStatus(name, 0, n) for name, n in sorted(counts.items())]
    first: list[tuple[bytes, float]] = client.zrange(keys.retry, 0, 0, withscores=True)  # type: ignore[assignment]
    if first:
        status.next_due_ms = int(first[0][1]) // SEQ_SPAN
    status.parked = int(client.zcard(keys.parked_index))
    oldest: list[tuple[bytes, float]] = client.zrange(keys.parked_index, 0, 0, withscores=True)  # type: ignore[assignment]
    if oldest:
        status.oldest_parked_ms = int(oldest[0][1])
    return status


def collect(client: RedisClient, topology: Topology, *, groups: bool = True) -> Status:
    """Every route's status; ``groups=False`` skips reading the parked envelopes."""
    url = topology.url
    try:
        routes = []
        now = int(time.time() * 1000)
        for route in topology.routes:
            status = route_status(client, topology, route)
            status.routers = routers(client, redis_keys(topology, route).routers, now)
            if groups and status.parked:
                read_parking(RedisParkingLot(client, topology), route, status)
            add_warnings(route, status, dlq=redis_keys(topology, route).dlq)
            routes.append(status)
        warnings = [item.detail for item in server_warnings(client, url)]
    except (rex.RedisError, OSError) as exc:
        raise BrokerUnavailable(describe(exc, url)) from exc
    return Status("redis", redact_url(url), routes, warnings)
