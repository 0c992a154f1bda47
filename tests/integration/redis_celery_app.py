"""A tiny Celery app for the Celery-on-Redis proof: one task that records that it ran.

Started as ``celery -A tests.integration.redis_celery_app worker -Q <queue> --pool solo``;
the broker is ``DLQ_ROUTER_TEST_BROKER`` (the shared Redis by default).
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

BROKER = os.environ.get("DLQ_ROUTER_TEST_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("dlq_router_proof", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    worker_enable_remote_control=False,  # no pidbox keys on the shared Redis
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


@app.task(bind=True, name="dlq_router_proof.record")
def record(self: Any, key: str, value: str) -> None:
    """Write what this run saw to ``key``: the value and the router's attempt count."""
    seen = {"value": value, "attempts": self.request.get("dlq-attempts"), "id": self.request.id}
    with redis.Redis.from_url(BROKER) as client:
        client.set(key, json.dumps(seen), ex=600)
