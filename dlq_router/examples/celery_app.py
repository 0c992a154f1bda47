"""A small Celery app wired to dlq-router: the README's Celery walk-through runs it.

Worker::

    celery -A dlq_router.examples.celery_app worker -Q example,example-quorum -c 2

Broker: ``CELERY_BROKER_URL`` (default the local RabbitMQ); results: ``CELERY_RESULT_BACKEND``
(default the local Redis, db 0). Topology: ``DLQ_ROUTER_TOPOLOGY``, else
``topologies/celery-rabbitmq.yaml`` or ``topologies/celery-redis.yaml`` by broker.
``python -m dlq_router.examples.celery_app`` sends one task of each kind and prints what
happens to them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery

from dlq_router.celery import configure

BROKER = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
_DEFAULT = "celery-redis.yaml" if BROKER.startswith("redis") else "celery-rabbitmq.yaml"
TOPOLOGY = os.environ.get("DLQ_ROUTER_TOPOLOGY") or str(TOPOLOGIES / _DEFAULT)
FIXED_FLAG = os.environ.get("EXAMPLE_FIXED_FLAG", "/tmp/dlq-router-example-fixed")

app = Celery(
    "example",
    broker=BROKER,
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    result_expires=3600,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
configure(app, TOPOLOGY)  # the one line dlq-router needs (plus its import)

F = TypeVar("F", bound=Callable[..., Any])


def task(name: str) -> Callable[[F], F]:
    """``app.task(bind=True, name=...)``, typed for mypy."""
    decorator: Callable[[F], F] = app.task(bind=True, name=name)
    return decorator


def _record(log: str | None, task: Any, event: str, **extra: Any) -> None:
    """Append one JSON line per run to ``log`` (the tests read it), if given."""
    if not log:
        return
    line = {
        "event": event,
        "task": task.name,
        "id": task.request.id,
        "attempts": task.request.get("dlq-attempts"),
        "pid": os.getpid(),
        "at": time.time(),
        **extra,
    }
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


@task("example.flaky")
def flaky(self: Any, fail_times: int = 2, log: str | None = None) -> str:
    """Fails its first ``fail_times`` runs (counted by the router's dlq-attempts header)."""
    attempts = int(self.request.get("dlq-attempts") or 0)
    _record(log, self, "run")
    if attempts < fail_times:
        raise ConnectionError(f"upstream unavailable (run {attempts + 1})")
    return f"ok after {attempts + 1} runs"


@task("example.charge")
def charge(self: Any, order: str, fixed_flag: str = FIXED_FLAG, log: str | None = None) -> str:
    """A bug: fails every time until ``fixed_flag`` exists (``touch`` it to deploy the fix)."""
    _record(log, self, "run")
    if not os.path.exists(fixed_flag):
        raise RuntimeError(f"order {order}: price is None (bug #42)")
    return f"charged {order}"


@task("example.send_email")
def send_email(self: Any, address: str, log: str | None = None) -> str:
    """A ``ValueError`` is listed as non-retryable: a bad address parks at once."""
    _record(log, self, "run")
    if "@" not in address:
        raise ValueError(f"not an email address: {address!r}")
    return f"sent to {address}"


@task("example.slow")
def slow(self: Any, seconds: float, log: str | None = None, first_run_only: bool = False) -> str:
    """Sleeps (a test SIGKILLs the pool process meanwhile); on retries too unless
    ``first_run_only``."""
    _record(log, self, "start")
    if not (first_run_only and self.request.get("dlq-attempts")):
        time.sleep(seconds)
    _record(log, self, "done")
    return "slept"


@task("example.crash")
def crash(self: Any, log: str | None = None) -> None:
    """Kills its own pool process, every time."""
    _record(log, self, "run")
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:  # pragma: no cover - the README's walk-through
    """Send one task of each kind to the first route and print their states as they change."""
    queue = os.environ.get("EXAMPLE_QUEUE") or next(
        iter(q.name for q in app.conf.task_queues if q.name.startswith("example"))
    )
    results = {
        "flaky": app.send_task("example.flaky", kwargs={"fail_times": 2}, queue=queue),
        "charge": app.send_task("example.charge", args=["A-1001"], queue=queue),
        "send_email": app.send_task("example.send_email", args=["nobody"], queue=queue),
    }
    for name, result in results.items():
        print(f"sent {name:<10} id={result.id}")
    seen: dict[str, str] = {}
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
    while time.monotonic() < deadline and len(seen) < len(results) * 2:
        for name, result in results.items():
            state = result.state
            if seen.get(name) != state:
                seen[name] = state
                print(f"{time.strftime('%H:%M:%S')}  {name:<10} {state}")
        if all(r.ready() for r in results.values()):
            break
        time.sleep(0.1)
    for name, result in results.items():
        print(f"{name:<10} {result.state}: {result.result!r}")


if __name__ == "__main__":  # pragma: no cover
    main()
