"""Redis-specific router behaviour, on a single server and on a local Cluster.

The behaviour every broker shares (tiers, parking, SIGKILL, bad input, byte-for-byte) is in
test_router_behaviour.py. Here: several router replicas on one Redis, the parking lot's
max_length, and what exists only on Redis (kombu envelopes that cannot be read, retention,
restarts).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlq_router.backends import open_backend
from dlq_router.backends.base import RouterContext
from dlq_router.backends.redis.connection import lua_source, script
from dlq_router.backends.redis.mover import Mover
from dlq_router.backends.redis.router import Claimer
from dlq_router.metrics import Metrics
from dlq_router.topology import Topology, parse_topology
from tests.conftest import REDIS_URL, route_dict
from tests.integration.drivers import BrokerDriver, receive, wait_for
from tests.integration.redis_cluster import (
    local_server,
    redis_cluster_url,  # noqa: F401 - fixture
)
from tests.integration.redis_driver import RedisDriver

ROOT = Path(__file__).resolve().parents[2]
DELAYS_MS = (200, 400, 800)  # route_dict's tiers
MaybeDriver = Callable[..., tuple[Topology, BrokerDriver]]


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
        self.backend.declare(dry_run=False)  # run refuses routes never declared
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


@pytest.mark.parametrize("unloaded_script", [False, True])
def test_backlog_is_routed_pipelined_with_nothing_left_behind(
    uid: str, unloaded_script: bool
) -> None:
    """Under a backlog a decided batch is routed after the next claim; when the list is
    drained every batch has been routed and accounted for. A route.lua that Redis does not
    have (restart, SCRIPT FLUSH) answers NOSCRIPT to the pipelined call: nothing ran, and
    the batch is routed by loading the script."""
    topology = parse_topology({"url": REDIS_URL, "routes": [route_dict(uid)]}, source="<t>")
    driver = RedisDriver(topology, topology.routes[0])
    ctx = RouterContext(metrics=Metrics(), prefetch=10)
    claimer = Claimer(topology, ctx, Mover(topology, ctx, priorities=True))
    rk = claimer.routes[0]
    client = driver.client
    claim = script(client, "claim")
    # A unique (comment-only) variant has a sha Redis has never seen.
    route = client.register_script(lua_source("route") + f"\n-- {uid}\n")
    if not unloaded_script:
        route = script(client, "route")
    try:
        for i in range(25):  # two full batches of 10, then 5
            driver.inject_dead_letter(b"body-%d" % i, {"seq": i})
        assert claimer.claim_route(rk, claim, route) == 10
        assert driver.client.zcard(driver.keys.retry) == 0  # decided, waiting for a claim
        assert claimer.claim_route(rk, claim, route) == 10  # the first batch goes out
        assert claimer.claim_route(rk, claim, route) == 5  # partial: routed at once
        assert driver.client.zcard(driver.keys.retry) == 25
        assert claimer.claim_route(rk, claim, route) == 0
        members = driver.client.zrange(driver.keys.retry, 0, -1)
        seqs = [json.loads(m[1:])["headers"]["seq"] for m in members]
        assert sorted(seqs) == list(range(25))
        assert driver.client.zcard(driver.keys.inflight) == 0
        assert driver.client.hlen(driver.keys.claims) == 0
        assert (
            ctx.metrics.registry.get_sample_value("dlq_router_dead_letters_total", {"route": uid})
            == 25
        )
    finally:
        driver.cleanup()
        driver.close()


def test_stopping_routes_what_was_claimed_ahead_and_a_failure_leaves_it_leased(
    uid: str,
) -> None:
    """finish() (a clean stop) routes the decided batch and the one claimed ahead; after a
    failure the calls on the wire are dropped with their connections and the batches stay
    leased (recover.lua returns them), and the client still works."""
    topology = parse_topology({"url": REDIS_URL, "routes": [route_dict(uid)]}, source="<t>")
    driver = RedisDriver(topology, topology.routes[0])
    ctx = RouterContext(metrics=Metrics(), prefetch=10)
    claimer = Claimer(topology, ctx, Mover(topology, ctx, priorities=True))
    rk, client, k = claimer.routes[0], driver.client, driver.keys
    claim, route = script(client, "claim"), script(client, "route")
    try:
        for i in range(50):
            driver.inject_dead_letter(b"body-%d" % i, {"seq": i})
        assert claimer.claim_route(rk, claim, route) == 10  # 10 decided, 10 claimed ahead
        claimer.finish()
        assert client.zcard(k.retry) == 20 and client.llen(k.dlq) == 30
        assert client.zcard(k.inflight) == client.hlen(k.claims) == 0

        assert claimer.claim_route(rk, claim, route) == 10
        claimer._abandon()  # what run() does when the loop failed
        assert client.zcard(k.retry) == 20 and client.llen(k.dlq) == 10
        assert client.zcard(k.inflight) == client.hlen(k.claims) == 20
        assert run_script(client, "recover", [k.inflight, k.dlq, k.claims], [10**14, 100]) == 20
        while claimer.claim_route(rk, claim, route):
            pass
        assert client.zcard(k.retry) == 50 and client.zcard(k.inflight) == 0
    finally:
        driver.cleanup()
        driver.close()


def run_script(client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
    return script(client, name)(keys=keys, args=args)
