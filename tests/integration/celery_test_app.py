"""The example app as the end-to-end tests run it: no remote control on the shared brokers.

``celery -A tests.integration.celery_test_app worker ...``; broker, result backend and
topology come from ``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND`` and
``DLQ_ROUTER_TOPOLOGY`` (set by ``celery_harness.CeleryStack``).
"""

from __future__ import annotations

from dlq_router.examples.celery_app import app

app.conf.worker_enable_remote_control = False  # no pidbox queues/keys on the shared brokers

__all__ = ["app"]
