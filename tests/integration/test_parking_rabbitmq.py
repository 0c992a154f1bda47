"""RabbitMQ-only parking-lot behaviour: non-destructive snapshots, retention, failures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from dlq_router import parking as p
from dlq_router.backends import open_backend
from dlq_router.backends.rabbitmq.parking import RabbitParkingLot
from dlq_router.names import rabbit_names
from tests.conftest import TopologyFactory, route_dict
from tests.integration.parking_support import (
    Parked,
    RabbitParkDriver,
    RedisParkDriver,
    cli,
    json_lines,
    write_topology,
)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_listing_keeps_order_and_count(
    make_topology: TopologyFactory, uid: str, tmp_path: Path, queue_type: str
) -> None:
    topology = make_topology(routes=[route_dict(uid, queue_type=queue_type)])
    route = topology.routes[0]
    path = write_topology(topology, tmp_path / "t.yaml")
    driver = RabbitParkDriver(topology)
    try:
        now = int(time.time() * 1000)
        # Parked-at times deliberately not in queue order: listing sorts, the queue must not.
        ids = [f"m{i:03d}" for i in range(200)]
        driver.park(
            route, [Parked(i, parked_at=now - (n * 7919) % 1000) for n, i in enumerate(ids)]
        )
        for args in (["list"], ["list", "--limit", "5"], ["groups"], ["show", "m100"]):
            result = cli("parked", *args, "-t", path)
            assert result.exit_code == 0, result.output
        assert cli("replay", "-t", path, "--all", "--dry-run").exit_code == 0
        drained = driver.drain_parked(route)
        assert [i for i, _ in drained] == ids
    finally:
        driver.close()


def test_a_second_concurrent_reader_sees_only_what_is_not_held(
    make_topology: TopologyFactory, uid: str
) -> None:
    """A snapshot holds messages unacked; a concurrent one stops short instead of hanging."""
    topology = make_topology()
    route = topology.routes[0]
    driver = RabbitParkDriver(topology)
    try:
        driver.park(route, [Parked(f"c{i}") for i in range(10)])
        ch = driver.conn.channel()
        ch.basic_qos(prefetch_count=4)
        queue = rabbit_names(topology, route).parking
        held = [ch.basic_get(queue, auto_ack=False) for _ in range(4)]
        assert all(m[0] is not None for m in held)
        backend = open_backend(topology)
        try:
            seen = list(backend.parking.iter(p.Selector()))
        finally:
            backend.close()
        assert len(seen) == 6
        ch.close()
        assert len(driver.drain_parked(route)) == 10
    finally:
        driver.close()


def test_replay_failures_stay_parked_and_exit_5(
    make_topology: TopologyFactory, uid: str, tmp_path: Path, amqp: Any
) -> None:
    """Destinations come from the topology, so a failing one is a route whose exchange was
    deleted (gone) or whose work queue was unbound (lost) since declare."""
    topology = make_topology(routes=[route_dict(uid), route_dict(uid + "b"), route_dict(uid + "c")])
    route, gone, lost = topology.routes
    path = write_topology(topology, tmp_path / "t.yaml")
    driver = RabbitParkDriver(topology)
    try:
        driver.park(route, [Parked("ok1")])
        driver.park(gone, [Parked("gone")])
        driver.park(route, [Parked("ok2")])
        driver.park(lost, [Parked("lost")])
        driver.park(route, [Parked("ok3")])
        amqp.exchange_delete(gone.exchange)
        amqp.queue_unbind(lost.queue, lost.exchange, routing_key=lost.routing_key)
        result = cli("replay", "-t", path, "--all", "--json")
        assert result.exit_code == 5, result.output
        summary = json_lines(result.stdout)[-1]
        assert summary["replayed"] == 3 and summary["failed"] == 2
        errors = {f["id"]: f["error"] for f in summary["failures"]}
        assert "does not exist" in errors["gone"] and "unroutable" in errors["lost"]
        work = [w.headers["id"] for w in driver.work(route)]
        assert work == ["task-ok1", "task-ok2", "task-ok3"]
        assert [i for i, _ in driver.drain_parked(gone)] == ["gone"]
        assert [i for i, _ in driver.drain_parked(lost)] == ["lost"]
    finally:
        driver.close()


@pytest.mark.parametrize("overflow", ["reject-publish", "drop-head"])
def test_parking_overflow_refuses_unless_drop_is_asked_for(
    make_topology: TopologyFactory, uid: str, overflow: str
) -> None:
    parking = {"max_length": 3, "overflow": overflow}
    topology = make_topology(routes=[route_dict(uid, parking=parking)])
    route = topology.routes[0]
    driver = RabbitParkDriver(topology)
    try:
        refused = []
        for i in range(5):
            try:
                driver.park(route, [Parked(f"o{i}")])
            except pika.exceptions.NackError:
                refused.append(f"o{i}")
        kept = [i for i, _ in driver.drain_parked(route)]
        if overflow == "reject-publish":
            assert refused == ["o3", "o4"] and kept == ["o0", "o1", "o2"]  # nothing dropped
        else:
            assert refused == [] and kept == ["o2", "o3", "o4"]  # oldest dropped, as asked
    finally:
        driver.close()


def test_export_from_rabbitmq_import_to_redis(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    rabbit = make_topology(routes=[route_dict(uid)])
    redis_topology = make_topology("redis", routes=[route_dict(uid)])
    route = rabbit.routes[0]
    source = RabbitParkDriver(rabbit)
    target = RedisParkDriver(redis_topology)
    try:
        source.park(
            route,
            [
                Parked("x1", parked_at=1000, extra={"raw": b"\xff\x00", "n": 5}),
                Parked("x2", body=b"\x80\x04K\x01.", content_type="application/x-python-serialize"),
            ],
        )
        out = tmp_path / "lot.jsonl"
        result = cli(
            "parked", "export", "-t", write_topology(rabbit, tmp_path / "r.yaml"), "-o", out
        )
        assert result.exit_code == 0, result.output
        redis_path = write_topology(redis_topology, tmp_path / "d.yaml")
        result = cli("parked", "import", str(out), "-t", redis_path)
        assert result.exit_code == 0 and "imported 2" in result.output, result.output
        x2 = json_lines(cli("parked", "show", "x2", "-t", redis_path, "--json").stdout)[0]
        assert x2["body"]["kind"] == "pickle" and x2["size"] == 5
        x1 = json_lines(cli("parked", "show", "x1", "-t", redis_path, "--json").stdout)[0]
        assert x1["headers"]["n"] == 5 and x1["parked_at"] == 1000
        # Replayed from Redis, the message reaches the kombu work list intact.
        assert cli("replay", "-t", redis_path, "--id", "x2").exit_code == 0
        (work,) = target.work(redis_topology.routes[0])
        assert work.body == b"\x80\x04K\x01." and work.headers["task"] == "tasks.send_email"
        assert work.properties["content_type"] == "application/x-python-serialize"
    finally:
        source.close()
        target.close()


def test_import_reports_what_the_broker_returned(
    make_topology: TopologyFactory,
    uid: str,
    tmp_path: Path,
    amqp: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Import checks that the parking queue exists; if it goes before the publishes arrive,
    the broker returns them (mandatory) and import must say so, not count them imported."""
    topology = make_topology(routes=[route_dict(uid)])
    route = topology.routes[0]
    driver = RabbitParkDriver(topology)
    try:
        driver.park(route, [Parked("i1"), Parked("i2")])
        path = write_topology(topology, tmp_path / "t.yaml")
        out = tmp_path / "lot.jsonl"
        assert cli("parked", "export", "-t", path, "-o", out).exit_code == 0
        assert cli("parked", "purge", "-t", path, "--all", "--yes").exit_code == 0
        parking = rabbit_names(topology, route).parking
        real_iter = RabbitParkingLot.iter

        def iter_then_delete(self: RabbitParkingLot, selector: p.Selector) -> Any:
            yield from real_iter(self, selector)
            amqp.queue_delete(parking)  # the race: gone after the check, before the publish

        monkeypatch.setattr(RabbitParkingLot, "iter", iter_then_delete)
        result = cli("parked", "import", str(out), "-t", path)
        assert result.exit_code == 5, result.output
        assert "imported 0, skipped 0 already parked, failed 2" in result.stderr
        assert "failed i1: unroutable (no queue bound)" in result.stderr
    finally:
        driver.close()
