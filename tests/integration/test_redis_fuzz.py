"""Broker-level fuzz on Redis (issue 10): hundreds of generated hostile dead letters mixed
with valid ones, pushed to the real ``{q}:dlq`` list and routed by the real ``dlq-router
run`` subprocess. Every message ends in the retry zset / work lists or the parking lot, the
router's pid never changes, and valid messages keep their normal latency.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router.backends import open_backend
from dlq_router.topology import Topology, parse_topology
from tests.conftest import REDIS_URL, route_dict
from tests.integration.drivers import wait_for
from tests.integration.redis_driver import RedisDriver, kombu_envelope
from tests.integration.router_process import RouterProcess

HOSTILE = 300
VALID = 150
SEED = 10  # the generator is deterministic: a failure reproduces

BAD_NUMBERS = [
    "1e400", "-1e400", "Infinity", "-Infinity", "NaN", '"\\u00b2"', '"1\\u00b2"', "2.5", "2.0",
    "9223372036854775807", "18446744073709551616", "-1", "true", "null", '"abc"', "[1]",
    '{"a": 1}', "1e308", '"' + "9" * 5000 + '"', "9" * 5000, '"\\u0663"',
]  # fmt: skip


def hostile(rng: random.Random, driver: RedisDriver, n: int) -> bytes:
    """One hostile dead letter; ``n`` numbers it (message_id hostile-n when it has one)."""

    def env(headers: Any = None, **props: Any) -> dict[str, Any]:
        e = kombu_envelope(
            b"hostile-%d" % n,
            exchange=driver.route.exchange,
            routing_key=driver.route.routing_key,
            headers={},
            content_type="application/json",
            content_encoding="utf-8",
            properties={"message_id": f"hostile-{n}", **props},
        )
        e["headers"] = headers if headers is not None else {}
        return e

    def spliced(field: str, raw_value: str) -> bytes:
        # "priority": 0 / "headers": {} replaced by text json.dumps would never write
        text = json.dumps(env())
        old = '"priority": 0' if field == "priority" else '"headers": {}'
        new = f'"priority": {raw_value}' if field == "priority" else raw_value
        return text.replace(old, new, 1).encode()

    kind = rng.randrange(16)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:
        return spliced("priority", rng.choice(BAD_NUMBERS))
    if kind == 2:
        return spliced("headers", '{"dlq-attempts": ' + rng.choice(BAD_NUMBERS) + "}")
    if kind == 3:
        return spliced("headers", '{"dlq-first-failed-at": ' + rng.choice(BAD_NUMBERS) + "}")
    if kind == 4:
        depth = rng.choice([50, 900, 5_000, 100_000])
        return spliced("headers", '{"x": ' + "[" * depth + "]" * depth + "}")
    if kind == 5:
        text = json.dumps(env({"k": "v" * 50}))
        return text[: rng.randrange(len(text))].encode()  # truncated
    if kind == 6:
        return json.dumps(env({"bad": "X"})).encode().replace(b"X", b"\xff\xfe", 1)
    if kind == 7:
        return json.dumps(env()).encode(rng.choice(["utf-16", "utf-32", "utf-8-sig"]))
    if kind == 8:
        e = env()
        e[rng.choice(["headers", "properties"])] = rng.choice([[], "x", 5, None, True])
        return json.dumps(e).encode()
    if kind == 9:  # a different message under a dlq-id that others carry too
        return json.dumps(env({h.ID: "fuzz-same", h.ERROR_TYPE: "ValueError"})).encode()
    if kind == 10:
        info = {"exchange": rng.choice([5, [], None, {"a": 1}]), "routing_key": [1, 2]}
        return json.dumps(env(delivery_info=info)).encode()
    if kind == 11:
        e = env()
        e["body"] = rng.choice([5, None, [1], {"a": "b"}, "not base64 !!"])
        return json.dumps(e).encode()
    if kind == 12:
        return json.dumps(env({"big": "x" * 100_000, h.ERROR_MESSAGE: "y" * 50_000})).encode()
    if kind == 13:
        return json.dumps(rng.choice([[1, 2], "text", 42, None, True])).encode()
    if kind == 14:
        value = rng.choice(["", " ", "a b", "x" * 300, "\u0007", 5, [1], None, "ok-id"])
        return json.dumps(env({h.ID: value, h.ERROR_TYPE: "ValueError"})).encode()
    return json.dumps(  # router headers of every wrong type at once
        env({name: rng.choice([[1], {"a": None}, 2.5, True, "\u00b2"]) for name in HEADERS})
    ).encode()


HEADERS = [h.ATTEMPTS, h.ERROR_TYPE, h.ERROR_MESSAGE, h.ORIGIN_EXCHANGE, h.ORIGIN_QUEUE, h.ID]


@pytest.fixture
def topology(uid: str) -> Iterator[Topology]:
    topo = parse_topology({"url": REDIS_URL, "routes": [route_dict(uid)]}, source="<test>")
    backend = open_backend(topo)
    try:
        backend.declare(dry_run=False)
    finally:
        backend.close()
    yield topo


class Worker(threading.Thread):
    """Takes everything off the work lists (kombu's BRPOP) and notes when; the lateness of
    a valid message is its arrival minus ``dlq-retry-due-at`` (parsed afterwards, so the
    worker's own parsing never delays the next arrival)."""

    def __init__(self, driver: RedisDriver) -> None:
        super().__init__(daemon=True)
        self.driver = driver
        self.stop = threading.Event()
        self.arrived: list[tuple[float, bytes]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            got = self.driver.client.brpop(self.driver.work_lists, timeout=0.2)
            if got is not None:
                self.arrived.append((time.time() * 1000, got[1]))

    def valid_late_ms(self) -> dict[str, float]:
        out = {}
        for at, raw in list(self.arrived):
            if b'"valid-' in raw:
                env = json.loads(raw)
                out[env["properties"]["message_id"]] = at - env["headers"][h.RETRY_DUE_AT]
        return out


def test_hostile_dead_letters_mixed_with_valid_ones(topology: Topology, tmp_path: Path) -> None:
    driver = RedisDriver(topology, topology.routes[0])
    proc = RouterProcess(topology, tmp_path)
    worker = Worker(driver)
    rng = random.Random(SEED)

    def valid(i: int) -> bytes:
        env = kombu_envelope(
            b"valid",
            exchange=driver.route.exchange,
            routing_key=driver.route.routing_key,
            headers={"n": i},
            content_type="application/json",
            content_encoding="utf-8",
            properties={"message_id": f"valid-{i}"},
        )
        return json.dumps(env).encode()

    try:
        proc.start()
        assert proc.proc is not None
        pid = proc.proc.pid
        worker.start()

        # Baseline: valid dead letters alone.
        for i in range(VALID):
            driver.client.lpush(driver.keys.dlq, valid(i))
        wait_for(lambda: len(worker.arrived) == VALID, 30, "baseline routed")
        baseline = sorted(worker.valid_late_ms().values())

        # Hostile ones, the valid ones interleaved.
        letters = [hostile(rng, driver, n) for n in range(HOSTILE)]
        mixed = [valid(VALID + i) for i in range(VALID)]
        for pos, raw in enumerate(mixed):
            letters.insert(rng.randrange(len(letters) + 1) if pos else 0, raw)
        for start in range(0, len(letters), 50):
            driver.client.lpush(driver.keys.dlq, *letters[start : start + 50])

        k = driver.keys

        def settled() -> bool:
            c = driver.client
            left = c.llen(k.dlq) + c.zcard(k.inflight) + c.zcard(k.retry)
            return left == 0 and len(worker.arrived) + c.hlen(k.parked) == VALID + len(letters)

        wait_for(settled, 60, "every dead letter retried or parked")
        time.sleep(0.5)  # nothing more arrives: no duplicates
        assert settled()
        assert proc.proc.poll() is None and proc.proc.pid == pid, proc.output
        assert proc.ready()
        valid_late = worker.valid_late_ms()
        assert len(valid_late) == 2 * VALID
        assert driver.client.hlen(k.parked) == driver.client.zcard(k.parked_index)
        reasons: dict[str, int] = {}
        for pid, raw in driver.client.hgetall(k.parked).items():
            headers = json.loads(raw)["headers"]
            assert headers[h.ID] == pid.decode()  # no park replaced another
            reasons[headers[h.PARK_REASON]] = reasons.get(headers[h.PARK_REASON], 0) + 1
        assert "router_error" not in reasons, (reasons, proc.output)
        assert {"malformed", "invalid_header", "non_retryable"} <= set(reasons)

        # Latency of the valid ones with the hostile ones around them. A batch is decided as
        # a whole, so a valid letter waits for the hostile letters claimed with it: about
        # 0.5 ms per 100 KB letter, their size's cost, not a stall (measured: baseline p50
        # 26-115 ms, mixed 130-330 ms on a loaded 2-core machine). The bound is loose for
        # that load: p50 within 1 s of the baseline's, none over 5 s.
        late = sorted(v for key, v in valid_late.items() if int(key[6:]) >= VALID)
        print(
            f"lateness ms: baseline p50 {statistics.median(baseline):.1f} "
            f"max {baseline[-1]:.1f}; mixed p50 {statistics.median(late):.1f} max {late[-1]:.1f}"
        )
        assert statistics.median(late) <= statistics.median(baseline) + 1_000
        assert late[-1] < 5_000
        assert proc.terminate() == 0
    finally:
        worker.stop.set()
        worker.join(5)
        proc.close()
        driver.cleanup()
        driver.close()
