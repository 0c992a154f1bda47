"""The contenders of ``bench_celery.py``: how each one is set up, read and cleaned up.

Every contender instance owns its names: a RabbitMQ contender gets its own vhost (native
delayed delivery declares fixed names, ``celery_delayed_0..27``, that must not meet anyone
else's), a Redis contender its own queue name and its own kombu ``unacked`` keys. Cleanup
deletes exactly those: the vhost, or the keys whose name holds the unique queue name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.benchmarks.celery_bench_stats import queue_counts, rabbitmqctl

ROOT = Path(__file__).resolve().parents[2]
RABBIT_HOST = "127.0.0.1:5672"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DLQ_ROUTER = str(Path(sys.executable).with_name("dlq-router"))


@dataclass(frozen=True)
class Spec:
    """One line of the table."""

    key: str
    label: str
    broker: str  # "rabbit" | "redis"
    mode: str  # "retry" | "native" | "dlq"
    short_visibility_timeout: bool = False


CONTENDERS = [
    Spec("1", "Celery self.retry, RabbitMQ classic queue", "rabbit", "retry"),
    Spec("2", "Celery native delayed delivery, RabbitMQ quorum", "rabbit", "native"),
    Spec("3", "Celery self.retry, Redis", "redis", "retry"),
    Spec("3b", "Celery self.retry, Redis, visibility_timeout < countdown", "redis", "retry", True),
    Spec("4", "dlq-router, RabbitMQ (classic)", "rabbit", "dlq"),
    Spec("5", "dlq-router, Redis", "redis", "dlq"),
]


def unavailable(spec: Spec) -> str | None:
    """Why this contender cannot run on this machine, or ``None``."""
    if spec.mode == "dlq" and importlib.util.find_spec("dlq_router.celery") is None:
        return "dlq_router.celery (the Celery drop-in, issue 9) is not installed in this checkout"
    if spec.mode == "native":
        import celery

        major, minor = (int(p) for p in celery.__version__.split(".")[:2])
        if (major, minor) < (5, 5):
            return f"Celery {celery.__version__} has no native delayed delivery (needs >= 5.5)"
    try:
        if spec.broker == "rabbit":
            rabbitmqctl("status")
        else:
            with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
                client.ping()
    except Exception as exc:  # reported in the table, never a traceback
        return f"{spec.broker} not usable here: {exc}"
    return None


@dataclass
class Instance:
    """One contender, one scenario: its own names, worker, router and counters."""

    spec: Spec
    run_id: str
    scenario: str
    backoff: list[float]
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-celery-")))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker: subprocess.Popen[bytes] | None = None
    router: subprocess.Popen[bytes] | None = None
    workers_started: int = 0

    @property
    def name(self) -> str:
        return f"dlqbench-{self.run_id}-{self.scenario}-c{self.spec.key}"

    @property
    def queue(self) -> str:
        return self.name if self.spec.broker == "redis" else "bench"

    @property
    def vhost(self) -> str:
        return self.name

    @property
    def broker_url(self) -> str:
        if self.spec.broker == "rabbit":
            return f"amqp://guest:guest@{RABBIT_HOST}/{self.vhost}"
        return REDIS_URL

    @property
    def track_key(self) -> str:
        return f"dlqbench:{self.run_id}:{self.scenario}:c{self.spec.key}"

    @property
    def topology_path(self) -> Path:
        return self.tmp / "topology.yaml"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_BROKER": self.broker_url,
            "BENCH_QUEUE": self.queue,
            "BENCH_MODE": self.spec.mode,
            "BENCH_BACKOFF": ",".join(f"{b:g}" for b in self.backoff),
            "BENCH_TRACK": REDIS_URL,
            "BENCH_TRACK_KEY": self.track_key,
            "BENCH_TOPOLOGY": str(self.topology_path),
        }
        if self.spec.short_visibility_timeout:
            # Below the countdown, so kombu "restores" retries the worker still holds.
            env["BENCH_VISIBILITY_TIMEOUT"] = f"{self.visibility_timeout():g}"
        return env

    def visibility_timeout(self) -> float:
        return max(1.0, min(60.0, self.backoff[0] / 2))

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self) -> None:
        if self.spec.broker == "rabbit":
            rabbitmqctl("add_vhost", self.vhost)
            rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        if self.spec.mode == "dlq":
            self._write_topology()
            self._run_cli("declare", "-t", str(self.topology_path))
            self.router = self._spawn([DLQ_ROUTER, "run", "-t", str(self.topology_path)], "router")

    def _write_topology(self) -> None:
        delays = ", ".join(f"{b:g}s" for b in self.backoff)
        self.topology_path.write_text(
            f"url: {self.broker_url}\n"
            "routes:\n"
            f"  - name: {self.queue}\n"
            f"    queue: {self.queue}\n"
            f"    exchange: {self.queue}\n"
            "    retry:\n"
            f"      delays: [{delays}]\n"
            "      max_attempts: 10\n"
        )

    def _run_cli(self, *args: str) -> None:
        done = subprocess.run(
            [DLQ_ROUTER, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"dlq-router {args[0]} failed: {done.stderr.strip()[-300:]}")

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        out = (self.tmp / f"{log}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_worker(self, concurrency: int) -> subprocess.Popen[bytes]:
        level = os.environ.get("BENCH_WORKER_LOGLEVEL", "warning")
        self.workers_started += 1
        self.worker = self._spawn(
            [sys.executable, "-m", "celery", "-A", "tests.benchmarks.celery_bench_app", "worker",
             "-P", "prefork", "-c", str(concurrency), "-Q", self.queue,
             "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", level,
             "-n", f"{self.name}-{self.workers_started}@localhost"],
            "worker",
        )  # fmt: skip
        return self.worker

    def log_tail(self, log: str = "worker", lines: int = 5) -> str:
        try:
            text = (self.tmp / f"{log}.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
        """SIGTERM (Celery's warm shutdown), wait; SIGKILL the group if it hangs. Seconds taken."""
        started = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Pool children normally exit with the parent; make sure none of ours linger.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return time.monotonic() - started

    def cleanup(self) -> None:
        for proc in self.procs:
            self.stop(proc, timeout=30)
        if self.spec.broker == "rabbit":
            try:
                rabbitmqctl("delete_vhost", self.vhost)
            except Exception as exc:
                print(f"  (cleanup: could not delete vhost {self.vhost}: {exc})", file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)
        with redis.Redis.from_url(REDIS_URL) as client:
            patterns = [f"{self.track_key}:*"]
            if self.spec.broker == "redis":
                patterns.append(f"*{self.name}*")  # the queue name is unique to this instance
            for pattern in patterns:
                keys = list(client.scan_iter(match=pattern, count=1000))
                for i in range(0, len(keys), 500):
                    client.delete(*keys[i : i + 500])

    # -- reading the broker -----------------------------------------------------------------

    def held(self) -> dict[str, int]:
        """Where the messages of this instance are right now, read from the broker."""
        if self.spec.broker == "rabbit":
            out: dict[str, int] = {}
            for qname, counts in queue_counts(self.vhost).items():
                if qname == self.queue:
                    out["work queue (ready)"] = counts.ready
                    out["worker (unacked)"] = counts.unacked
                elif qname.startswith("celery_delayed_"):
                    out["celery_delayed_* queues"] = (
                        out.get("celery_delayed_* queues", 0) + counts.total
                    )
                elif ".retry." in qname:
                    out["retry tier queues"] = out.get("retry tier queues", 0) + counts.total
                elif qname.endswith(".dlq"):
                    out["DLQ"] = counts.total
                elif qname.endswith(".parked"):
                    out["parked"] = counts.total
            return out
        with redis.Redis.from_url(REDIS_URL) as client:
            q = self.queue
            pipe = client.pipeline(transaction=False)
            pipe.llen(q)
            for step in (3, 6, 9):
                pipe.llen(f"{q}\x06\x16{step}")
            pipe.hlen(f"{q}.unacked")
            pipe.zcard("{" + q + "}:retry")
            pipe.llen("{" + q + "}:dlq")
            pipe.hlen("{" + q + "}:parked")
            res: list[Any] = pipe.execute()
        return {
            "work queue (ready)": int(sum(res[0:4])),
            "worker (unacked)": int(res[4]),
            "retry sorted set": int(res[5]),
            "DLQ": int(res[6]),
            "parked": int(res[7]),
        }

    def counters(self) -> tuple[dict[str, int], dict[str, int]]:
        """(runs per task key, successes per group)."""
        with redis.Redis.from_url(REDIS_URL) as client:
            runs = client.hgetall(f"{self.track_key}:runs")
            done = client.hgetall(f"{self.track_key}:done")
        return (
            {k.decode(): int(v) for k, v in runs.items()},
            {k.decode(): int(v) for k, v in done.items()},
        )

    def done(self, group: str) -> int:
        with redis.Redis.from_url(REDIS_URL) as client:
            value = client.hget(f"{self.track_key}:done", group)
        return int(value) if value is not None else 0

    def runs_seen(self) -> int:
        with redis.Redis.from_url(REDIS_URL) as client:
            return int(client.hlen(f"{self.track_key}:runs"))
