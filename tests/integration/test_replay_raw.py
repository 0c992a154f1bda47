"""RabbitMQ replay republishes parked deliveries from their bytes (``replaywire``).

Against the real broker: a replay that meets returns in the middle of one parking queue
acks only what was confirmed and routed (the rest stays parked, in order, and a second
replay moves it); bodies larger than a frame go out whole, from a streaming replay and from
a ``--limit`` one; foreign header entries arrive byte for byte with only the reset's
entries cut out.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router import parking as p
from dlq_router.backends.rabbitmq.backend import RabbitBackend
from dlq_router.backends.rabbitmq.parking import WINDOW
from dlq_router.names import rabbit_names
from tests.conftest import TopologyFactory, route_dict
from tests.integration.parking_support import Parked, RabbitParkDriver
from tests.integration.rabbit_raw import RawClient, entry, longstr, properties, table_of


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_returns_in_the_middle_of_a_queue_stay_parked_in_order(
    make_topology: TopologyFactory, amqp: Any, uid: str, queue_type: str
) -> None:
    """The work queue is unbound when the first confirms arrive: publishes after that are
    returned (mandatory). Each message is then either in the work queue once or still
    parked, never both and never neither, and a rerun after rebinding moves the rest."""
    topology = make_topology(routes=[route_dict(uid, queue_type=queue_type)])
    route = topology.routes[0]
    names = rabbit_names(topology, route)
    n = WINDOW * 2 + 500
    driver = RabbitParkDriver(topology)
    backend = RabbitBackend(topology)
    unbound: list[int] = []

    def unbind_once(done: int) -> None:
        if not unbound:
            amqp.queue_unbind(route.queue, names.work_exchange, routing_key=names.routing_key)
            unbound.append(done)

    try:
        ids = [f"r{i:05d}" for i in range(n)]
        driver.park(route, [Parked(i, parked_at=1000 + k) for k, i in enumerate(ids)])
        result = backend.parking.replay(p.Selector(all=True), p.ReplayOptions(), unbind_once)
        assert unbound and result.replayed > 0 and result.failed > 0, result
        assert result.replayed + result.failed == n == result.selected
        assert {why for _id, why in result.failures} == {"unroutable (no queue bound)"}
        arrived = [w.headers[h.ID] for w in driver.work(route)]
        assert len(arrived) == result.replayed and arrived == sorted(arrived)
        failed = sorted(i for i, _ in result.failures)
        assert sorted(arrived + failed) == ids  # each exactly once

        # The rest is still parked, in queue order (read by the lot's own snapshot: the test
        # driver's basic.get-and-close reorders a quorum queue).
        amqp.queue_bind(route.queue, names.work_exchange, routing_key=names.routing_key)
        again = backend.parking.replay(p.Selector(all=True), p.ReplayOptions())
        assert again.replayed == len(failed) and again.failed == 0
        assert [w.headers[h.ID] for w in driver.work(route)] == failed
        assert driver.drain_parked(route) == []
    finally:
        backend.close()
        driver.close()


def test_bodies_larger_than_a_frame_go_out_whole(make_topology: TopologyFactory) -> None:
    topology = make_topology()
    route = topology.routes[0]
    driver = RabbitParkDriver(topology)
    backend = RabbitBackend(topology)
    big = [os.urandom(size) for size in (131_072 * 3 + 17, 300_000, 131_064, 5)]
    try:
        parked = [Parked(f"b{i}", body=b, parked_at=1000 + i) for i, b in enumerate(big)]
        driver.park(route, parked)
        # --limit: chosen first (held), then republished
        limited = backend.parking.replay(p.Selector(limit=2, all=True), p.ReplayOptions())
        assert limited.replayed == 2 and not limited.failed, limited
        assert [w.body for w in driver.work(route)] == big[2:]
        # no limit: republished while reading
        streamed = backend.parking.replay(p.Selector(all=True), p.ReplayOptions())
        assert streamed.replayed == 2 and not streamed.failed, streamed
        assert [w.body for w in driver.work(route)] == big[:2]
    finally:
        backend.close()
        driver.close()


def test_foreign_entries_arrive_byte_for_byte(make_topology: TopologyFactory) -> None:
    """Values pika's codec would change (a ``d`` double, a decimal, a byte array, a nested
    table with an unsigned short) and the router's kept entries arrive as they were parked;
    death headers and the park's entries are cut out."""
    topology = make_topology()
    route = topology.routes[0]
    names = rabbit_names(topology, route)
    raw = RawClient(topology.url)
    backend = RabbitBackend(topology)
    backend.declare(dry_run=False)
    now = int(time.time() * 1000)
    inner = entry("k", b"u\x00\x07") + entry("n", b"V")
    task, *others = [
        entry("task", longstr("tasks.x")),
        entry("ratio", b"d" + struct.pack(">d", 2.0)),
        entry("price", b"D\x02\x00\x00\x04\xd2"),
        entry("blob", longstr(b"\xff\x00\x01", kind=b"x")),
        entry("nested", b"F" + len(inner).to_bytes(4, "big") + inner),
    ]
    death = entry("x-death", b"A\x00\x00\x00\x00") + entry("x-first-death-reason", longstr("r"))
    kept = table_of({h.ID: "f1", h.ROUTE: route.name, h.ATTEMPTS: 4})
    reset = table_of({h.PARKED_AT: now, h.PARK_REASON: "max_attempts", h.PUBLISH_ID: 9})
    try:
        table = task + death + b"".join(others) + kept + reset
        raw.publish("", names.parking, b"body", properties(table, message_id="f1"))
        replayed = backend.parking.replay(p.Selector(all=True), p.ReplayOptions())
        assert replayed.replayed == 1 and not replayed.failed, replayed
        ((props, got, body, _at),) = raw.drain(names.work_queue)
        assert body == b"body" and props.message_id == "f1"
        assert b"".join(got.foreign) == task + b"".join(others)  # in order, unchanged
        assert set(got.ours) == {h.ID, h.ROUTE, h.PUBLISH_ID}  # attempts reset by default
        assert kept.startswith(got.ours_raw[h.ID] + got.ours_raw[h.ROUTE])
        assert got.ours[h.PUBLISH_ID] == 1  # this replay's, not the parked one
        assert got.death == {} and got.first_death_reason is None and got.tail == b""
    finally:
        raw.close()
        backend.close()
