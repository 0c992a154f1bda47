"""Issue 10 on Redis: no dead letter can stop a route, and a park never replaces another.

Each test runs against the real Redis; the crash-loop and collision cases drive the real
``dlq-router run`` subprocess (its pid must never change).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router.backends import open_backend
from dlq_router.backends.redis import router as redis_router
from dlq_router.backends.redis.connection import script
from dlq_router.policy import Decision, Failure
from dlq_router.topology import Route, Topology, parse_topology
from tests.conftest import REDIS_URL, route_dict
from tests.integration.drivers import wait_for
from tests.integration.redis_driver import RedisDriver, kombu_envelope
from tests.integration.router_process import RouterProcess
from tests.integration.test_redis_router import RouterThread

DEEP = 100_000


def envelope_text(driver: RedisDriver, headers: dict[str, Any], **props: Any) -> str:
    env = kombu_envelope(
        b"body",
        exchange=driver.route.exchange,
        routing_key=driver.route.routing_key,
        headers=headers,
        content_type="application/json",
        content_encoding="utf-8",
        properties=props,
    )
    return json.dumps(env)


def hostile_envelopes(driver: RedisDriver) -> dict[str, bytes]:
    """The Why cases of issue 10 on Redis, as raw dead letters."""
    plain = envelope_text(driver, {}, message_id="hostile")
    return {
        "priority 1e400": plain.replace('"priority": 0', '"priority": 1e400').encode(),
        "priority Infinity": plain.replace('"priority": 0', '"priority": Infinity').encode(),
        "priority NaN": plain.replace('"priority": 0', '"priority": NaN').encode(),
        "nested 100,000 deep": plain.replace('"headers": {}', '"headers": {"x": %s}')
        .replace("%s", "[" * DEEP + "]" * DEEP)
        .encode(),
        "attempts superscript two": envelope_text(
            driver, {h.ATTEMPTS: "\u00b2"}, message_id="hostile"
        ).encode(),
    }


@pytest.fixture
def topology(uid: str) -> Iterator[Topology]:
    topo = parse_topology({"url": REDIS_URL, "routes": [route_dict(uid)]}, source="<test>")
    backend = open_backend(topo)
    try:
        backend.declare(dry_run=False)
    finally:
        backend.close()
    yield topo


@pytest.fixture
def driver(topology: Topology) -> Iterator[RedisDriver]:
    d = RedisDriver(topology, topology.routes[0])
    yield d
    d.cleanup()
    d.close()


def parked_by_reason(driver: RedisDriver) -> dict[str, int]:
    out: dict[str, int] = {}
    for msg in driver.parked():
        reason = str(msg.headers[h.PARK_REASON])
        out[reason] = out.get(reason, 0) + 1
    return out


def test_hostile_envelopes_neither_stop_the_router_nor_the_letters_behind_them(
    driver: RedisDriver, topology: Topology, tmp_path: Path
) -> None:
    """Issue 10: 1e400 / Infinity / NaN priorities and 100,000-deep JSON made the router
    exit (OverflowError, RecursionError), again after each lease recovery, with the valid
    dead letters behind them leased; "²" in dlq-attempts did the same (ValueError)."""
    hostile = hostile_envelopes(driver)
    for raw in hostile.values():
        driver.inject_raw(raw)
    for i in range(100):
        driver.inject_dead_letter(b"valid-%d" % i, {"n": i})
    proc = RouterProcess(topology, tmp_path).start()
    try:
        assert proc.proc is not None
        pid = proc.proc.pid
        wait_for(
            lambda: driver.counts()["work"] == 100 or proc.proc.poll() is not None,  # type: ignore[union-attr]
            30,
            f"100 valid retries back in the work list (now {driver.counts()})",
        )
        assert proc.proc.poll() is None, f"the router exited:\n{proc.output}"
        assert proc.proc.pid == pid
        assert driver.counts() == {"work": 100, "dlq": 0, "retry": 0, "parked": len(hostile)}
        assert parked_by_reason(driver) == {"malformed": 4, "invalid_header": 1}
        stored = {m.body for m in driver.parked() if m.headers[h.PARK_REASON] == "malformed"}
        # a malformed envelope is kept byte for byte, as the body of the parked envelope
        assert stored == {raw for name, raw in hostile.items() if "attempts" not in name}
        assert proc.ready()
        assert proc.terminate() == 0
    finally:
        proc.close()


def test_a_leased_hostile_batch_does_not_crash_a_restarted_router(
    driver: RedisDriver, topology: Topology, tmp_path: Path
) -> None:
    """The batch a crashed router left leased holds the hostile letters: the restarted
    router recovers it, parks them, routes the rest, and keeps running."""
    for raw in hostile_envelopes(driver).values():
        driver.inject_raw(raw)
    for i in range(20):
        driver.inject_dead_letter(b"v", {"n": i})
    k = driver.keys
    claim = script(driver.client, "claim")
    assert len(claim(keys=[k.dlq, k.inflight, k.claims], args=[100, 1, "crashed"])) == 25
    proc = RouterProcess(topology, tmp_path).start()
    try:
        wait_for(lambda: driver.counts()["work"] == 20, 30, f"routed ({driver.counts()})")
        assert proc.proc is not None and proc.proc.poll() is None, proc.output
        assert driver.counts() == {"work": 20, "dlq": 0, "retry": 0, "parked": 5}
        assert "recovered 25 dead letter(s)" in proc.output
    finally:
        proc.close()


def test_two_dead_letters_with_one_dlq_id_are_both_parked(
    driver: RedisDriver, topology: Topology, tmp_path: Path
) -> None:
    """Issue 10: two different dead letters carrying the same dlq-id overwrote each other
    in the parking hash. A park never replaces another message; the second one is parked
    under an id of the router's own, and its dlq-id header says so."""
    proc = RouterProcess(topology, tmp_path).start()
    try:
        driver.inject_dead_letter(b"first", {h.ERROR_TYPE: "ValueError", h.ID: "same-id"})
        wait_for(lambda: driver.counts()["parked"] == 1, 10, "first parked")
        before = driver.client.hget(k := driver.keys.parked, "same-id")
        assert before is not None
        driver.inject_dead_letter(b"second", {h.ERROR_TYPE: "ValueError", h.ID: "same-id"})
        # two in one batch, too
        driver.inject_dead_letter(b"third", {h.ERROR_TYPE: "ValueError", h.ID: "other-id"})
        driver.inject_dead_letter(b"fourth", {h.ERROR_TYPE: "ValueError", h.ID: "other-id"})
        wait_for(lambda: driver.counts()["parked"] == 4, 10, f"parked ({driver.counts()})")
        assert driver.client.hget(k, "same-id") == before  # the first one is untouched
        bodies: dict[bytes, str] = {}
        for pid, raw in driver.client.hgetall(k).items():
            env = json.loads(raw)
            assert env["headers"][h.ID] == pid.decode()  # header and hash key agree
            bodies[driver._received(raw).body] = pid.decode()
        assert set(bodies) == {b"first", b"second", b"third", b"fourth"}
        assert bodies[b"first"] == "same-id"
        assert bodies[b"second"] not in ("same-id", "other-id")
        assert len(set(bodies.values())) == 4
        assert driver.client.zcard(driver.keys.parked_index) == 4
        assert "is already parked" in proc.output
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        proc.close()


def test_an_exception_on_one_message_parks_it_as_router_error(
    driver: RedisDriver, topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-message guard: a bug on one dead letter parks it (reason router_error, the
    exception text as detail); the router keeps routing the others."""
    real = redis_router.decide

    def buggy(route: Route, failure: Failure, **kwargs: Any) -> Decision:
        if failure.headers.get("boom"):
            raise RuntimeError("kaboom on this one")
        return real(route, failure, **kwargs)

    monkeypatch.setattr(redis_router, "decide", buggy)
    driver.inject_dead_letter(b"bad", {"boom": True, h.ATTEMPTS: 1})
    for i in range(10):
        driver.inject_dead_letter(b"ok", {"n": i})
    router = RouterThread(topology)
    try:
        wait_for(lambda: driver.counts()["work"] == 10, 10, f"routed ({driver.counts()})")
        assert router.thread.is_alive()
        (parked,) = driver.parked()
        assert parked.body == b"bad"  # the envelope as it came, park headers added
        assert parked.headers[h.PARK_REASON] == "router_error"
        assert parked.headers[h.PARK_DETAIL] == "RuntimeError: kaboom on this one"
        assert parked.headers[h.ATTEMPTS] == 1 and parked.headers["boom"] is True
        name = topology.routes[0].name
        assert router.sample("dlq_router_parked_total", route=name, reason="router_error") == 1
    finally:
        router.stop()


def test_a_dead_letter_held_past_the_limit_is_reported_with_its_id(
    uid: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A park that Redis refuses (full lot, reject-publish) holds the dead letter; held past
    the limit it is reported: an error line with its id and dlq_router_held_too_long."""
    monkeypatch.setattr("dlq_router.backends.redis.held.REPORT_AFTER_S", 0.5)
    route = route_dict(uid, parking={"max_length": 1})
    topology = parse_topology({"url": REDIS_URL, "routes": [route]}, source="<test>")
    driver = RedisDriver(topology, topology.routes[0])
    try:
        driver.inject_dead_letter(b"fits", {h.ERROR_TYPE: "ValueError"})
        driver.inject_dead_letter(b"held", {h.ERROR_TYPE: "ValueError", h.ID: "held-one"})
        with caplog.at_level(logging.ERROR, logger="dlq_router.run"):
            router = RouterThread(topology)
            try:
                wait_for(
                    lambda: router.sample("dlq_router_held_too_long_total", route=uid) >= 1,
                    15,
                    "held too long reported",
                )
                assert router.thread.is_alive()
            finally:
                router.stop()
        assert any(
            "held-one" in r.getMessage() and "held for" in r.getMessage() for r in caplog.records
        )
        assert driver.counts() == {"work": 0, "dlq": 1, "retry": 0, "parked": 1}
    finally:
        driver.cleanup()
        driver.close()
