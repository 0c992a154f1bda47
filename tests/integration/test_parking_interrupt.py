"""Interrupted replays lose nothing: SIGKILL, Ctrl-C and a dropped connection, then a rerun.

The replay runs as a real `dlq-router` process (rate-capped so it is mid-stream when hit);
afterwards every parked id must be in the work queue at least once, duplicates bounded by
the in-flight window (RabbitMQ) or absent (Redis: each batch moves atomically).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dlq_router import parking as p
from dlq_router.backends import open_backend
from dlq_router.backends.rabbitmq import parking
from dlq_router.backends.rabbitmq.parking import WINDOW
from tests.conftest import RABBIT_URL, TopologyFactory, route_dict
from tests.integration.parking_support import (
    ParkDriver,
    Parked,
    RabbitParkDriver,
    RedisParkDriver,
    cli,
    write_topology,
)

N = 600
DLQ_ROUTER = str(Path(sys.executable).parent / "dlq-router")


def _start(path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [DLQ_ROUTER, "replay", "-t", str(path), "--all", "--rate", "400", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_until_moving(driver: ParkDriver, proc: subprocess.Popen[bytes]) -> None:
    """Interrupt mid-stream: once the replay has moved its first messages, not after a
    fixed sleep (Python's start-up alone can take most of a second on a loaded machine)."""
    route = driver.topology.routes[0]
    deadline = time.monotonic() + 30
    while driver.work_depth(route) == 0:
        assert proc.poll() is None, "the replay ended before moving anything"
        assert time.monotonic() < deadline, "the replay moved nothing in 30 s"
        time.sleep(0.02)
    time.sleep(0.2)  # with more messages in flight


def _check(driver: ParkDriver, path: Path, *, max_duplicates: int) -> None:
    """Rerun to completion; every id arrives, duplicates bounded."""
    route = driver.topology.routes[0]
    first = [w.headers["id"] for w in driver.work(route)]
    assert 0 < len(first) < N, "the replay was not interrupted mid-stream"
    result = cli("replay", "-t", path, "--all")
    assert result.exit_code == 0, result.output
    ids = first + [w.headers["id"] for w in driver.work(route)]
    counts = collections.Counter(ids)
    assert set(counts) == {f"task-p{i}" for i in range(N)}  # none lost
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= max_duplicates
    assert driver.parked_ids(route) == []


@pytest.fixture(params=["rabbitmq", "redis"])
def setup(
    request: pytest.FixtureRequest, make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> tuple[ParkDriver, Path]:
    topology = make_topology(request.param, routes=[route_dict(uid)])
    driver: ParkDriver = (
        RabbitParkDriver(topology) if request.param == "rabbitmq" else RedisParkDriver(topology)
    )
    request.addfinalizer(driver.close)
    driver.park(topology.routes[0], [Parked(f"p{i}", parked_at=i) for i in range(N)])
    return driver, write_topology(topology, tmp_path / "t.yaml")


def test_sigkill_mid_replay_then_rerun(setup: tuple[ParkDriver, Path]) -> None:
    driver, path = setup
    proc = _start(path)
    _wait_until_moving(driver, proc)
    proc.kill()
    proc.wait(10)
    _check(driver, path, max_duplicates=WINDOW if driver.kind == "rabbitmq" else 0)


def test_ctrl_c_mid_replay_exits_130_then_rerun(setup: tuple[ParkDriver, Path]) -> None:
    driver, path = setup
    proc = _start(path)
    _wait_until_moving(driver, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    _check(driver, path, max_duplicates=WINDOW if driver.kind == "rabbitmq" else 0)


class _Proxy:
    """A TCP forwarder on a free loopback port that the test can cut at once."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def cut(self) -> None:
        self.server.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_broker_connection_drop_mid_replay_then_rerun(
    make_topology: TopologyFactory, uid: str, tmp_path: Path
) -> None:
    topology = make_topology(routes=[route_dict(uid)])
    driver = RabbitParkDriver(topology)
    try:
        driver.park(topology.routes[0], [Parked(f"p{i}", parked_at=i) for i in range(N)])
        path = write_topology(topology, tmp_path / "t.yaml")
        proxy = _Proxy(5672)
        proxied = RABBIT_URL.replace(":5672", f":{proxy.port}")
        proc = _start(path, "--url", proxied)
        _wait_until_moving(driver, proc)
        proxy.cut()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert b"guest:guest" not in err  # the password never appears
        assert len(err.decode().strip().splitlines()) == 1, err
        _check(driver, path, max_duplicates=WINDOW)
    finally:
        driver.close()


# Whether a confirm comes while the replay closes is a race: with three tries the old code
# failed in 10 of 10 runs here (one try: about 2 in 3).
@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_while_confirms_arrive_waits_only_for_what_returns(
    attempt: int,
    make_topology: TopologyFactory,
    uid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An interrupted replay hands back its unacked messages and waits until the parking
    queue shows them again. Confirms keep arriving while it closes (Ctrl-C stops the loop,
    not the broker); acking on them made the wait expect more than came back, so Ctrl-C
    took the wait's whole no-progress timeout (10 s) and more on a busy machine, or acked
    on the closed channel, which made pika drop the connection."""
    topology = make_topology("rabbitmq", routes=[route_dict(uid)])
    route = topology.routes[0]
    driver = RabbitParkDriver(topology)
    waits: list[tuple[int, int]] = []  # (ready count waited for, ready count after)
    real_wait = parking._wait_until_back

    def recording_wait(connection: Any, queue: str, expected: int) -> None:
        real_wait(connection, queue, expected)
        channel = connection.channel()
        waits.append((expected, channel.queue_declare(queue, passive=True).method.message_count))
        channel.close()

    monkeypatch.setattr(parking, "_wait_until_back", recording_wait)
    monkeypatch.setattr(parking, "RETURN_TIMEOUT", 3.0)  # a wait that gives up, gives up fast
    sent = 0
    real_send = parking._Publisher.send_raw

    def interrupted_send(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal sent
        real_send(self, *args, **kwargs)
        sent += 1
        if sent == 150:  # Ctrl-C with publishes unconfirmed (since the 100th, not even sent)
            raise KeyboardInterrupt

    monkeypatch.setattr(parking._Publisher, "send_raw", interrupted_send)
    try:
        driver.park(route, [Parked(f"p{i}", parked_at=i) for i in range(N)])
        backend = open_backend(topology)
        try:
            with pytest.raises(KeyboardInterrupt):
                backend.parking.replay(p.Selector(all=True), p.ReplayOptions())
        finally:
            backend.close()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []  # (an ack on the closed channel: pika logs and drops the connection)
        assert len(waits) == 1
        expected, after = waits[0]
        assert after >= expected, f"the wait expected {expected} back, {after} came"
        # Nothing lost: a rerun sends the rest.
        first = [w.headers["id"] for w in driver.work(route)]
        assert 0 < len(first) <= 150
        result = cli("replay", "-t", write_topology(topology, tmp_path / "t.yaml"), "--all")
        assert result.exit_code == 0, result.output
        ids = first + [w.headers["id"] for w in driver.work(route)]
        assert set(ids) == {f"task-p{i}" for i in range(N)}
        assert driver.parked_ids(route) == []
    finally:
        driver.close()
