"""A real Celery stack for the end-to-end tests: ``dlq-router declare``, a ``celery worker``
subprocess (prefork, concurrency 2) running the example app, a ``dlq-router run``
subprocess, and a client app in the test process. One stack per module and broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery, states
from celery.result import AsyncResult

from dlq_router.celery import configure
from dlq_router.topology import Topology, parse_topology
from tests.conftest import RABBIT_URL, REDIS_URL, delete_rabbit_topology, delete_redis_topology
from tests.integration.router_process import RouterProcess, write_topology

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "redis://127.0.0.1:6379/0"
CELERY_RABBIT = "amqp://guest:guest@127.0.0.1:5672//"
DELAYS_MS = (300, 600)  # tier delays of the test routes
MAX_ATTEMPTS = 3


def _route(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "exchange": name,
        "retry": {"delays": [f"{d}ms" for d in DELAYS_MS], "max_attempts": MAX_ATTEMPTS},
        "non_retryable": ["ValueError"],
        **extra,
    }


def dlq(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "dlq_router", *map(str, args)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, f"dlq-router {args}: {proc.returncode}\n{proc.stderr}"
    return proc


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


class Worker:
    """One ``celery worker`` subprocess with its log in a file."""

    def __init__(self, stack: CeleryStack, name: str, queues: list[str]) -> None:
        self.stack = stack
        self.log_path = stack.workdir / f"worker-{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "CELERY_BROKER_URL": stack.celery_url,
            "CELERY_RESULT_BACKEND": RESULTS,
            "DLQ_ROUTER_TOPOLOGY": str(stack.topology_path),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tests.integration.celery_test_app",
                 "worker", "-Q", ",".join(queues), "-P", "prefork", "-c", "2",
                 "--without-mingle", "--without-gossip", "--without-heartbeat",
                 "-l", "info", "-n", f"{stack.uid}-{name}@localhost"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.output}")
            return " ready." in self.output

        wait_for(ready, timeout, "the worker to be ready")

    def pool_pids(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class CeleryStack:
    """Topology with unique names, declared; a worker; the router; a client app."""

    def __init__(self, kind: str, workdir: Path, *, worker_before_declare: bool = True) -> None:
        self.kind = kind
        self.workdir = workdir
        self.uid = "c" + uuid.uuid4().hex[:8]
        if kind == "rabbitmq":
            routes = [
                _route(f"{self.uid}-classic"),
                _route(f"{self.uid}-quorum", queue_type="quorum"),
                # consumed only by the worker started after declare (delivery-count test)
                _route(f"{self.uid}-redeliver", queue_type="quorum"),
            ]
            url, self.celery_url = RABBIT_URL, CELERY_RABBIT
        else:
            routes = [_route(f"{self.uid}-redis")]
            url, self.celery_url = REDIS_URL, REDIS_URL
        self.topology: Topology = parse_topology({"url": url, "routes": routes}, "<celery test>")
        self.queues = [r.queue for r in self.topology.routes]
        self.main_queues = [q for q in self.queues if not q.endswith("-redeliver")]
        self.topology_path = write_topology(self.topology, workdir / "topology.yaml")
        self.workers: list[Worker] = []
        self.router: RouterProcess | None = None
        self.client = Celery("client", broker=self.celery_url, backend=RESULTS)
        self.client.conf.update(result_expires=3600, broker_connection_retry_on_startup=True)
        configure(self.client, self.topology)
        self.worker_before_declare = worker_before_declare
        self.declare_output = ""

    def start(self) -> CeleryStack:
        if self.worker_before_declare:
            self.start_worker("main")
        self.declare_output = dlq("declare", "-t", self.topology_path).stdout
        if not self.worker_before_declare:
            self.start_worker("main")
        self.router = RouterProcess(self.topology, self.workdir).start()
        return self

    def start_worker(self, name: str, queues: list[str] | None = None) -> Worker:
        worker = Worker(self, name, queues or self.main_queues)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    @property
    def worker(self) -> Worker:
        return self.workers[0]

    def send(self, task: str, queue: str, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.client.send_task(task, args=args, kwargs=kwargs, queue=queue)

    def parked(self, *args: str) -> list[dict[str, Any]]:
        out = dlq("parked", "list", "-t", self.topology_path, "--json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def router_output(self) -> str:
        return self.router.output if self.router is not None else ""

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.router is not None:
            self.router.close()
        with contextlib.suppress(Exception):
            self.client.close()
        if self.kind == "rabbitmq":
            # Celery also declared each route's work exchange (same name as the route here).
            delete_rabbit_topology(self.topology)
        else:
            delete_redis_topology(self.topology)
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            with contextlib.closing(client):
                client.delete(*[f"_kombu.binding.{q}" for q in self.queues])


def runs(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


class StateWatch:
    """Polls a result's state until it is ready; every distinct state in order."""

    def __init__(self, result: AsyncResult) -> None:
        self.result = result
        self.states: list[str] = []

    def until_ready(self, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.result.state
            if not self.states or self.states[-1] != state:
                self.states.append(state)
            if state in states.READY_STATES:
                return self.states
            time.sleep(0.02)
        raise AssertionError(f"{self.result.id} not ready after {timeout}s: {self.states}")
