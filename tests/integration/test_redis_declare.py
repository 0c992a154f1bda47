"""``declare`` on Redis: the route record, conflicts, and the eviction/persistence warnings."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from typer.testing import CliRunner

from dlq_router.backends.redis.backend import RedisBackend
from dlq_router.cli import app
from dlq_router.names import redis_keys
from dlq_router.topology import parse_topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.redis_cluster import local_server


def test_declare_records_routes_then_reports_unchanged(
    make_topology: TopologyFactory, uid: str, redis_client: redis.Redis
) -> None:
    topology = make_topology("redis", routes=[route_dict(uid), route_dict(uid + "b")])
    backend = RedisBackend(topology)
    try:
        plan = backend.declare(dry_run=True)
        keys = [redis_keys(topology, r).topology for r in topology.routes]
        assert [(i.name, i.status) for i in plan.items if i.kind == "key"] == [
            (k, "create") for k in keys
        ]
        assert not plan.applied and redis_client.exists(*keys) == 0

        first = backend.declare(dry_run=False)
        assert first.applied
        recorded = json.loads(redis_client.get(keys[0]) or b"")
        assert recorded["retry"]["delays"] == [200, 400, 800]

        again = backend.declare(dry_run=False)
        assert [i.status for i in again.items if i.kind == "key"] == ["unchanged", "unchanged"]
    finally:
        backend.close()


def test_changed_route_is_a_conflict_and_nothing_is_written(
    make_topology: TopologyFactory, uid: str, redis_client: redis.Redis
) -> None:
    old = make_topology("redis", routes=[route_dict(uid)])
    RedisBackend(old).declare(dry_run=False)
    changed = route_dict(uid, retry={"delays": ["1s"], "max_attempts": 2})
    new = make_topology("redis", routes=[changed, route_dict(uid + "c")])
    report = RedisBackend(new).declare(dry_run=False)
    (conflict,) = report.conflicts
    assert "retry: recorded" in conflict.detail and "max_attempts" in conflict.detail
    assert not report.applied
    assert redis_client.exists(redis_keys(new, new.routes[1]).topology) == 0


def test_cli_declare_exit_codes(make_topology: TopologyFactory, uid: str, tmp_path: Path) -> None:
    topology = make_topology("redis", routes=[route_dict(uid)])
    path = tmp_path / "t.yaml"
    path.write_text(json.dumps(topology.model_dump(mode="json")))
    runner = CliRunner()
    result = runner.invoke(app, ["declare", "-t", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 created" in result.output
    again = runner.invoke(app, ["declare", "-t", str(path), "--json"])
    assert again.exit_code == 0
    assert [i["status"] for i in json.loads(again.output)["items"] if i["kind"] == "key"] == [
        "unchanged"
    ]
    data = topology.model_dump(mode="json")
    data["routes"][0]["retry"]["max_attempts"] = 9
    path.write_text(json.dumps(data))
    conflict = runner.invoke(app, ["declare", "-t", str(path)])
    assert conflict.exit_code == 3
    assert "max_attempts" in conflict.output


def _warnings(url: str, uid: str) -> list[str]:
    topology = parse_topology({"url": url, "routes": [route_dict(uid)]})
    backend = RedisBackend(topology)
    try:
        report = backend.declare(dry_run=True)
    finally:
        backend.close()
    return [i.detail for i in report.items if i.status == "warning"]


def test_warns_when_redis_may_evict_or_forget(uid: str) -> None:
    with local_server(
        "--maxmemory-policy", "allkeys-lru", "--save", "", "--appendonly", "no"
    ) as server:
        warnings = _warnings(server.url, uid)
    assert len(warnings) == 2
    assert "allkeys-lru" in warnings[0] and "noeviction" in warnings[0]
    assert "no persistence" in warnings[1]


def test_no_warning_with_noeviction_and_aof(uid: str) -> None:
    with local_server(
        "--maxmemory-policy", "noeviction", "--save", "", "--appendonly", "yes"
    ) as server:
        assert _warnings(server.url, uid) == []
    with local_server("--save", "3600 1", "--appendonly", "no") as server:
        assert _warnings(server.url, uid) == []


def test_warns_when_config_is_disabled(uid: str) -> None:
    with local_server("--rename-command", "CONFIG", "") as server:
        (warning,) = _warnings(server.url, uid)
    assert "could not check" in warning
