"""``dlq-router status`` through the real CLI in a subprocess, on both brokers.

Each test builds a known state (work, tier queues / retry zset, parked messages, a route
never declared), runs ``python -m dlq_router status``, and checks the numbers against what it
put there, then that the status left the broker as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dlq_router import headers as h
from dlq_router.backends import open_backend
from dlq_router.names import rabbit_names, redis_keys
from dlq_router.topology import Route, Topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.parking_support import (
    ParkDriver,
    Parked,
    RabbitParkDriver,
    RedisParkDriver,
    write_topology,
)
from tests.integration.redis_cluster import local_server
from tests.integration.router_process import RouterProcess

HOUR = 3_600_000
RETRY = {"delays": ["1h", "2h"], "max_attempts": 3}


def status_cli(path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "dlq_router", "status", "-t", str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def status_json(path: Path) -> dict[str, Any]:
    done = status_cli(path, "--json")
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def by_route(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["route"]: r for r in report["routes"]}


class Scene:
    """Work 1 message, retries 2 in tier 1h and 1 in 2h, six parked (3 groups), route b
    never declared; parking max_length 6 (full: near-full warning)."""

    def __init__(self, topology: Topology, path: Path, driver: ParkDriver) -> None:
        self.topology, self.path, self.driver = topology, path, driver
        self.route: Route = topology.routes[0]
        self.now = int(time.time() * 1000)

    def park(self) -> None:
        t = self.now
        self.driver.park(
            self.route,
            [
                Parked("old1", parked_at=t - 2 * HOUR, error_type="TimeoutError"),
                Parked("a1", parked_at=t - 5000),
                Parked("v1", parked_at=t - 4000, error_type="ValueError", reason="non_retryable"),
                Parked("a2", parked_at=t - 3000),
                Parked("v2", parked_at=t - 2000, error_type="ValueError", reason="non_retryable"),
                Parked("a3", parked_at=t - 1000),
            ],
        )


def rabbit_scene(topology: Topology, path: Path) -> Scene:
    route = topology.routes[0]
    driver = RabbitParkDriver(topology.model_copy(update={"routes": [route]}))  # route a only
    names = rabbit_names(topology, route)
    ch = driver.ch
    ch.basic_publish(route.exchange, route.routing_key, b"{}", mandatory=True)
    for tier, n in ((0, 2), (1, 1)):
        for _ in range(n):
            ch.basic_publish("", names.tiers[tier].lanes[0].queue, b"{}", mandatory=True)
    return Scene(topology, path, driver)


def redis_scene(topology: Topology, path: Path) -> Scene:
    route = topology.routes[0]
    one = topology.model_copy(update={"routes": [route]})
    backend = open_backend(one)
    try:
        backend.declare(dry_run=False)
    finally:
        backend.close()
    driver = RedisParkDriver(topology)
    keys = redis_keys(topology, route)
    client = driver.client
    client.lpush(keys.work, json.dumps({"body": "e30=", "headers": {}, "properties": {}}))
    now = int(time.time() * 1000)
    for i, (tier, due) in enumerate((("1h", HOUR), ("1h", HOUR + 1), ("2h", 2 * HOUR))):
        member = "0" + json.dumps({"headers": {h.RETRY_TIER: tier}, "n": i})
        client.zadd(keys.retry, {member: (now + due) * 4096 + i})
    return Scene(topology, path, driver)


class StatusBehaviour:
    kind: str

    @pytest.fixture
    def scene(self, make_topology: TopologyFactory, uid: str, tmp_path: Path) -> Iterator[Scene]:
        routes = [
            route_dict(uid + "a", retry=RETRY, parking={"max_length": 6}),
            route_dict(uid + "b", retry=RETRY),
        ]
        topology = make_topology(self.kind, routes=routes)
        path = write_topology(topology, tmp_path / "topology.yaml")
        made = rabbit_scene if self.kind == "rabbitmq" else redis_scene
        scene = made(topology, path)
        try:
            yield scene
        finally:
            scene.driver.close()

    def test_json_reports_each_route(self, scene: Scene) -> None:
        scene.park()
        before = scene.driver.parked_ids(scene.route)
        report = status_json(scene.path)
        assert report["broker"] == self.kind
        routes = by_route(report)
        a, b = routes[scene.route.name], routes[scene.topology.routes[1].name]
        assert a["declared"] is True and a["missing"] == []
        assert a["work_depth"] == 1 and a["dlq_depth"] == 0
        assert [(t["tier"], t["waiting"]) for t in a["tiers"]] == [("1h", 2), ("2h", 1)]
        assert a["retries_waiting"] == 3
        assert a["parked"] == 6 and a["parking_max_length"] == 6
        assert a["oldest_parked"] == scene.now - 2 * HOUR
        assert 2 * 3600 - 5 <= a["oldest_parked_age_s"] <= 2 * 3600 + 120
        top = [(g["count"], g["error_type"], g["reason"]) for g in a["top_groups"]]
        assert top == [
            (3, "ConnectionError", "max_attempts"),
            (2, "ValueError", "non_retryable"),
            (1, "TimeoutError", "max_attempts"),
        ]
        if self.kind == "redis":
            assert a["next_due"] is not None
            assert abs(a["next_due"] - (scene.now + HOUR)) < 120_000
        assert a["routers"] == 0
        assert any("no router consuming" in w for w in a["warnings"])
        assert any("near max_length (6/6)" in w for w in a["warnings"])
        assert b["declared"] is False and b["missing"]
        assert any("never declared" in w for w in b["warnings"])
        # read-only: same messages in the same order, nothing taken
        assert scene.driver.parked_ids(scene.route) == before
        assert scene.driver.work_depth(scene.route) == 1

    def test_table_and_router_attached(self, scene: Scene, tmp_path: Path) -> None:
        one = scene.topology.model_copy(update={"routes": [scene.route]})
        router = RouterProcess(one, tmp_path).start()
        try:
            done = status_cli(write_topology(one, tmp_path / "one.yaml"))
            assert done.returncode == 0, done.stderr
            assert scene.route.name in done.stdout and "ROUTERS" in done.stdout
            report = by_route(status_json(write_topology(one, tmp_path / "one.yaml")))
            assert report[scene.route.name]["routers"] >= 1
            assert not any("no router" in w for w in report[scene.route.name]["warnings"])
            if self.kind == "redis":
                # A router counts only for the routes it serves, not for every route on the
                # server (the other route of the file has none).
                other = by_route(status_json(scene.path))[scene.topology.routes[1].name]
                assert other["routers"] == 0
        finally:
            router.close()
        done = status_cli(scene.path)
        assert "warning: " in done.stdout and "never declared" in done.stdout
        assert "guest:guest" not in done.stdout + done.stderr

    def test_watch_refreshes_until_interrupted(self, scene: Scene) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "dlq_router", "status", "-t", str(scene.path)]
        proc = subprocess.Popen(
            [*cmd, "--json", "--watch", "0.5"], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            second = json.loads(proc.stdout.readline())
            assert second["taken_at"] > first["taken_at"]
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130


class TestRabbitStatus(StatusBehaviour):
    kind = "rabbitmq"

    def test_unreachable_broker_is_one_line(self, scene: Scene, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text(scene.path.read_text().replace(":5672", ":1"))
        done = status_cli(path)
        assert done.returncode == 2
        assert done.stderr.startswith("dlq-router: error:") and len(done.stderr.splitlines()) == 1


class TestRedisStatus(StatusBehaviour):
    kind = "redis"


def test_redis_eviction_and_persistence_warnings(uid: str, tmp_path: Path) -> None:
    with local_server(
        "--maxmemory-policy", "allkeys-lru", "--save", "", "--appendonly", "no"
    ) as server:
        path = tmp_path / "t.yaml"
        route = route_dict(uid, retry=RETRY)
        path.write_text(json.dumps({"url": server.url, "routes": [route]}))
        report = status_json(path)
        client = redis.Redis.from_url(server.url)
        assert client.dbsize() == 0  # status wrote nothing
        client.close()
    assert any("allkeys-lru" in w for w in report["warnings"])
    assert any("no persistence" in w for w in report["warnings"])
