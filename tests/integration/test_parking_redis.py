"""Redis-only parking-lot behaviour: kombu priority lists, atomic batches, concurrent moves."""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import pytest

from dlq_router import parking as p
from dlq_router.backends import open_backend
from dlq_router.backends.redis.envelope import Envelope, work_list
from dlq_router.names import redis_keys
from tests.conftest import TopologyFactory, route_dict
from tests.integration.parking_support import Parked, RedisParkDriver, cli, write_topology


def test_work_list_follows_kombu_priority_steps() -> None:
    from kombu.transport.redis import Channel

    for priority in (None, 0, 1, 3, 5, 6, 9, 12, "x"):
        kombu_step = Channel.priority(Channel, 0 if priority in (None, "x") else min(priority, 9))  # type: ignore[arg-type]
        expected = "q" if kombu_step == 0 else f"q\x06\x16{kombu_step}"
        step = Envelope({"properties": {"priority": priority}}).priority_step()
        assert work_list("q", step) == expected


def test_replay_pushes_to_the_priority_list_kombu_reads(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topology = make_topology("redis", routes=[route_dict(uid)])
    route = topology.routes[0]
    driver = RedisParkDriver(topology)
    try:
        driver.park(route, [Parked("hi", priority=6), Parked("lo", priority=0)])
        result = cli("replay", "-t", write_topology(topology, tmp_path / "t.yaml"), "--all")
        assert result.exit_code == 0, result.output
        lists = {w.headers["id"]: w.properties["list"] for w in driver.work(route)}
        assert lists == {"task-hi": f"{uid}\x06\x166", "task-lo": uid}
    finally:
        driver.close()


def test_concurrent_replays_move_each_message_exactly_once(
    make_topology: TopologyFactory, uid: str
) -> None:
    topology = make_topology("redis", routes=[route_dict(uid)])
    route = topology.routes[0]
    driver = RedisParkDriver(topology)
    results: list[p.ReplayResult] = []

    def replay() -> None:
        backend = open_backend(topology)
        try:
            results.append(backend.parking.replay(p.Selector(all=True), p.ReplayOptions()))
        finally:
            backend.close()

    try:
        driver.park(route, [Parked(f"c{i}", parked_at=i) for i in range(3000)])
        threads = [threading.Thread(target=replay) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        counts = collections.Counter(w.headers["id"] for w in driver.work(route))
        assert len(counts) == 3000 and set(counts.values()) == {1}
        assert sum(r.replayed for r in results) == 3000
        assert sum(r.replayed + r.skipped for r in results) >= 3000
        assert driver.parked_ids(route) == []
    finally:
        driver.close()


def test_unreadable_envelope_is_shown_raw_and_not_replayed(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topology = make_topology("redis", routes=[route_dict(uid)])
    keys = redis_keys(topology, topology.routes[0])
    driver = RedisParkDriver(topology)
    path = write_topology(topology, tmp_path / "t.yaml")
    try:
        driver.client.hset(keys.parked, "junk", b"not json \xff")
        driver.client.zadd(keys.parked_index, {"junk": 5})
        shown = cli("parked", "show", "junk", "-t", path)
        assert shown.exit_code == 0 and "dlq-envelope-error" in shown.stdout
        result = cli("replay", "-t", path, "--all")
        assert result.exit_code == 5 and "not readable" in result.output
        assert driver.parked_ids(topology.routes[0]) == ["junk"]
    finally:
        driver.close()


def test_replay_in_several_pipelined_batches_keeps_order_and_counts(
    make_topology: TopologyFactory, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dlq_router.backends.redis.parking as redis_parking

    monkeypatch.setattr(redis_parking, "BATCH", 10)
    topology = make_topology("redis", routes=[route_dict(uid)])
    route = topology.routes[0]
    driver = RedisParkDriver(topology)
    moved: list[int] = []
    try:
        driver.park(route, [Parked(f"o{i}", parked_at=1000 + i) for i in range(25)])
        backend = open_backend(topology)
        try:
            result = backend.parking.replay(
                p.Selector(all=True), p.ReplayOptions(), progress=moved.append
            )
        finally:
            backend.close()
        assert (result.selected, result.replayed, result.skipped) == (25, 25, 0)
        assert moved == [10, 10, 5]
        order = [w.headers["id"] for w in driver.work(route)]
        assert order == [f"task-o{i}" for i in range(25)]  # oldest first, as parked
        assert driver.parked_ids(route) == []
    finally:
        driver.close()
