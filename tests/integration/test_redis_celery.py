"""Done-when proof: an unmodified Celery worker on Redis runs a message the router retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dlq_router.names import redis_keys
from dlq_router.topology import Topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.redis_celery_app import app
from tests.integration.test_redis_router import RouterThread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def queue(uid: str, redis_client: redis.Redis) -> Iterator[str]:
    yield uid
    # kombu's binding records for this queue and the task's result key
    redis_client.delete(f"_kombu.binding.{uid}", f"_kombu.binding_permanent.{uid}", f"proof:{uid}")


def worker(queue: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.integration.redis_celery_app", "worker",
         "-Q", queue, "--pool", "solo", "--without-mingle", "--without-gossip",
         "--without-heartbeat", "-l", "warning", "-n", f"{queue}@localhost"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_celery_worker_runs_a_retried_task(
    make_topology: TopologyFactory, queue: str, redis_client: redis.Redis
) -> None:
    topology: Topology = make_topology("redis", routes=[route_dict(queue)])
    keys = redis_keys(topology, topology.routes[0])
    result_key = f"proof:{queue}"
    app.send_task("dlq_router_proof.record", args=[result_key, "ran"], queue=queue)

    # The worker side: take the task and dead-letter it with the error it hit.
    popped = redis_client.brpop([queue], timeout=5)
    assert popped is not None, "Celery did not publish to the work list"
    envelope = json.loads(popped[1])
    task_id = envelope["headers"]["id"]
    envelope["headers"]["dlq-error-type"] = "ConnectionError"
    envelope["headers"]["dlq-error-message"] = "SMTP down"
    redis_client.lpush(keys.dlq, json.dumps(envelope))

    router = RouterThread(topology)
    proc = worker(queue)
    try:
        deadline = time.monotonic() + 45
        while redis_client.get(result_key) is None and time.monotonic() < deadline:
            assert proc.poll() is None, "the Celery worker exited"
            time.sleep(0.1)
        raw = redis_client.get(result_key)
        assert raw is not None, "the Celery worker never ran the retried task"
        assert json.loads(raw) == {"value": "ran", "attempts": 1, "id": task_id}
        assert router.sample("dlq_router_retries_moved_total", route=queue) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        router.stop()
    assert redis_client.llen(queue) == 0 and redis_client.zcard(keys.retry) == 0
