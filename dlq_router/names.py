"""Every broker object name dlq-router uses is derived here, from a route, and nowhere else.

RabbitMQ, for route ``emails`` (``prefix: app`` puts ``app.`` in front of each derived name)::

    emails              work queue (the route's own; bound to the work exchange)
    emails.dlx          dead-letter exchange (direct), target of the work queue's DLX
    emails.dlq          dead letters, consumed by ``dlq-router run``
    emails.retry        retry exchange (direct); the router publishes here
    emails.retry.10s    one queue per tier, fixed x-message-ttl, dead-letters to work exchange
    emails.retry.10s.2  ... or, with jitter, one queue per lane: TTLs spread over +-jitter
    emails.parked       parking queue, and the parking exchange (direct) the router parks
                        through, so that run needs write on the route's objects only

Redis, for the same route; every key carries the hash tag ``{emails}`` so one Lua script
touches one Cluster slot, and ``{emails}`` hashes to the same slot as kombu's ``emails`` list::

    emails                  work list (kombu's Redis transport; LPUSH in, BRPOP out)
    {emails}:dlq            dead letters pushed by the worker side
    {emails}:inflight       leases: claim ids (zset, score = lease expiry in ms)
    {emails}:claims         leased dead letters (hash claim id -> dead letter)
    {emails}:retry          waiting retries (zset, score = due ms * 4096 + sequence)
    {emails}:seq            sequence for FIFO order within one millisecond
    {emails}:parked         parked messages (hash id -> envelope)
    {emails}:parked:index   parked ids by parked time (zset, score = ms)
    {emails}:topology       the declared route, as JSON
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from dlq_router.durations import format_duration_ms
from dlq_router.topology import RetryPolicy, Route, Topology


@dataclass(frozen=True)
class Tier:
    """One delay step; on RabbitMQ one queue per lane."""

    index: int
    delay_ms: int
    lanes: tuple[Lane, ...]


@dataclass(frozen=True)
class Lane:
    queue: str
    ttl_ms: int


def tier_lanes(policy: RetryPolicy, index: int) -> tuple[int, ...]:
    """The fixed TTLs that realise tier ``index``: one without jitter, else evenly spread."""
    return _lanes(policy.delays[index], policy.jitter, policy.jitter_lanes)


@functools.lru_cache(maxsize=1024)  # the router asks for every dead letter
def _lanes(delay: int, jitter: float, n: int) -> tuple[int, ...]:
    if jitter == 0:
        return (delay,)
    low, high = delay * (1 - jitter), delay * (1 + jitter)
    return tuple(max(1, round(low + (high - low) * k / (n - 1))) for k in range(n))


@dataclass(frozen=True)
class RabbitNames:
    work_exchange: str
    work_queue: str
    routing_key: str
    dlx: str
    dlq: str
    retry_exchange: str
    parking: str
    parking_exchange: str
    tiers: tuple[Tier, ...]


def _base(topology: Topology, route: Route) -> str:
    return f"{topology.prefix}.{route.name}" if topology.prefix else route.name


def rabbit_names(topology: Topology, route: Route) -> RabbitNames:
    base = _base(topology, route)
    tiers = []
    for i, delay in enumerate(route.retry.delays):
        tier_queue = f"{base}.retry.{format_duration_ms(delay)}"
        ttls = tier_lanes(route.retry, i)
        if len(ttls) == 1:
            lanes: tuple[Lane, ...] = (Lane(tier_queue, ttls[0]),)
        else:
            lanes = tuple(Lane(f"{tier_queue}.{k}", ttl) for k, ttl in enumerate(ttls))
        tiers.append(Tier(i, delay, lanes))
    return RabbitNames(
        work_exchange=route.exchange,
        work_queue=route.queue,
        routing_key=route.routing_key,
        dlx=f"{base}.dlx",
        dlq=f"{base}.dlq",
        retry_exchange=f"{base}.retry",
        parking=f"{base}.parked",
        parking_exchange=f"{base}.parked",
        tiers=tuple(tiers),
    )


@dataclass(frozen=True)
class RedisKeys:
    work: str
    dlq: str
    inflight: str
    claims: str
    retry: str
    seq: str
    parked: str
    parked_index: str
    topology: str
    routers: str


def redis_keys(topology: Topology, route: Route) -> RedisKeys:
    tag = "{" + route.queue + "}"
    base = f"{topology.prefix}:{tag}" if topology.prefix else tag
    return RedisKeys(
        work=route.queue,
        dlq=f"{base}:dlq",
        inflight=f"{base}:inflight",
        claims=f"{base}:claims",
        retry=f"{base}:retry",
        seq=f"{base}:seq",
        parked=f"{base}:parked",
        parked_index=f"{base}:parked:index",
        topology=f"{base}:topology",
        routers=f"{base}:routers",
    )
