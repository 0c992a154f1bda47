"""Throwaway local Redis servers: a 3-master Cluster, or one server with given settings.

``redis_cluster_url`` (module scope) yields ``redis+cluster://127.0.0.1:PORT`` and tears the
cluster down afterwards (processes killed, directory removed). ``local_server(*args)`` does
the same for a single ``redis-server`` started with extra arguments.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports(n: int) -> list[int]:
    # A cluster node also listens on port + 10000 (the bus); keep both free.
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@contextlib.contextmanager
def local_cluster(masters: int = 3) -> Iterator[str]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed for the Cluster tests")
    tmp = tempfile.mkdtemp(prefix="dlq-router-cluster-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = _ports(masters)
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", f"nodes-{port}.conf",
                        "--dir", tmp,
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in ports:
            _wait(lambda p=port: _ask(p, "PING"), "redis-server start")
        nodes = [f"127.0.0.1:{p}" for p in ports]
        create = ["redis-cli", "--cluster", "create", *nodes]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        for port in ports:
            _wait(lambda p=port: b"state:ok" in _ask(p, "CLUSTER", "INFO"), "cluster_state:ok")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


class LocalRedis:
    """One plain redis-server on a free loopback port; ``stop``/``start`` simulate an outage."""

    def __init__(self, args: tuple[str, ...]) -> None:
        self.tmp = tempfile.mkdtemp(prefix="dlq-router-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.tmp]
        self.proc = subprocess.Popen(
            ["redis-server", *where, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _ask(self.port, "PING"), "redis-server start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@contextlib.contextmanager
def local_server(*args: str) -> Iterator[LocalRedis]:
    """One plain redis-server started with extra ``args``; removed afterwards."""
    server = LocalRedis(args)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.tmp, ignore_errors=True)


def _ask(port: int, *command: str) -> object:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        return client.execute_command(*command)


def _wait(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"local Redis Cluster: timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    with local_cluster() as url:
        yield url
