"""RabbitMQ router: the per-message guard and holds that never starve retries.

- An exception while routing one dead letter parks it as ``router_error`` with the
  exception text (before: held and requeued forever); the router, its connection and every
  other message go on.
- Parks the broker refuses (a full parking queue) are held in the router's memory and do
  not keep the DLQ consumer's window: retries queued behind them still flow (issue 13,
  "Parks that cannot complete block retries"; before: held parks went back to the head of
  the DLQ and, with the window full of them, nothing behind moved). A dead letter held past
  ``--hold-alert-after`` is reported with its id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlq_router import headers as h
from tests.conftest import TopologyFactory, route_dict
from tests.integration.faulty_router import PLANTED
from tests.integration.rabbit_driver import RabbitDriver
from tests.integration.rabbit_raw import RawClient, entry, longstr, properties, table_of
from tests.integration.router_process import RouterProcess
from tests.integration.test_router_behaviour import declare, wait_for


@pytest.fixture
def start(make_topology: TopologyFactory, uid: str, tmp_path: Path) -> Iterator[Any]:
    made: list[Any] = []

    def _start(args: tuple[str, ...] = (), **route: Any) -> tuple[RabbitDriver, RawClient, Any]:
        topology = make_topology(routes=[route_dict(uid, **route)])
        declare(topology)
        driver = RabbitDriver(topology, topology.routes[0])
        raw = RawClient(topology.url)
        proc = RouterProcess(
            topology, tmp_path, args=args, module="tests.integration.faulty_router"
        )
        made.append((driver, raw, proc))
        return driver, raw, proc

    yield _start
    for driver, raw, proc in made:
        proc.close()
        raw.close()
        driver.close()


def dead_letter(driver: RabbitDriver, raw: RawClient, message_id: str, **headers: str) -> None:
    route = driver.route
    table = table_of(
        {h.ORIGIN_EXCHANGE: route.exchange, h.ORIGIN_ROUTING_KEY: route.routing_key, **headers}
    )
    raw.publish("", driver.names.dlq, message_id.encode(), properties(table, message_id=message_id))


def test_an_exception_while_routing_parks_the_message_as_router_error(start: Any) -> None:
    driver, raw, proc = start()
    foreign = entry("task", longstr(b"\xff not utf-8"))
    route = driver.route
    for i in range(5):
        table = foreign + table_of(
            {
                h.ORIGIN_EXCHANGE: route.exchange,
                h.ORIGIN_ROUTING_KEY: route.routing_key,
                h.ERROR_TYPE: PLANTED,
            }
        )
        raw.publish("", driver.names.dlq, b"bug", properties(table, message_id=f"bug-{i}"))
        dead_letter(driver, raw, f"ok-{i}")
    proc.start()
    assert proc.proc is not None
    pid = proc.proc.pid
    wait_for(
        lambda: (c := driver.counts())["parked"] == 5 and c["work"] + c["retry"] == 5,
        30,
        "5 parked, 5 retried",
    )
    parked = raw.read_all(driver.names.parking)
    assert sorted(p.message_id or "" for p, _, _, _ in parked) == [f"bug-{i}" for i in range(5)]
    for props, table, body, _ in parked:
        assert body == b"bug"
        assert table.ours[h.PARK_REASON] == "router_error"
        assert table.ours[h.PARK_DETAIL] == (
            "RuntimeError: planted bug: this dead letter cannot be routed"
        )
        assert table.ours[h.ERROR_TYPE] == PLANTED  # dlq-* kept as they came
        assert props.table.startswith(foreign)  # foreign bytes out == bytes in
    assert proc.metric("dlq_router_parked_total", route=route.name, reason="router_error") == 5
    assert proc.proc.poll() is None and proc.proc.pid == pid
    assert proc.metric("dlq_router_reconnects_total") == 0
    assert "parking it as router_error" in proc.output
    assert proc.terminate() == 0
    assert driver.counts()["dlq"] == 0


def test_held_parks_do_not_block_retries_behind_them(start: Any) -> None:
    """A parking queue that takes one message, a window of 4, 20 parks at the head of the
    DLQ and 20 retries behind them: the retries still go through while 19 parks are held;
    the held ones are reported past --hold-alert-after; nothing is lost."""
    driver, raw, proc = start(
        args=("--prefetch", "4", "--hold-alert-after", "1"), parking={"max_length": 1}
    )
    for i in range(20):
        dead_letter(driver, raw, f"park-{i}", **{h.ERROR_TYPE: "ValueError"})
    for i in range(20):
        dead_letter(driver, raw, f"retry-{i}")
    proc.start()
    name = driver.route.name
    wait_for(
        lambda: (c := driver.counts())["work"] + c["retry"] == 20,
        45,
        "the 20 retries behind the held parks",
    )
    assert driver.counts()["parked"] == 1
    wait_for(lambda: proc.metric("dlq_router_held", route=name) == 19, 10, "19 held")
    wait_for(
        lambda: proc.metric("dlq_router_held_too_long_total", route=name) >= 19,
        30,
        "each held one reported",
    )
    assert "message_id=park-" in proc.output and "held for" in proc.output
    refused = proc.metric("dlq_router_publish_failures_total", route=name, kind="nack")
    assert refused < 19 * 12, f"{refused} refused parks: hot loop?"
    assert proc.terminate() == 0
    counts = driver.counts()
    assert counts == {"work": counts["work"], "dlq": 19, "retry": counts["retry"], "parked": 1}
