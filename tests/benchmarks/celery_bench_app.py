"""The Celery app every contender of ``bench_celery.py`` runs: one task, the same code for all.

Started by the benchmark as ``celery -A tests.benchmarks.celery_bench_app worker ...``; the
contender is described by ``BENCH_*`` environment variables (a ``celery -A`` subprocess has no
other way in), read once in :func:`build_app`:

| variable | meaning |
|---|---|
| ``BENCH_BROKER`` | broker URL (``amqp://.../<vhost>`` or ``redis://...``) |
| ``BENCH_QUEUE`` | the work queue (unique per contender and run) |
| ``BENCH_MODE`` | ``retry``: ``self.retry(countdown=...)``; ``native``: the same on a quorum |
|   | queue (Celery's native delayed delivery); ``dlq``: ``dlq_router.celery.configure`` |
| ``BENCH_BACKOFF`` | countdowns in seconds per retry, comma separated; the last repeats |
| ``BENCH_TRACK`` | Redis URL where every run is counted |
| ``BENCH_TRACK_KEY`` | key prefix of the counters (``<key>:runs``, ``<key>:done``) |
| ``BENCH_VISIBILITY_TIMEOUT`` | kombu Redis ``visibility_timeout`` in seconds (optional) |
| ``BENCH_TOPOLOGY`` | topology file for ``dlq`` mode |

The task decides whether to fail from a counter in Redis (``HINCRBY <key>:runs <task key>``),
never from the retry machinery's own bookkeeping, so every contender is judged by the same
count: a task that fails twice and then succeeds must have a count of exactly 3.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue

from dlq_router.topology import load_topology


class Transient(Exception):
    """The failure every benchmark task raises until its run count passes ``fails``."""


def build_app(env: Mapping[str, str]) -> Celery:
    """The app as the worker runs it; the benchmark builds the same one to publish with."""
    mode = env.get("BENCH_MODE", "retry")
    broker = env.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
    queue = env.get("BENCH_QUEUE", "bench_celery_default")
    app = Celery("bench_celery", broker=broker)
    app.conf.update(
        task_ignore_result=True,
        worker_enable_remote_control=False,  # no pidbox queues/keys on the shared brokers
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # The worker-side practice the README asks for, the same for every contender.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
    )
    if broker.startswith("redis"):
        # Own unacked bookkeeping keys: kombu's defaults are global names on a shared Redis.
        options: dict[str, Any] = {
            "unacked_key": f"{queue}.unacked",
            "unacked_index_key": f"{queue}.unacked_index",
            "unacked_mutex_key": f"{queue}.unacked_mutex",
        }
        vt = env.get("BENCH_VISIBILITY_TIMEOUT")
        if vt:
            # Sweep for "lost" messages every second, so a short timeout shows its effect
            # within the benchmark's window (kombu's default sweep is every ~100 s).
            options.update(
                visibility_timeout=float(vt), unacked_restore_interval=1, unacked_restore_throttle=1
            )
        app.conf.broker_transport_options = options
    if mode == "native":
        # Native delayed delivery is switched on by a quorum queue; it needs a topic (or
        # fanout) exchange: countdowns on a direct exchange stay in worker memory.
        exchange = Exchange(queue, type="topic")
        app.conf.task_queues = [
            Queue(queue, exchange, routing_key=queue, queue_arguments={"x-queue-type": "quorum"})
        ]
        app.conf.task_default_exchange_type = "topic"
        app.conf.broker_transport_options = {"confirm_publish": True}
    if mode == "dlq":
        from dlq_router.celery import configure  # only this contender needs the drop-in

        configure(app, load_topology(env["BENCH_TOPOLOGY"]))
    return app


app = build_app(os.environ)
MODE = os.environ.get("BENCH_MODE", "retry")
BACKOFF = [float(s) for s in os.environ.get("BENCH_BACKOFF", "600").split(",")]
TRACK = redis.Redis.from_url(os.environ.get("BENCH_TRACK", "redis://127.0.0.1:6379/0"))
TRACK_KEY = os.environ.get("BENCH_TRACK_KEY", "bench_celery:default")


@app.task(bind=True, name="bench_celery.work")
def work(self: Any, key: str, fails: int) -> None:
    """Count this run; fail ``fails`` times, then succeed."""
    runs = int(TRACK.hincrby(f"{TRACK_KEY}:runs", key, 1))
    if runs <= fails:
        exc = Transient(f"{key}: run {runs} of {fails + 1}")
        if MODE == "dlq":
            raise exc  # the drop-in dead-letters it; the broker holds the wait
        countdown = BACKOFF[min(self.request.retries, len(BACKOFF) - 1)]
        raise self.retry(exc=exc, countdown=countdown, max_retries=None)
    TRACK.hincrby(f"{TRACK_KEY}:done", key.split("-", 1)[0], 1)
