"""The router's behaviour, the same for every broker: one suite, parametrized by driver.

Broker specifics live in the drivers (tests/integration/*_driver.py) and in
router_process.py; test bodies only publish, receive, fail, inspect and count. To add a
broker, add a factory to ``DRIVERS``.
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router.backends import open_backend
from dlq_router.topology import Topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.drivers import BrokerDriver, Received, receive, wait_for
from tests.integration.rabbit_driver import RabbitDriver
from tests.integration.redis_driver import RedisDriver
from tests.integration.router_process import RouterProcess

# name -> builds a topology with make_topology (unique names, deleted at teardown) and
# returns a driver on its first route; the fixture declares the topology. Add brokers here.
DriverFactory = Callable[[pytest.FixtureRequest, TopologyFactory, str], BrokerDriver]


def _rabbitmq(_request: pytest.FixtureRequest, make: TopologyFactory, uid: str) -> BrokerDriver:
    topology = make("rabbitmq", routes=[route_dict(uid)])
    return RabbitDriver(topology, topology.routes[0])


def _redis(_request: pytest.FixtureRequest, make: TopologyFactory, uid: str) -> BrokerDriver:
    topology = make("redis", routes=[route_dict(uid)])
    return RedisDriver(topology, topology.routes[0])


def _redis_cluster(request: pytest.FixtureRequest, make: TopologyFactory, uid: str) -> BrokerDriver:
    # a local 3-master cluster on free loopback ports, started once per session
    url = request.getfixturevalue("redis_cluster_url")
    topology = make("redis", routes=[route_dict(uid)], url=url)
    return RedisDriver(topology, topology.routes[0])


DRIVERS: dict[str, DriverFactory] = {
    "rabbitmq": _rabbitmq,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
}

DELAYS_MS = (200, 400, 800)  # route_dict's tiers
EARLY_MS = 30  # a retry may arrive this much before its nominal delay (clock granularity)
LATE_MS = 400  # ... and this much after it on a loaded 2-core test machine


def declare(topology: Topology) -> None:
    backend = open_backend(topology)
    try:
        backend.declare(dry_run=False)
    finally:
        backend.close()


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest, make_topology: TopologyFactory, uid: str) -> Any:
    d = DRIVERS[request.param](request, make_topology, uid)
    declare(d.topology)
    yield d
    d.close()


RouterFactory = Callable[..., RouterProcess]


@pytest.fixture
def router(driver: BrokerDriver, tmp_path: Path) -> Iterator[RouterFactory]:
    """Start ``dlq-router run`` on the driver's topology (ready when this returns)."""
    started: list[RouterProcess] = []

    def start(*, proxy: bool = False, args: tuple[str, ...] = (), wait: bool = True) -> Any:
        proc = RouterProcess(driver.topology, tmp_path, proxy=proxy, args=args)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.close()


def wait_parked(driver: BrokerDriver, n: int = 1, timeout: float = 5.0) -> list[Received]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (p := driver.parked()) and len(p) >= n and p, timeout, f"{n} parked"
    )


def text(value: Any) -> str | None:
    return h.as_text(value)


# ---- retries -------------------------------------------------------------------------


def test_fails_k_times_then_succeeds_after_each_tier_delay(
    driver: BrokerDriver, router: RouterFactory
) -> None:
    router()
    driver.publish(b'{"n": 1}', message_id="m-1")  # no headers at all: the broker's
    first = receive(driver)  # dead-letter record is the only origin
    assert first.headers.get(h.ATTEMPTS) is None
    failed_at = first.received_at
    driver.fail(first)
    for attempt, delay_ms in enumerate(DELAYS_MS[:2], start=1):
        msg = receive(driver)
        waited_ms = (msg.received_at - failed_at) * 1000
        assert delay_ms - EARLY_MS <= waited_ms <= delay_ms + LATE_MS, (attempt, waited_ms)
        assert msg.body == b'{"n": 1}'
        assert msg.properties["message_id"] == "m-1"
        assert msg.headers[h.ATTEMPTS] == attempt
        due = h.as_ms(msg.headers[h.RETRY_DUE_AT])
        assert due is not None and msg.received_at * 1000 >= due - EARLY_MS
        failed_at = msg.received_at
        if attempt < 2:
            driver.fail(msg)
        else:
            driver.ack(msg)  # succeeds on attempt k + 1 = 3
    assert driver.receive(1.0) is None
    assert driver.parked() == []
    assert driver.counts() == {"work": 0, "dlq": 0, "retry": 0, "parked": 0}


def test_always_failing_message_is_parked_with_metadata(
    driver: BrokerDriver, router: RouterFactory
) -> None:
    router()
    route = driver.route
    driver.publish(b"payload", message_id="m-park", headers={"task": "tasks.send"})
    for _ in range(route.retry.max_attempts):
        msg = receive(driver)
        driver.fail(msg, error_type="TimeoutError", error_message="upstream timed out")
    (parked,) = wait_parked(driver)
    hd = parked.headers
    assert text(hd[h.PARK_REASON]) == "max_attempts"
    assert hd[h.ATTEMPTS] == route.retry.max_attempts
    first, last = h.as_ms(hd[h.FIRST_FAILED_AT]), h.as_ms(hd[h.LAST_FAILED_AT])
    assert first is not None and last is not None
    assert last - first >= sum(DELAYS_MS) - EARLY_MS
    assert text(hd[h.ORIGIN_EXCHANGE]) == route.exchange
    assert text(hd[h.ORIGIN_ROUTING_KEY]) == route.routing_key
    assert text(hd[h.ERROR_TYPE]) == "TimeoutError"
    assert text(hd[h.ERROR_MESSAGE]) == "upstream timed out"
    assert text(hd["task"]) == "tasks.send"
    assert parked.body == b"payload"
    assert parked.properties["message_id"] == "m-park"
    assert driver.receive(0.5) is None


def test_non_retryable_error_is_parked_at_once(driver: BrokerDriver, router: RouterFactory) -> None:
    router()
    driver.publish(b"x", message_id="m-bad")
    driver.fail(receive(driver), error_type="builtins.ValueError", error_message="bad input")
    (parked,) = wait_parked(driver)
    assert text(parked.headers[h.PARK_REASON]) == "non_retryable"
    assert parked.headers[h.ATTEMPTS] == 1
    assert driver.receive(DELAYS_MS[0] / 1000 + 0.4) is None


# ---- crash, stop, reconnect ----------------------------------------------------------


def test_sigkill_mid_stream_loses_nothing(driver: BrokerDriver, router: RouterFactory) -> None:
    n = 300
    ids = [f"k-{i}" for i in range(n)]
    for mid in ids:
        driver.publish(mid.encode(), message_id=mid)
    proc = router()
    seen: Counter[str] = Counter()
    succeeded: set[str] = set()
    killed = restarted = False
    deadline = time.monotonic() + 60
    while len(succeeded) < n and time.monotonic() < deadline:
        msg = driver.receive(0.5)
        if msg is None:
            continue
        mid = msg.properties["message_id"]
        seen[mid] += 1
        if seen[mid] == 1:
            driver.fail(msg)  # every message fails once, then succeeds
        else:
            driver.ack(msg)
            succeeded.add(mid)
        if not killed and sum(seen.values()) >= n // 2:
            proc.kill()  # mid-stream: dead letters in flight, confirms outstanding
            killed = True
        if killed and not restarted and sum(seen.values()) >= n:
            proc.start()
            restarted = True
    missing = set(ids) - succeeded
    assert killed and restarted
    assert not missing, f"lost {len(missing)}: {sorted(missing)[:10]}; counts {driver.counts()}"
    duplicates = {mid: c - 2 for mid, c in seen.items() if c > 2}
    print(f"\nSIGKILL test: {n} messages, none lost, {len(duplicates)} duplicated")
    assert driver.parked() == []


def test_sigterm_drains_and_exits_zero(driver: BrokerDriver, router: RouterFactory) -> None:
    proc = router()
    n = 50
    for i in range(n):
        driver.publish(b"d", message_id=f"d-{i}")
    for _ in range(n):
        driver.fail(receive(driver))
    started = time.monotonic()
    assert proc.terminate(timeout=15) == 0
    assert time.monotonic() - started < 12
    assert "router stopped" in proc.output
    # Nothing in flight is lost: each message came back from its tier (retried before the
    # stop), still waits in the DLQ (unacked at the stop, returned), or waits for its due
    # time (on Redis a scheduled retry waits in the sorted set until a router runs again;
    # on RabbitMQ the tier's TTL brings it back without one).
    back: set[str] = set()
    while (msg := driver.receive(1.5)) is not None:
        back.add(msg.properties["message_id"])
        driver.ack(msg)
    counts = driver.counts()
    assert counts["parked"] == 0
    assert len(back) + counts["dlq"] + counts["retry"] == n, (len(back), counts)


# One proxy cannot stand between a client and a whole Redis Cluster (the client talks to
# every node at the address the cluster announces), so this runs on single servers.
@pytest.mark.parametrize("driver", ["rabbitmq", "redis"], indirect=True)
def test_reconnects_after_its_connection_is_cut(
    driver: BrokerDriver, router: RouterFactory
) -> None:
    proc = router(proxy=True)
    driver.publish(b"r", message_id="before")
    driver.fail(receive(driver))
    assert receive(driver).headers[h.ATTEMPTS] == 1
    proc.outage(1.5)  # connections dropped, new ones refused, then the broker is back
    wait_for(lambda: proc.metric("dlq_router_reconnects_total") >= 1, 10, "a reconnect")
    wait_for(proc.ready, 10, "ready again")
    driver.publish(b"r", message_id="after")
    driver.fail(receive(driver))
    again = receive(driver)
    assert again.properties["message_id"] == "after"
    assert again.headers[h.ATTEMPTS] == 1
    assert "reconnecting" in proc.output


# ---- bad input -----------------------------------------------------------------------


def test_dead_letter_without_headers(driver: BrokerDriver, router: RouterFactory) -> None:
    router()
    driver.inject_dead_letter(b"orphan", None)
    if driver.origin_without_headers:
        # The broker knows where it came from: an ordinary first failure, retried.
        msg = receive(driver)
        assert msg.body == b"orphan"
        assert msg.headers[h.ATTEMPTS] == 1
        assert driver.parked() == []
    else:
        (parked,) = wait_parked(driver)
        assert text(parked.headers[h.PARK_REASON]) == "no_origin"
        assert parked.body == b"orphan"
    assert driver.counts()["dlq"] == 0


def test_attempts_header_of_wrong_type_is_parked(
    driver: BrokerDriver, router: RouterFactory
) -> None:
    router()
    route = driver.route
    driver.inject_dead_letter(
        b"typed",
        {
            h.ATTEMPTS: "abc",
            h.ORIGIN_EXCHANGE: route.exchange,
            h.ORIGIN_ROUTING_KEY: route.routing_key,
        },
    )
    (parked,) = wait_parked(driver)
    assert text(parked.headers[h.PARK_REASON]) == "invalid_header"
    assert "abc" in (text(parked.headers["dlq-invalid-attempts"]) or "")
    assert driver.counts()["dlq"] == 0


# ---- byte-for-byte -------------------------------------------------------------------


def test_pickle_body_and_celery_headers_survive_byte_for_byte(
    driver: BrokerDriver, router: RouterFactory
) -> None:
    router()
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((1, 2), {"to": "a@example.com"}, {"callbacks": None}), protocol=4)
    celery = {
        "lang": "py",
        "task": "tasks.send_email",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "origin": "gen1@host",
        "argsrepr": "(1, 2)",
        "kwargsrepr": "{'to': 'a@example.com'}",
        "timelimit": [None, None],
        "ignore_result": False,
    }
    driver.publish(
        body,
        message_id=task_id,
        headers=celery,
        content_type="application/x-python-serialize",
        content_encoding="binary",
        correlation_id=task_id,
        priority=5,
    )
    original = receive(driver)
    driver.fail(original)
    retried = receive(driver)
    driver.fail(retried, error_type="KeyError", error_message="'x'")
    again = receive(driver)
    driver.fail(again, error_type="ValueError", error_message="permanent")
    (parked,) = wait_parked(driver)
    for msg in (retried, again, parked):
        assert msg.body == body
        for name in ("message_id", "correlation_id", "content_type", "content_encoding"):
            assert msg.properties[name] == original.properties[name], name
        assert msg.properties["priority"] == 5
        for key, value in celery.items():
            assert msg.headers[key] == value, key


# ---- observability -------------------------------------------------------------------


def test_metrics_health_and_readiness(driver: BrokerDriver, router: RouterFactory) -> None:
    proc = router()
    assert proc.get("/healthz")[0] == 200
    assert proc.get("/readyz") == (200, "ready\n")
    name = driver.route.name
    driver.publish(b"a", message_id="retry-me")
    driver.fail(receive(driver))
    driver.ack(receive(driver))
    driver.publish(b"b", message_id="park-me")
    driver.fail(receive(driver), error_type="ValueError")
    wait_parked(driver)
    wait_for(lambda: proc.metric("dlq_router_parked_total", route=name, reason="non_retryable"))
    assert proc.metric("dlq_router_dead_letters_total", route=name) == 2
    assert proc.metric("dlq_router_retries_scheduled_total", route=name, tier="200ms") == 1
    assert proc.metric("dlq_router_ready") == 1
    assert proc.terminate() == 0
