"""Bounded-memory reads on RabbitMQ give the same answers as reading everything: the newest N
across routes (ties broken as before: earlier route first, later in the queue first), the
groups of a scan, and the queue left as it was."""

from __future__ import annotations

import time

from dlq_router import parking as p
from dlq_router.backends.rabbitmq.backend import RabbitBackend
from tests.conftest import TopologyFactory, route_dict
from tests.integration.parking_support import Parked, RabbitParkDriver


def test_limit_and_scan_match_the_full_read(make_topology: TopologyFactory, uid: str) -> None:
    topology = make_topology("rabbitmq", routes=[route_dict(uid + "a"), route_dict(uid + "b")])
    driver = RabbitParkDriver(topology)
    now = int(time.time() * 1000)
    errors = ("ConnectionError", "ValueError", "KeyError")
    for r, route in enumerate(topology.routes):
        # repeated parked-at times make ties across and within routes
        driver.park(
            route,
            [
                Parked(f"{r}-{i}", parked_at=now - (i // 3) * 1000, error_type=errors[i % 3])
                for i in range(40)
            ],
        )
    backend = RabbitBackend(topology)
    try:
        lot = backend.parking
        everything = [m.id for m in lot.iter(p.Selector())]
        assert len(everything) == 80
        for limit in (1, 7, 50, 80, 200):
            assert [m.id for m in lot.iter(p.Selector(limit=limit))] == everything[:limit]
        only_value = p.Selector(error_types=("ValueError",), limit=5)
        full = [m.id for m in lot.iter(p.Selector(error_types=("ValueError",)))]
        assert [m.id for m in lot.iter(only_value)] == full[:5]
        scanned = p.groups(lot.scan(p.Selector()))

        # same groups and counts (equal counts and times may come in another order)
        def rows(found: list[p.Group]) -> list[dict[str, object]]:
            return sorted((p.group_row(g) for g in found), key=lambda r: str(r["fingerprint"]))

        assert rows(scanned) == rows(p.groups(lot.iter(p.Selector())))
        assert sum(g.count for g in scanned) == 80
        assert lot.get("1-39").id == "1-39"
        for route in topology.routes:  # order and count kept
            r = topology.routes.index(route)
            assert driver.parked_ids(route) == [f"{r}-{i}" for i in range(40)]
    finally:
        backend.close()
        driver.close()
