"""RabbitMQ-only router behaviour: frames, returns, nacks, AMQP properties, startup errors."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from typer.testing import CliRunner

from dlq_router import headers as h
from dlq_router.backends.rabbitmq import message
from dlq_router.backends.rabbitmq.message import header_frame_size
from dlq_router.cli import app
from dlq_router.policy import Failure, decide
from dlq_router.topology import Topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.rabbit_driver import RabbitDriver, consumer_prefetch
from tests.integration.router_process import RouterProcess, write_topology
from tests.integration.test_router_behaviour import declare, receive, wait_for, wait_parked

FRAME_MAX = 131072  # RabbitMQ's default, and what pika asks for


@pytest.fixture
def setup(make_topology: TopologyFactory, uid: str, tmp_path: Path) -> Iterator[Any]:
    """Declare a topology (route overrides as kwargs), start a router, yield the driver."""
    made: list[tuple[RabbitDriver, RouterProcess]] = []

    def start(**route: Any) -> tuple[RabbitDriver, RouterProcess]:
        topology = make_topology(routes=[route_dict(uid, **route)])
        declare(topology)
        driver = RabbitDriver(topology, topology.routes[0])
        proc = RouterProcess(topology, tmp_path)
        made.append((driver, proc))
        proc.start()
        return driver, proc

    yield start
    for driver, proc in made:
        proc.close()
        driver.close()


def test_120kib_foreign_header_is_retried_intact(setup: Any) -> None:
    driver, _ = setup()
    big = "h" * (120 * 1024)
    driver.publish(b"big", message_id="big", headers={"x-big": big})
    driver.fail(receive(driver))
    msg = receive(driver)
    assert msg.headers["x-big"] == big
    assert msg.headers[h.ATTEMPTS] == 1


def test_headers_that_would_not_fit_a_frame_lose_the_error_text_not_the_message(
    setup: Any,
) -> None:
    driver, proc = setup()
    route = driver.route
    headers: dict[str, Any] = {
        h.ORIGIN_EXCHANGE: route.exchange,
        h.ORIGIN_ROUTING_KEY: route.routing_key,
        h.ERROR_MESSAGE: "e" * 2000,
        "x-big": "",
    }
    # Fill the incoming header table to ~100 bytes under the frame: it arrives fine, but
    # with the router's own headers added it would not.
    size = header_frame_size(pika.BasicProperties(headers=headers))
    headers["x-big"] = "b" * (FRAME_MAX - size - 100)
    driver.inject_dead_letter(b"near-limit", headers)
    msg = receive(driver)
    assert msg.body == b"near-limit"
    assert msg.headers["x-big"] == headers["x-big"]
    assert h.ERROR_MESSAGE not in msg.headers
    assert msg.headers[h.ATTEMPTS] == 1
    assert "dropped router text headers" in proc.output


def _frame(headers: dict[str, Any]) -> int:
    return header_frame_size(pika.BasicProperties(headers=headers))


def test_headers_that_fit_only_without_router_headers_park_as_oversized(setup: Any) -> None:
    driver, proc = setup()
    route = driver.route
    origin = {h.ORIGIN_EXCHANGE: route.exchange, h.ORIGIN_ROUTING_KEY: route.routing_key}
    # Size the foreign header so the minimal park (foreign + route/attempts/reason/ids)
    # fits with 10 bytes to spare while a retry (foreign + every router header) cannot.
    minimal = message.minimal_park({"x-big": ""}, route.name, 1, 2**40, "f" * 24)
    minimal[h.PUBLISH_ID] = 1
    filler = FRAME_MAX - _frame(minimal) - 10
    retry = decide(
        route,
        Failure(headers={**origin, "x-big": "b" * filler}),
        now_ms=2**40,
        rng=random.Random(0),
        message_id="x",
        continuous_jitter=False,
    ).headers
    retry[h.PUBLISH_ID] = 1
    assert _frame(message.slim(retry)) > FRAME_MAX  # precondition of this test
    incoming = {**origin, "x-big": "b" * filler}
    assert _frame(incoming) <= FRAME_MAX
    driver.inject_dead_letter(b"oversized", incoming)
    (parked,) = wait_parked(driver)
    assert h.as_text(parked.headers[h.PARK_REASON]) == "oversized"
    assert parked.headers["x-big"] == incoming["x-big"]
    assert parked.headers[h.ATTEMPTS] == 1
    assert parked.body == b"oversized"
    assert "parking it as oversized" in proc.output


def test_unroutable_retry_is_parked_as_unroutable(setup: Any, amqp: Any) -> None:
    driver, proc = setup()
    for lane in driver.names.tiers[0].lanes:
        amqp.queue_delete(lane.queue)  # ours: made by this test's topology
    driver.publish(b"u", message_id="unroutable")
    driver.fail(receive(driver))
    (parked,) = wait_parked(driver)
    assert h.as_text(parked.headers[h.PARK_REASON]) == "unroutable"
    assert parked.headers[h.ATTEMPTS] == 1
    assert h.RETRY_DUE_AT not in parked.headers
    name = driver.route.name
    assert proc.metric("dlq_router_publish_failures_total", route=name, kind="returned") == 1
    assert proc.metric("dlq_router_parked_total", route=name, reason="unroutable") == 1


def test_full_parking_queue_holds_dead_letters_and_loses_none(setup: Any) -> None:
    driver, proc = setup(parking={"max_length": 1})
    name = driver.route.name
    for i in range(3):
        driver.publish(b"p", message_id=f"p-{i}")
    for _ in range(3):
        driver.fail(receive(driver), error_type="ValueError")
    wait_for(
        lambda: proc.metric("dlq_router_publish_failures_total", route=name, kind="nack") >= 2,
        10,
        "two refused parks",
    )
    assert len(driver.parked()) == 1
    time.sleep(1.2)  # held ones are requeued and refused again, slowly (no hot loop)
    refused = proc.metric("dlq_router_publish_failures_total", route=name, kind="nack")
    assert refused <= 8, f"{refused} refusals in ~1.5 s: hot loop?"
    assert "holding" in proc.output
    assert proc.terminate() == 0
    assert driver.counts() == {"work": 0, "dlq": 2, "retry": 0, "parked": 1}


def test_amqp_properties_survive_and_expiration_moves_to_a_header(setup: Any) -> None:
    driver, _ = setup()
    props: dict[str, Any] = {
        "timestamp": 1_700_000_000,
        "type": "tasks.send",
        "app_id": "shop",
        "reply_to": "replies",
        "user_id": "guest",  # the connection's own user: kept
        "expiration": "60000",
    }
    foreign = {"int": 7, "big": 2**40, "flag": True, "nested": {"a": [1, "two"]}, "none": None}
    driver.publish(b"\x00\xffraw", message_id="props", headers=foreign, priority=3, **props)
    first = receive(driver)
    driver.fail(first)  # the broker moves expiration into x-death on dead-lettering
    retried = receive(driver)
    assert retried.body == b"\x00\xffraw"
    for name in ("timestamp", "type", "app_id", "reply_to", "user_id", "priority"):
        assert retried.properties[name] == first.properties[name], name
    assert retried.properties["delivery_mode"] == 2
    assert retried.properties["expiration"] is None
    assert h.as_text(retried.headers[h.ORIGINAL_EXPIRATION]) == "60000"
    for key, value in foreign.items():
        assert retried.headers[key] == value, key
    # The work queue's "rejected" record was stripped; only the tier's expiry is new.
    assert [d["reason"] for d in retried.headers["x-death"]] == ["expired"]
    # A worker publishing to the DLX keeps expiration as a property: the parked copy must
    # not carry it (the parking queue has no DLX: it would just vanish).
    driver.fail(retried, error_type="ValueError")
    (parked,) = wait_parked(driver)
    assert parked.properties["expiration"] is None
    assert h.as_text(parked.headers[h.ORIGINAL_EXPIRATION]) == "60000"


def test_json_logs_without_password(setup: Any) -> None:
    driver, proc = setup()
    proc.close()
    proc.args = ("--log-format", "json")
    proc.start()
    driver.publish(b"j", message_id="json")
    driver.fail(receive(driver), error_type="ValueError")
    wait_parked(driver)
    assert proc.terminate() == 0
    lines = [json.loads(line) for line in proc.output_since_start().splitlines() if line]
    assert any("consuming" in line["msg"] for line in lines)
    assert any("parked" in line["msg"] for line in lines)
    assert all({"ts", "level", "msg"} <= line.keys() for line in lines)
    assert ":guest@" not in proc.output


# ---- fatal at startup: one line, exit 2 ------------------------------------------------


def run_cli(topology: Topology, tmp_path: Path, *args: str) -> Any:
    path = write_topology(topology, tmp_path / "t.yaml")
    return CliRunner().invoke(app, ["run", "-t", str(path), *args])


def test_undeclared_topology_is_fatal(make_topology: TopologyFactory, tmp_path: Path) -> None:
    result = run_cli(make_topology(), tmp_path)
    assert result.exit_code == 2, result.output
    assert "does not exist: run `dlq-router declare` first" in result.output
    assert result.output.count("error:") == 1


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("amqp://guest:wrong-secret@127.0.0.1:5672/%2F", "authentication failed"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost-dlq", "vhost"),
    ],
)
def test_bad_credentials_or_vhost_are_fatal(
    make_topology: TopologyFactory, tmp_path: Path, url: str, expect: str
) -> None:
    result = run_cli(make_topology(), tmp_path, "--url", url)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and expect in errors[0], result.output
    assert "wrong-secret" not in result.output


def test_unknown_route_is_a_usage_error(make_topology: TopologyFactory, tmp_path: Path) -> None:
    result = run_cli(make_topology(), tmp_path, "--route", "nope")
    assert result.exit_code == 2
    assert "no route named 'nope'" in result.output


# ---- lifecycle -----------------------------------------------------------------------


def test_unreachable_broker_backs_off_and_stays_alive(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topology = make_topology(routes=[route_dict(uid)])
    declare(topology)
    proc = RouterProcess(topology, tmp_path, proxy=True).start()
    try:
        assert proc.proxy is not None
        proc.proxy.close()  # cut, and refuse every reconnect
        wait_for(lambda: "in 2.0s" in proc.output, 10, "three reconnect attempts")
        out = proc.output
        assert out.index("in 0.5s") < out.index("in 1.0s") < out.index("in 2.0s")
        assert proc.get("/readyz")[0] == 503
        assert proc.get("/healthz")[0] == 200
        assert proc.metric("dlq_router_reconnects_total") >= 3
        assert proc.terminate(timeout=10) == 0
    finally:
        proc.close()


def test_second_signal_closes_at_once_while_confirms_are_outstanding(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topology = make_topology(routes=[route_dict(uid)])
    declare(topology)
    driver = RabbitDriver(topology, topology.routes[0])
    proc = RouterProcess(topology, tmp_path, proxy=True, args=("--shutdown-timeout", "60"))
    n = 2000
    try:
        proc.start()
        assert proc.proxy is not None and proc.proc is not None
        origin = {h.ORIGIN_EXCHANGE: uid, h.ORIGIN_ROUTING_KEY: uid}
        for i in range(n):
            driver.inject_dead_letter(b"s", origin, message_id=f"s-{i}")
        wait_for(lambda: driver.counts()["dlq"] < n, 5, "the router to take dead letters")
        proc.proxy.pause()  # confirms (and the close handshake) can no longer arrive
        proc.signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.proc.poll() is None, "drained although confirms could not arrive"
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(5) == 0
        assert time.monotonic() - started < 2
        assert "second signal" in proc.output
        proc.proxy.close()  # the broker sees the router's socket close: unacked return
        counts = wait_for(
            lambda: (c := driver.counts())["dlq"] + c["retry"] + c["work"] >= n and c,
            10,
            "every dead letter back in the DLQ or routed",
        )
        assert counts["parked"] == 0
    finally:
        proc.close()
        driver.close()


@pytest.mark.parametrize(("args", "expected"), [((), 2000), (("--prefetch", "7"), 7)])
def test_router_prefetch_window_is_what_the_broker_sees(
    make_topology: TopologyFactory,
    uid: str,
    tmp_path: Path,
    args: tuple[str, ...],
    expected: int,
) -> None:
    """The default window (2,000: confirms of persistent messages come in store-sync
    batches, so a smaller one stalls the router) and --prefetch reach basic.qos."""
    topology = make_topology(routes=[route_dict(uid)])
    declare(topology)
    driver = RabbitDriver(topology, topology.routes[0])
    proc = RouterProcess(topology, tmp_path, args=args).start()
    try:
        assert consumer_prefetch(driver.names.dlq) == [expected]
    finally:
        proc.close()
        driver.close()
