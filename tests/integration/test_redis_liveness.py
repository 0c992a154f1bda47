"""Redis liveness: a half-open connection is noticed, /readyz says when a loop is stuck,
signals and --shutdown-timeout work as on RabbitMQ, and run checks the declared routes.

The half-open connection is a TCP proxy that stops forwarding (``TcpProxy.pause``): the
router's socket stays open and nothing comes back, as with a peer gone without a FIN.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dlq_router.backends import open_backend
from dlq_router.topology import Topology, parse_topology
from tests.conftest import REDIS_URL, delete_redis_topology, route_dict
from tests.integration.redis_driver import RedisDriver
from tests.integration.router_process import RouterProcess, write_topology


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for ``check`` to hold; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture
def topology_at(uid: str) -> Iterator[Callable[[str], Topology]]:
    """A declared Redis topology whose URL carries ``query`` (socket_timeout=...)."""
    made: list[Topology] = []

    def make(query: str) -> Topology:
        url = f"{REDIS_URL}?{query}" if query else REDIS_URL
        topology = parse_topology({"url": url, "routes": [route_dict(uid)]}, source="<test>")
        backend = open_backend(topology)
        try:
            backend.declare(dry_run=False)
        finally:
            backend.close()
        made.append(topology)
        return topology

    yield make
    for topology in made:
        delete_redis_topology(topology)


def not_ready(router: RouterProcess) -> Callable[[], bool]:
    return lambda: not router.ready()


def routed(driver: RedisDriver, before: int) -> Callable[[], bool]:
    return lambda: driver.counts()["retry"] + driver.counts()["work"] > before


def test_half_open_connection_times_out_and_the_router_recovers(
    topology_at: Callable[[str], Topology], tmp_path: Path
) -> None:
    topology = topology_at("socket_timeout=2")
    driver = RedisDriver(topology, topology.routes[0])
    router = RouterProcess(topology, tmp_path, proxy=True)
    try:
        router.start()
        assert router.proxy is not None
        router.proxy.pause()
        # Without a socket timeout the call would hang and /readyz stay 200 for ever.
        wait_for(lambda: not router.ready(), 15, "/readyz 503 on a stalled connection")
        wait_for(lambda: "lost Redis" in router.output, 15, "the hang reported")
        router.proxy.resume()
        router.wait_ready(30)
        driver.inject_dead_letter(b"after", {})
        wait_for(routed(driver, 0), 15, "a dead letter routed after the stall")
        assert router.proc is not None and router.proc.poll() is None
        assert router.metric("dlq_router_reconnects_total") >= 1
    finally:
        router.close()
        driver.close()


def test_readyz_stalls_and_both_signals_end_a_hung_router(
    topology_at: Callable[[str], Topology], tmp_path: Path
) -> None:
    """Calls hang (long socket timeout, stalled proxy): /readyz turns 503 once a loop made no
    progress for 10 s; SIGTERM ends the router after --shutdown-timeout; a second SIGTERM
    ends it at once."""
    topology = topology_at("socket_timeout=120")
    patient = RouterProcess(topology, tmp_path, proxy=True, args=("--shutdown-timeout", "2"))
    try:
        patient.start()
        assert patient.proxy is not None
        # The same stalled proxy, a router that would wait two minutes for its loops.
        stubborn = RouterProcess(
            topology, tmp_path, args=("--url", patient.url, "--shutdown-timeout", "120")
        )
        try:
            stubborn.start()
            patient.proxy.pause()
            for router in (patient, stubborn):
                wait_for(not_ready(router), 30, "/readyz 503 once a loop stalls")
                status, body = router.get("/readyz")
                assert status == 503 and "no progress for over 10s" in body, body
            patient.signal(15)
            stubborn.signal(15)
            assert patient.proc is not None and stubborn.proc is not None
            assert patient.proc.wait(15) == 0
            assert "still busy 2s after the stop" in patient.output
            assert stubborn.proc.poll() is None  # it waits up to its own timeout
            stubborn.signal(15)
            assert stubborn.proc.wait(10) == 0
            assert "second signal: exiting now" in stubborn.output
        finally:
            stubborn.close()
    finally:
        if patient.proxy is not None:
            patient.proxy.resume()
        patient.close()


def test_run_refuses_undeclared_and_changed_routes(uid: str, tmp_path: Path) -> None:
    """As on RabbitMQ: exit 2 for a route never declared, 3 for one declared differently."""
    topology = parse_topology({"url": REDIS_URL, "routes": [route_dict(uid)]}, source="<test>")
    path = write_topology(topology, tmp_path / "t.yaml")
    run = [sys.executable, "-m", "dlq_router", "run", "-t", str(path)]
    try:
        done = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "was never declared" in done.stderr and "dlq-router declare" in done.stderr
        assert done.stderr.count("dlq-router: error:") == 1, done.stderr
        declare = [sys.executable, "-m", "dlq_router", "declare", "-t", str(path)]
        subprocess.run(declare, check=True, capture_output=True, timeout=60)
        changed = route_dict(uid, retry={"delays": ["1s", "2s"], "max_attempts": 9})
        topology2 = parse_topology({"url": REDIS_URL, "routes": [changed]}, source="<test>")
        write_topology(topology2, path)
        done = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert done.returncode == 3, done.stderr
        assert "differ from the topology; the router was not started" in done.stderr
        assert "max_attempts" in done.stderr
    finally:
        delete_redis_topology(topology)
