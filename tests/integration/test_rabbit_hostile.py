"""No message can stop a route (RabbitMQ): each hostile case of issue 10, on the real broker.

Each case puts one hostile dead letter at the head of one route's DLQ, then 100 valid dead
letters behind it in that route and 100 in a second route, and runs the real router. Every
message must end in a tier, the work queue or the parking lot (none held, none lost), the
router process must stay up on one connection, and the hostile one must end as the README's
"Bad input" table says, its foreign header bytes unchanged.

Before the byte-exact header path, the three ``foreign-*`` cases dropped the router's
connection on every delivery (pika raised decoding the table), the ``attempts-*`` cases were
held forever or retried with a wrong count, and ``too-large-to-park`` was held forever.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import message, wire
from tests.conftest import TopologyFactory, route_dict
from tests.integration.rabbit_driver import RabbitDriver
from tests.integration.rabbit_raw import (
    RawClient,
    entry,
    frame_size,
    longstr,
    nested_arrays,
    properties,
    table_of,
)
from tests.integration.router_process import RouterProcess
from tests.integration.test_router_behaviour import declare, wait_for

VALID = 100
FRAME_MAX = 131072


@dataclass
class Case:
    table: bytes  # the hostile entries (the origin headers are added)
    outcome: str  # "retried" or a park reason
    foreign: bytes = b""  # entries that must come out byte for byte


INVALID = "invalid_header"
T_MAX = entry("sent-at", b"T" + struct.pack(">Q", 2**64 - 1))
T_MS = entry("sent-at", b"T" + struct.pack(">Q", 1_795_683_600_000))
NESTED = entry("deep", nested_arrays(3000))
CASES = {
    "foreign-timestamp-2^64-1": Case(T_MAX, "retried", T_MAX),
    "foreign-timestamp-in-ms": Case(T_MS, "retried", T_MS),
    "foreign-arrays-nested-3000": Case(NESTED, "retried", NESTED),
    "attempts-2^63-1": Case(
        entry(h.ATTEMPTS, b"l" + struct.pack(">q", 2**63 - 1)), "invalid_header"
    ),
    "attempts-double-2.5": Case(entry(h.ATTEMPTS, b"d" + struct.pack(">d", 2.5)), "invalid_header"),
    "attempts-superscript-two": Case(entry(h.ATTEMPTS, longstr("²")), INVALID),
}


@pytest.fixture
def two_routes(make_topology: TopologyFactory, uid: str, tmp_path: Path) -> Iterator[Any]:
    topology = make_topology(routes=[route_dict(uid + "a"), route_dict(uid + "b")])
    declare(topology)
    drivers = [RabbitDriver(topology, route) for route in topology.routes]
    raw = RawClient(topology.url)
    proc = RouterProcess(topology, tmp_path)
    try:
        yield drivers, raw, proc
    finally:
        proc.close()
        raw.close()
        for d in drivers:
            d.close()


def origin(driver: RabbitDriver) -> bytes:
    route = driver.route
    return table_of({h.ORIGIN_EXCHANGE: route.exchange, h.ORIGIN_ROUTING_KEY: route.routing_key})


def inject_valid(raw: RawClient, drivers: list[RabbitDriver], n: int = VALID) -> None:
    for d in drivers:
        for i in range(n):
            props = properties(origin(d), message_id=f"valid-{i}")
            raw.publish("", d.names.dlq, b"valid", props)


def everything_placed(drivers: list[RabbitDriver], expected: list[int]) -> bool:
    for d, n in zip(drivers, expected, strict=True):
        c = d.counts()
        if c["dlq"] != 0 or c["work"] + c["retry"] + c["parked"] != n:
            return False
    return True


def find(raw: RawClient, queues: list[str], message_id: str) -> tuple[str, Any] | None:
    for queue in queues:
        for props, table, body, _ in raw.read_all(queue):
            if props.message_id == message_id:
                return queue, (props, table, body)
    return None


def assert_router_survived(proc: RouterProcess, pid: int) -> None:
    assert proc.proc is not None and proc.proc.poll() is None and proc.proc.pid == pid
    assert "connection lost" not in proc.output
    assert proc.metric("dlq_router_reconnects_total") == 0


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_dead_letter_ends_placed_and_stalls_nothing(two_routes: Any, case: str) -> None:
    drivers, raw, proc = two_routes
    spec = CASES[case]
    a = drivers[0]
    hostile_table = spec.foreign + origin(a) + (b"" if spec.foreign else spec.table)
    raw.publish("", a.names.dlq, b"hostile", properties(hostile_table, message_id="hostile"))
    inject_valid(raw, drivers)
    proc.start()
    assert proc.proc is not None
    pid = proc.proc.pid
    wait_for(lambda: everything_placed(drivers, [VALID + 1, VALID]), 60, "every message placed")
    assert_router_survived(proc, pid)
    lanes = [lane.queue for tier in a.names.tiers for lane in tier.lanes]
    where = wait_for(
        lambda: find(raw, [a.names.work_queue, *lanes, a.names.parking], "hostile"), 10, "it"
    )
    queue, (props, table, body) = where
    assert body == b"hostile"
    if spec.outcome == "retried":
        assert queue != a.names.parking, h.as_text(table.ours.get(h.PARK_DETAIL))
        assert table.ours[h.ATTEMPTS] == 1
        assert spec.foreign in props.table  # foreign bytes out == bytes in
    else:
        assert queue == a.names.parking
        assert table.ours[h.PARK_REASON] == spec.outcome, table.ours.get(h.PARK_DETAIL)
    valid_parked = [m for m in raw.read_all(a.names.parking) if m[0].message_id != "hostile"]
    assert valid_parked == []


def test_header_table_too_large_to_park_even_as_oversized_is_parked(two_routes: Any) -> None:
    """A producer's own table at the frame limit, straight into the DLQ: even the fewest
    router headers do not fit. The largest foreign header is cut (and named), the message
    is parked as oversized: before, it was held forever."""
    drivers, raw, proc = two_routes
    a = drivers[0]
    keep = entry("task", longstr("tasks.send"))
    base = properties(keep + origin(a) + entry("x-big", longstr("")), message_id="hostile")
    filler = FRAME_MAX - 10 - frame_size(base)
    big = entry("x-big", longstr("b" * filler))
    props = properties(keep + origin(a) + big, message_id="hostile")
    assert frame_size(props) == FRAME_MAX - 10
    raw.publish("", a.names.dlq, b"hostile", props)
    inject_valid(raw, drivers)
    proc.start()
    assert proc.proc is not None
    pid = proc.proc.pid
    wait_for(lambda: everything_placed(drivers, [VALID + 1, VALID]), 60, "every message placed")
    assert_router_survived(proc, pid)
    ((props, table, body, _),) = [
        m for m in raw.read_all(a.names.parking) if m[0].message_id == "hostile"
    ]
    assert body == b"hostile"
    assert table.ours[h.PARK_REASON] == "oversized"
    assert table.ours[message.DROPPED_HEADERS] == f"x-big ({len(big)} bytes)"
    assert props.table.startswith(keep)
    assert "foreign headers of message_id=hostile dropped" in proc.output


def test_unreadable_value_in_a_router_header_is_kept_and_parked(two_routes: Any) -> None:
    """dlq-attempts holding a table nested 3,000 deep: never decoded, parked as
    invalid_header, the value itself kept as raw bytes."""
    drivers, raw, proc = two_routes
    a = drivers[0]
    value = nested_arrays(3000)
    raw.publish(
        "",
        a.names.dlq,
        b"hostile",
        properties(origin(a) + entry(h.ATTEMPTS, value), message_id="hostile"),
    )
    inject_valid(raw, drivers, 10)
    proc.start()
    wait_for(lambda: everything_placed(drivers, [11, 10]), 60, "every message placed")
    ((_, table, _, _),) = [m for m in raw.read_all(a.names.parking) if m[0].message_id == "hostile"]
    assert table.ours[h.PARK_REASON] == "invalid_header"
    assert isinstance(table.ours["dlq-invalid-attempts"], str)
    assert isinstance(table.ours[h.ATTEMPTS], int)  # the count restarts: 1
    assert wire.Raw(value) != table.ours[h.ATTEMPTS]
