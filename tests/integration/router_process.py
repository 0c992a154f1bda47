"""Run ``python -m dlq_router run`` as a real subprocess, the way a sidecar runs.

Broker-neutral: the topology file decides the broker. With ``proxy=True`` the router
connects through a ``TcpProxy`` so a test can cut its connections and only its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from dlq_router.topology import Topology
from tests.integration.tcp_proxy import TcpProxy

READY_LINE = re.compile(r"consuming \d+ ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_topology(topology: Topology, path: Path) -> Path:
    path.write_text(yaml.safe_dump(topology.model_dump(mode="json"), sort_keys=False))
    return path


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


class RouterProcess:
    """One ``dlq-router run`` subprocess with its log in a file and metrics on a port."""

    def __init__(
        self,
        topology: Topology,
        workdir: Path,
        *,
        proxy: bool = False,
        args: tuple[str, ...] = (),
        module: str = "dlq_router",
    ) -> None:
        self.topology = topology
        self.module = module  # ``python -m`` this (a test may plant a bug: faulty_router.py)
        self.path = write_topology(topology, workdir / f"topology-{id(self)}.yaml")
        self.log_path = workdir / f"router-{id(self)}.log"
        self.args = args
        self.proxy: TcpProxy | None = None
        self.url = topology.url
        if proxy:
            parts = urlsplit(topology.url)
            self.proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
            self.url = _with_port(topology.url, self.proxy.port)
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, *, wait: bool = True, timeout: float = 15.0) -> RouterProcess:
        cmd = [sys.executable, "-m", self.module, "run", "-t", str(self.path)]
        if self.proxy is not None:
            cmd += ["--url", self.url]
        cmd += ["--metrics-port", str(self.metrics_port), *self.args]
        log = self.log_path.open("ab")
        self._log_offset = self.log_path.stat().st_size
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output_since_start(self) -> str:
        return self.output[self._log_offset :]

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return self.get("/readyz")[0] == 200
        return False

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited {self.proc.returncode}:\n{self.output}")
            if self.ready():
                return
            time.sleep(0.05)
        raise AssertionError(f"router not ready after {timeout}s:\n{self.output}")

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0 when absent)."""
        _, text = self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and got == want:
                return float(value)
        return 0.0

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit code."""
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def cut(self) -> None:
        assert self.proxy is not None, "start the router with proxy=True"
        self.proxy.cut()

    def outage(self, seconds: float) -> None:
        assert self.proxy is not None, "start the router with proxy=True"
        self.proxy.outage(seconds)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self.proxy is not None:
            self.proxy.close()
