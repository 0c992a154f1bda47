"""``declare`` on Redis: record each route at ``{q}:topology``; warn where Redis loses retries.

Redis keys need no creating, so declare records what the router was set up with and
refuses (conflict, nothing written) when the recorded route differs. It also checks the
server: any ``maxmemory-policy`` but ``noeviction`` may evict waiting retries, and without
AOF or RDB a restart loses them.
"""

from __future__ import annotations

import json
from typing import Any

import redis.exceptions as rex
from redis.cluster import RedisCluster

from dlq_router.backends.base import DeclareReport, PlanItem
from dlq_router.backends.redis.connection import RedisClient, describe
from dlq_router.errors import BrokerUnavailable, TopologyConflict, UsageError
from dlq_router.names import redis_keys
from dlq_router.topology import Route, Topology
from dlq_router.urls import redact_url


def route_record(route: Route) -> str:
    """The route as recorded: canonical JSON, so equal routes compare equal as text."""
    return json.dumps(route.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _differences(recorded: str, wanted: str) -> str:
    try:
        old: dict[str, Any] = json.loads(recorded)
    except ValueError:
        return "recorded value is not a route (not JSON)"
    new: dict[str, Any] = json.loads(wanted)
    if not isinstance(old, dict):
        return "recorded value is not a route"
    changed = [
        f"{key}: recorded {json.dumps(old.get(key))}, topology {json.dumps(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    return "; ".join(changed)


def _config(client: RedisClient, name: str) -> list[str]:
    """CONFIG GET ``name`` on the server, or on every primary of a Cluster."""
    if isinstance(client, RedisCluster):
        replies: Any = client.config_get(name, target_nodes=RedisCluster.PRIMARIES)
    else:
        replies = client.config_get(name)
    values = replies.values() if isinstance(replies, dict) else [replies]
    out: list[str] = []
    for value in values:
        if isinstance(value, dict):  # Cluster: one {name: value} reply per node
            out += [_text(v) for v in value.values()]
        else:
            out.append(_text(value))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def server_warnings(client: RedisClient, url: str) -> list[PlanItem]:
    """Where this Redis would lose waiting retries, as ``warning`` plan items."""
    where = redact_url(url)
    try:
        policies = set(_config(client, "maxmemory-policy"))
        aof = set(_config(client, "appendonly"))
        save = set(_config(client, "save"))
    except rex.ResponseError as exc:  # CONFIG renamed/disabled, or no permission
        return [
            PlanItem(
                "server",
                where,
                "warning",
                f"could not check eviction and persistence (CONFIG GET refused: {exc}); "
                "make sure maxmemory-policy is noeviction and AOF or RDB is on",
            )
        ]
    items = []
    bad = sorted(p for p in policies if p != "noeviction")
    if bad:
        items.append(
            PlanItem(
                "server",
                where,
                "warning",
                f"maxmemory-policy is {', '.join(bad)}: Redis may evict waiting retries and "
                "parked messages under memory pressure; set it to noeviction",
            )
        )
    if "yes" not in aof and not any(s.strip() for s in save):
        items.append(
            PlanItem(
                "server",
                where,
                "warning",
                'no persistence (appendonly no, save ""): a Redis restart loses every '
                "waiting retry and parked message; enable AOF (appendonly yes) or RDB",
            )
        )
    return items


def check_declared(client: RedisClient, topology: Topology) -> None:
    """Before ``run``, as on RabbitMQ: a route never declared is exit 2, a route recorded
    differently from the file (what ``declare`` would refuse) is exit 3."""
    missing: list[str] = []
    conflicts: list[str] = []
    try:
        for route in topology.routes:
            key = redis_keys(topology, route).topology
            raw = client.get(key)
            if raw is None:
                missing.append(route.name)
            elif _text(raw) != route_record(route):
                conflicts.append(f"key {key}: {_differences(_text(raw), route_record(route))}")
    except rex.RedisError as exc:
        raise BrokerUnavailable(describe(exc, topology.url)) from exc
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(
            f"route {missing[0]!r}{more} was never declared on {redact_url(topology.url)}: "
            "run `dlq-router declare` first"
        )
    if conflicts:
        raise TopologyConflict(conflicts, "the router was not started")


def declare(client: RedisClient, topology: Topology, *, dry_run: bool) -> DeclareReport:
    """Plan (and unless ``dry_run`` or conflicting, apply) the topology records."""
    try:
        wanted = {r.name: route_record(r) for r in topology.routes}
        items: list[PlanItem] = []
        writes: list[tuple[str, str]] = []
        for route in topology.routes:
            key = redis_keys(topology, route).topology
            raw = client.get(key)
            recorded = None if raw is None else _text(raw)
            if recorded is None:
                items.append(PlanItem("key", key, "create", f"route {route.name}"))
                writes.append((key, wanted[route.name]))
            elif recorded == wanted[route.name]:
                items.append(PlanItem("key", key, "unchanged", f"route {route.name}"))
            else:
                detail = _differences(recorded, wanted[route.name])
                items.append(PlanItem("key", key, "conflict", detail))
        items += server_warnings(client, topology.url)
        report = DeclareReport(items)
        if dry_run or report.conflicts:
            return report
        for key, value in writes:
            # NX: two declares racing cannot overwrite each other's record.
            client.set(key, value, nx=True)
        report.applied = True
        return report
    except rex.RedisError as exc:
        raise BrokerUnavailable(describe(exc, topology.url)) from exc
