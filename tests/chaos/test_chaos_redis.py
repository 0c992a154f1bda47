"""Chaos ledger on Redis: a redis-server of the test's own (AOF, ``appendfsync always``).

While a worker fails each message a planned number of times, the harness SIGKILLs and
restarts the real ``dlq-router run`` subprocess, SIGKILLs redis-server and restarts it from
its AOF, cuts the router's TCP connections through a proxy and stalls Redis with
``DEBUG SLEEP``. At the end every id was processed or parked with the planned reason, none
is lost, and duplicates stay within the bound the README states for Redis: the router adds
none (claim and route are atomic scripts, a crashed router's batch is recovered from its
lease and routed once), so every duplicate is one the worker itself handled again after
losing a reply (counted by the worker).
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dlq_router.backends.redis import envelope
from dlq_router.names import RedisKeys, redis_keys
from dlq_router.topology import Topology, parse_topology
from tests.chaos.ledger import (
    NON_RETRYABLE_ERROR,
    SCALE,
    Faults,
    Ledger,
    Producer,
    chaos_loop,
    chaos_seed,
    report,
    scaled,
)
from tests.integration.drivers import wait_for
from tests.integration.redis_cluster import LocalRedis, local_server
from tests.integration.redis_driver import RedisDriver, kombu_envelope
from tests.integration.router_process import RouterProcess, write_topology

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600 * SCALE)]

REDIS_ARGS = (
    "--appendonly", "yes",
    "--appendfsync", "always",
    "--save", "",
    "--enable-debug-command", "local",
)  # fmt: skip
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
ROUNDS = 10  # faults per CHAOS_SCALE
RATE = 100.0  # messages per second: the producer is still sending while faults happen


@pytest.fixture
def server() -> Iterator[LocalRedis]:
    with local_server(*REDIS_ARGS) as srv:
        yield srv


class Worker(threading.Thread):
    """A worker that loses nothing across Redis restarts.

    It takes each message with BLMOVE into a processing list of its own and removes it from
    there only after handling it (a failure is LPUSHed to the dead-letter list in the same
    MULTI). After a lost reply it handles again whatever is still in its processing list.
    """

    def __init__(self, url: str, keys: RedisKeys, ledger: Ledger, stop: threading.Event) -> None:
        super().__init__(name="chaos-worker", daemon=True)
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.work = envelope.work_list(keys.work, 0)
        self.dlq = keys.dlq
        self.processing = f"{keys.work}:chaos-processing"
        self.ledger, self.stop = ledger, stop
        self.errors = 0
        self.last_error = ""

    def run(self) -> None:
        recover = True
        while not self.stop.is_set():
            try:
                if recover:
                    for raw in self.client.lrange(self.processing, 0, -1):
                        self.ledger.worker_rehandled += 1
                        self.handle(raw)
                    recover = False
                raw = self.client.blmove(self.work, self.processing, 0.5, "RIGHT", "LEFT")
                if raw is not None:
                    self.handle(raw)
            except redis.RedisError as exc:  # LOADING, a lost reply, a refused connection
                self.errors += 1
                self.last_error = repr(exc)
                recover = True
                self.stop.wait(0.1)

    def handle(self, raw: bytes) -> None:
        env = json.loads(raw)
        headers = env.get("headers") or {}
        message_id = env["properties"]["message_id"]
        error = self.ledger.verdict(message_id, int(headers.get("dlq-attempts", 0)))
        if error is None:
            self.ledger.record_processed(message_id)
            self.client.lrem(self.processing, 1, raw)
            return
        env["headers"] = {**headers, "dlq-error-type": error, "dlq-error-message": "chaos"}
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.dlq, json.dumps(env))
            pipe.lrem(self.processing, 1, raw)
            pipe.execute()


def _topology(url: str, name: str) -> Topology:
    route = {
        "name": name,
        "retry": {"delays": ["100ms", "300ms", "700ms"], "max_attempts": 4},
        "non_retryable": [NON_RETRYABLE_ERROR],
    }
    return parse_topology({"url": url, "routes": [route]}, "<chaos>")


def _declare(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dlq_router", "declare", "-t", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_redis_chaos_ledger(server: LocalRedis, tmp_path: Path, uid: str) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    topology = _topology(server.url, uid)
    route = topology.routes[0]
    keys = redis_keys(topology, route)
    _declare(write_topology(topology, tmp_path / "topology.yaml"))
    ledger = Ledger.make(scaled(1_000), route.max_attempts, rng)

    producer_client = redis.Redis.from_url(server.url, socket_timeout=5)

    def send(mid: str) -> None:
        env = kombu_envelope(
            mid.encode(),
            exchange=route.exchange,
            routing_key=route.routing_key,
            headers={},
            content_type="text/plain",
            content_encoding="utf-8",
            properties={"message_id": mid},
        )
        producer_client.lpush(keys.work, json.dumps(env))

    router = RouterProcess(topology, tmp_path, proxy=True, args=("--prefetch", "100"))
    stop = threading.Event()
    worker = Worker(server.url, keys, ledger, stop)
    producer = Producer(ledger, send, RATE, REDIS_ERRORS, stop)
    faults = Faults()

    def kill_router() -> None:
        router.kill()
        router.start(wait=False)

    def kill_redis() -> None:
        server.stop()  # SIGKILL
        server.start()  # replays the AOF; waits until it answers PING

    def cut() -> None:
        router.cut()

    def stall() -> None:
        with contextlib.suppress(*REDIS_ERRORS), redis.Redis(port=server.port) as c:
            c.execute_command("DEBUG", "SLEEP", f"{rng.uniform(0.5, 2.5):.1f}")

    started = time.monotonic()
    try:
        router.start(timeout=60)
        worker.start()
        producer.start()
        actions = {"router_sigkill": kill_router, "redis_sigkill": kill_redis}
        actions.update(tcp_cut=cut, redis_stall=stall)
        chaos_loop(rng, actions, faults, rounds=scaled(ROUNDS), pause=(0.3, 2.0), stop=stop)
        producer.join(timeout=120)
        assert producer.sent == len(ledger.plans), "the producer did not finish"
        if router.proc is None or router.proc.poll() is not None:
            router.start(wait=False)
        router.wait_ready(timeout=90)
        driver = RedisDriver(topology, route)
        try:

            def parked() -> list[tuple[str, str]]:
                return [
                    (str(m.properties["message_id"]), str(m.headers.get("dlq-park-reason")))
                    for m in driver.parked()
                ]

            wait_for(
                lambda: ledger.done(mid for mid, _ in parked()),
                timeout=180 * SCALE,  # the backlog grows with the size; the machine may be loaded
                what=f"every id processed or parked (counts {driver.counts()}, worker alive "
                f"{worker.is_alive()}, its last error {worker.last_error})",
            )
            wait_for(
                lambda: (
                    driver.counts() | {"parked": 0}
                    == dict.fromkeys(("work", "dlq", "retry", "parked"), 0)
                ),
                timeout=60,
                what=f"queues drained (counts {driver.counts()})",
            )
            result = ledger.check(parked())
        finally:
            driver.cleanup()
            driver.close()
    finally:
        stop.set()
        worker.join(10)
        producer.join(10)
        producer_client.close()
        router.close()
    seconds = time.monotonic() - started
    line = report("redis", seed, result, faults, seconds)
    line += f"; worker re-handled {ledger.worker_rehandled}, producer resent {producer.retries}"
    print(line)
    (tmp_path / "chaos-report.txt").write_text(line + "\n")
    assert faults.total == scaled(ROUNDS)
    assert result.lost == [], (
        f"{line}; lost: {result.lost[:20]}\nrouter log:\n{router.output[-3000:]}"
    )
    assert result.wrong == [], f"{line}; {result.wrong[:20]}"
    # The stated bound on Redis: the router duplicates nothing; a worker that lost a reply
    # may handle a message again (at most one per recovery, counted), and a producer that
    # lost a reply sends again.
    assert result.duplicates <= ledger.worker_rehandled + producer.retries, line
    assert result.processed == ledger.expected_processed(), line
