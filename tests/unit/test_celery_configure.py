"""``configure`` on a Celery app object (no broker needed): settings, queues, start-up."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Celery, signals
from celery.exceptions import ImproperlyConfigured

from dlq_router.backends.rabbitmq.spec import work_queue_arguments
from dlq_router.celery import SETTINGS, DeadLetterRequest, configure
from dlq_router.names import rabbit_names
from dlq_router.topology import Topology, parse_topology


def topology() -> Topology:
    route = {"retry": {"delays": ["1s"], "max_attempts": 2}}
    return parse_topology(
        {
            "routes": [
                {"name": "emails", "exchange": "emails", **route},
                {"name": "reports", "queue_type": "quorum", **route},
            ]
        }
    )


def app(**conf: Any) -> Celery:
    a = Celery("t", broker="amqp://guest:guest@127.0.0.1:5672//", set_as_current=False)
    a.conf.update(conf)
    return a


def test_settings_and_queues() -> None:
    a = app(task_queues=None)
    topo = topology()
    configure(a, topo)
    for key, value in SETTINGS.items():
        assert a.conf[key] == value
    queues = {q.name: q for q in a.conf.task_queues}
    assert set(queues) == {"celery", "emails", "reports"}  # the default queue is kept
    for route in topo.routes:
        wanted = work_queue_arguments(route, rabbit_names(topo, route))
        assert queues[route.queue].queue_arguments == wanted
    assert queues["reports"].queue_arguments["x-queue-type"] == "quorum"
    assert queues["emails"].exchange.name == "emails"


@pytest.mark.parametrize(
    "conf",
    [
        {"worker_prefetch_multiplier": 8},
        {"task_acks_on_failure_or_timeout": None, "task_acks_on_failure": True},
        {"task_reject_on_worker_lost": False},
    ],
)
def test_contradicting_settings_are_refused(conf: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured, match="contradict"):
        configure(app(**conf), topology())


def test_worker_start_patches_tasks_and_warns_once_about_unrouted_queues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = app()
    configure(a, topology())

    @a.task(name="t.work")
    def work() -> None: ...

    a.amqp.queues.select(["emails", "other"])

    class Worker:
        app = a

    with caplog.at_level(logging.INFO, logger="dlq_router.celery"):
        signals.worker_init.send(sender=Worker())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "other" in warnings[0] and "emails" not in warnings[0]
    task = a.tasks["t.work"]
    assert issubclass(task.Request, DeadLetterRequest)
    assert callable(task.Strategy)


def test_settings_changed_after_configure_stop_the_worker() -> None:
    a = app()
    configure(a, topology())
    a.conf.worker_prefetch_multiplier = 4

    class Worker:
        app = a

    # Celery's signal dispatch swallows exceptions: the handler exits the worker instead.
    with pytest.raises(SystemExit, match="worker_prefetch_multiplier=4"):
        signals.worker_init.send(sender=Worker())
