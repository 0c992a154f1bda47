"""End-to-end router behaviour, written against ``BrokerDriver`` only, run on Redis and Cluster.

``RouterBehaviour`` holds no broker specifics, so it can join the shared suite; the
``make_driver`` fixture decides the broker. ``TestRedisOnly`` covers what exists only on
Redis (kombu envelopes that cannot be read).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlq_router.backends import open_backend
from dlq_router.backends.base import RouterContext
from dlq_router.metrics import Metrics
from dlq_router.topology import Topology, parse_topology
from tests.conftest import REDIS_URL, route_dict
from tests.integration.drivers import BrokerDriver, Received
from tests.integration.redis_cluster import (
    local_server,
    redis_cluster_url,  # noqa: F401 - fixture
)
from tests.integration.redis_driver import RedisDriver

ROOT = Path(__file__).resolve().parents[2]
DELAYS_MS = (200, 400, 800)  # route_dict's tiers
MaybeDriver = Callable[..., tuple[Topology, BrokerDriver]]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def wait_counts(driver: BrokerDriver, timeout: float = 10.0, **expected: int) -> None:
    wait_for(
        lambda: all(driver.counts()[k] == v for k, v in expected.items()),
        timeout,
        f"counts {expected} (now {driver.counts()})",
    )


class RouterThread:
    """A router in this process; ``metrics`` are its counters."""

    def __init__(self, topology: Topology) -> None:
        self.ctx = RouterContext(metrics=Metrics())
        self.backend = open_backend(topology)
        self.thread = threading.Thread(target=self.backend.run_router, args=(self.ctx,))
        self.thread.start()
        wait_for(self.ctx.metrics.is_ready, 10, "router ready")

    def sample(self, name: str, **labels: str) -> float:
        return self.ctx.metrics.registry.get_sample_value(name, labels) or 0.0

    def stop(self) -> None:
        self.ctx.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "router did not stop within 10s"
        self.backend.close()


class RouterProcess:
    """A router in a subprocess, so a test can SIGKILL it."""

    def __init__(self, topology: Topology, tmp_path: Path) -> None:
        path = tmp_path / "topology.json"
        path.write_text(json.dumps(topology.model_dump(mode="json")))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.redis_router_proc", str(path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(15) == 0


@pytest.fixture(params=["redis", "cluster"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return REDIS_URL


@pytest.fixture
def make_driver(broker_url: str, uid: str) -> Iterator[MaybeDriver]:
    made: list[RedisDriver] = []

    def factory(**route_overrides: Any) -> tuple[Topology, BrokerDriver]:
        data = {"url": broker_url, "routes": [route_dict(uid, **route_overrides)]}
        topology = parse_topology(data, source="<test>")
        driver = RedisDriver(topology, topology.routes[0])
        made.append(driver)
        return topology, driver

    yield factory
    for driver in made:
        driver.cleanup()
        driver.close()


@pytest.fixture
def start_router() -> Iterator[Callable[[Topology], RouterThread]]:
    running: list[RouterThread] = []

    def start(topology: Topology) -> RouterThread:
        router = RouterThread(topology)
        running.append(router)
        return router

    yield start
    for router in running:
        router.stop()


def receive(driver: BrokerDriver, timeout: float = 5.0) -> Received:
    msg = driver.receive(timeout)
    assert msg is not None, f"nothing arrived in {timeout}s; counts {driver.counts()}"
    return msg


def take_all(driver: BrokerDriver, n: int, timeout: float) -> list[str]:
    """Receive and ack until ``n`` distinct message ids were seen; returns every id seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(set(seen)) < n and time.monotonic() < deadline:
        msg = driver.receive(0.2)
        if msg is not None:
            seen.append(str(msg.properties["message_id"]))
            driver.ack(msg)
    return seen


class RouterBehaviour:
    def test_retry_after_each_tier_then_success(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver()
        router = start_router(topology)
        driver.publish(b'{"n": 1}', message_id="m-1", headers={"task": "send"})
        msg = receive(driver)
        for attempt, delay in enumerate(DELAYS_MS, start=1):
            failed_at = time.time()
            driver.fail(msg, error_type="RuntimeError", error_message=f"boom {attempt}")
            msg = receive(driver)
            waited_ms = (msg.received_at - failed_at) * 1000
            assert delay - 5 <= waited_ms <= delay + 300, (attempt, waited_ms)
            assert int(msg.headers["dlq-attempts"]) == attempt
            lateness = msg.received_at * 1000 - int(msg.headers["dlq-retry-due-at"])
            assert -5 <= lateness <= 250, (attempt, lateness)
        driver.ack(msg)  # attempt 4 succeeds
        assert msg.body == b'{"n": 1}'
        assert msg.properties["message_id"] == "m-1"
        assert msg.headers["task"] == "send"
        wait_counts(driver, work=0, dlq=0, retry=0, parked=0)
        assert (
            router.sample(
                "dlq_router_retries_scheduled_total", route=topology.routes[0].name, tier="800ms"
            )
            == 1
        )

    def test_park_after_max_attempts_with_metadata(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver()
        start_router(topology)
        driver.publish(b"payload", message_id="m-2", headers={"task": "send", "retries": 0})
        msg = receive(driver)
        for attempt in range(1, 5):
            driver.fail(msg, error_type="RuntimeError", error_message=f"boom {attempt}")
            if attempt < 4:
                msg = receive(driver)
        wait_counts(driver, parked=1, work=0, dlq=0, retry=0)
        (parked,) = driver.parked()
        h = parked.headers
        assert h["dlq-park-reason"] == "max_attempts"
        assert int(h["dlq-attempts"]) == 4
        assert int(h["dlq-first-failed-at"]) < int(h["dlq-last-failed-at"])
        assert h["dlq-error-type"] == "RuntimeError"
        assert h["dlq-error-message"] == "boom 4"
        assert h["dlq-route"] == topology.routes[0].name
        assert "dlq-origin-exchange" in h and h["dlq-origin-routing-key"]
        assert h["dlq-id"] and int(h["dlq-parked-at"]) > 0
        assert (h["task"], h["retries"]) == ("send", 0)
        assert parked.body == b"payload"
        assert parked.properties["message_id"] == "m-2"

    def test_non_retryable_parks_at_once(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver()
        start_router(topology)
        driver.publish(b"x", message_id="m-3")
        failed_at = time.monotonic()
        driver.fail(receive(driver), error_type="ValueError", error_message="bad input")
        wait_counts(driver, parked=1, timeout=DELAYS_MS[0] / 1000)
        assert time.monotonic() - failed_at < DELAYS_MS[0] / 1000
        (parked,) = driver.parked()
        assert parked.headers["dlq-park-reason"] == "non_retryable"
        assert int(parked.headers["dlq-attempts"]) == 1
        assert driver.counts() == {"work": 0, "dlq": 0, "retry": 0, "parked": 1}

    def test_invalid_attempts_header_parks(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver()
        start_router(topology)
        driver.inject_dead_letter(b"abc-body", {"dlq-attempts": "abc", "task": "t"})
        wait_counts(driver, parked=1, dlq=0)
        (parked,) = driver.parked()
        assert parked.headers["dlq-park-reason"] == "invalid_header"
        assert "abc" in parked.headers["dlq-invalid-attempts"]
        assert parked.body == b"abc-body"

    def test_dead_letter_without_headers(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver()
        start_router(topology)
        driver.inject_dead_letter(b"no-headers", None)
        if getattr(driver, "origin_without_headers", False):
            # The broker knows where it came from: it is an ordinary first failure.
            msg = receive(driver)
            assert msg.body == b"no-headers"
            assert int(msg.headers["dlq-attempts"]) == 1
        else:
            wait_counts(driver, parked=1)
            assert driver.parked()[0].headers["dlq-park-reason"] == "no_origin"
        wait_counts(driver, dlq=0, retry=0)

    def test_message_kept_byte_for_byte(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver()
        start_router(topology)
        body = pickle.dumps({"args": (1, b"\x00\xff"), "kwargs": {"k": "v"}})
        foreign = {"id": "task-1", "task": "app.send", "retries": 0, "root_id": "r-1"}
        props = {
            "content_type": "application/x-python-serialize",
            "content_encoding": "binary",
            "correlation_id": "task-1",
            "priority": 3,
        }
        driver.publish(body, message_id="m-4", headers=dict(foreign), **props)
        first = receive(driver)
        driver.fail(first, error_type="RuntimeError")
        again = receive(driver)
        assert again.body == body == first.body
        assert again.properties == first.properties == {"message_id": "m-4", **props}
        assert {k: again.headers[k] for k in foreign} == foreign

    def test_sigkill_mid_stream_loses_nothing(
        self, make_driver: MaybeDriver, tmp_path: Path
    ) -> None:
        topology, driver = make_driver()
        n = 1500
        ids = {f"k-{i}" for i in range(n)}
        for mid in sorted(ids):
            driver.publish(b"k", message_id=mid)
        for _ in range(n):
            driver.fail(receive(driver))
        first = RouterProcess(topology, tmp_path)
        try:
            wait_for(lambda: driver.counts()["dlq"] < n, 20, "the router to start routing")
        finally:
            first.kill()
        assert driver.counts()["dlq"] > 0 or driver.counts()["retry"] > 0
        second = RouterProcess(topology, tmp_path)
        try:
            seen = take_all(driver, n, timeout=30)
        finally:
            second.stop()
        assert set(seen) == ids, f"lost {len(ids - set(seen))}"

    def test_two_routers_neither_duplicate_nor_lose(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver()
        n = 600
        for i in range(n):
            driver.publish(b"r", message_id=f"r-{i}")
        for _ in range(n):
            driver.fail(receive(driver))
        start_router(topology)
        start_router(topology)
        seen = take_all(driver, n, timeout=20)
        assert len(set(seen)) == n
        assert driver.receive(1.0) is None, "a retry arrived twice"
        assert len(seen) == n, "a retry arrived twice"
        wait_counts(driver, work=0, dlq=0, retry=0, parked=0)

    def test_full_parking_lot_holds_dead_letters(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver(parking={"max_length": 1})
        router = start_router(topology)
        for i in range(3):
            driver.publish(b"p", message_id=f"p-{i}")
        for _ in range(3):
            driver.fail(receive(driver), error_type="ValueError")
        wait_counts(driver, parked=1, dlq=2)
        name = topology.routes[0].name
        wait_for(
            lambda: (
                router.sample("dlq_router_publish_failures_total", route=name, kind="parking_full")
                >= 2
            ),
            5,
            "publish failures counted",
        )
        time.sleep(0.5)
        assert driver.counts() == {"work": 0, "dlq": 2, "retry": 0, "parked": 1}


class TestRouterOnRedis(RouterBehaviour):
    pass


class TestRedisOnly:
    @pytest.fixture
    def driver(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> RedisDriver:
        topology, driver = make_driver()
        start_router(topology)
        assert isinstance(driver, RedisDriver)
        return driver

    @pytest.mark.parametrize("raw", [b"\x80\x81not json\x00", b"[1, 2]", b'{"body": "x"}'])
    def test_unreadable_dead_letter_is_parked_as_is(self, driver: RedisDriver, raw: bytes) -> None:
        driver.inject_raw(raw)
        wait_counts(driver, parked=1, dlq=0)
        (parked,) = driver.parked()
        assert parked.body == raw
        assert parked.headers["dlq-park-reason"] == "malformed"

    def test_held_dead_letters_are_parked_once_there_is_room(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver(parking={"max_length": 1})
        start_router(topology)
        for i in range(2):
            driver.inject_dead_letter(b"h", {"dlq-error-type": "ValueError", "n": i})
        wait_counts(driver, parked=1, dlq=1)
        assert isinstance(driver, RedisDriver)
        (first,) = driver.client.zrange(driver.keys.parked_index, 0, -1)
        driver.client.hdel(driver.keys.parked, first)  # an operator removes one
        driver.client.zrem(driver.keys.parked_index, first)
        wait_counts(driver, parked=1, dlq=0, timeout=5)  # hold 2 s + recovery tick 1 s

    def test_retention_drops_old_parked_messages(
        self, make_driver: MaybeDriver, start_router: Callable[[Topology], RouterThread]
    ) -> None:
        topology, driver = make_driver(parking={"retention": "300ms"})
        start_router(topology)
        driver.inject_dead_letter(b"old", {"dlq-error-type": "ValueError"})
        wait_counts(driver, parked=1, timeout=2)
        wait_counts(driver, parked=0, timeout=3)  # maintenance runs every second

    def test_envelope_fields_survive_except_delivery_tag(self, driver: RedisDriver) -> None:
        driver.publish(b"\x00binary\xff", message_id="e-1", headers={"x-foreign": [1, "a"]})
        first = receive(driver)
        sent = json.loads(first.raw)
        sent["properties"]["delivery_info"]["extra"] = {"nested": True}
        sent["x-unknown-field"] = "kept"
        driver.client.lpush(driver.keys.dlq, json.dumps(sent))
        again = json.loads(receive(driver).raw)
        assert again["body"] == sent["body"]
        assert again["x-unknown-field"] == "kept"
        assert {k: v for k, v in again.items() if k not in ("headers", "properties")} == {
            k: v for k, v in sent.items() if k not in ("headers", "properties")
        }
        props, sent_props = dict(again["properties"]), dict(sent["properties"])
        assert props.pop("delivery_tag") != sent_props.pop("delivery_tag")
        assert props == sent_props
        assert again["headers"]["x-foreign"] == [1, "a"]


def test_router_reconnects_after_redis_restarts(uid: str) -> None:
    with local_server("--save", "", "--appendonly", "no") as server:
        url = server.url
        topology = parse_topology({"url": url, "routes": [route_dict(uid)]}, source="<test>")
        driver = RedisDriver(topology, topology.routes[0])
        router = RouterThread(topology)
        try:
            driver.publish(b"before", message_id="c-1")
            driver.fail(receive(driver))
            assert receive(driver).body == b"before"
            server.stop()
            wait_for(lambda: not router.ctx.metrics.is_ready(), 10, "not ready while down")
            server.start()
            wait_for(router.ctx.metrics.is_ready, 15, "ready again")
            assert router.sample("dlq_router_reconnects_total") >= 1
            driver.publish(b"after", message_id="c-2")
            driver.fail(receive(driver))
            assert receive(driver).body == b"after"
        finally:
            router.stop()
            driver.close()


def test_router_stops_within_a_second_and_leaves_nothing_leased(uid: str) -> None:
    topology = parse_topology({"url": REDIS_URL, "routes": [route_dict(uid)]}, source="<test>")
    driver = RedisDriver(topology, topology.routes[0])
    try:
        for i in range(300):
            driver.inject_dead_letter(b"s", {"n": i})
        router = RouterThread(topology)
        started = time.monotonic()
        router.stop()
        assert time.monotonic() - started < 1.5
        counts = driver.counts()
        assert driver.client.zcard(driver.keys.inflight) == 0
        assert counts["dlq"] + counts["retry"] + counts["work"] == 300
    finally:
        driver.cleanup()
        driver.close()
