"""Celery drop-in: ``configure(app, topology)`` makes an existing Celery app dlq-router's
worker side. Five lines or fewer in the app::

    from dlq_router.celery import configure
    configure(app, "topology.yaml")

What it does (README, "Celery"):

- settings (refused with ``ImproperlyConfigured`` when the app set a contradicting value):
  ``task_acks_late=True``, ``task_acks_on_failure_or_timeout=False``,
  ``task_reject_on_worker_lost=True``, ``worker_prefetch_multiplier=1``;
- ``task_queues``: each route's work queue with exactly the arguments ``dlq-router declare``
  uses (``dlq_router.backends.rabbitmq.spec``), so the worker never gets a 406;
- at worker start: every task's Request gets the failure hand-off, its Strategy the quorum
  delivery-count check, and the pool process's result backend the RETRY/FAILURE choice.
  Queues the worker consumes that have no route are left alone (one warning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kombu import entity

from dlq_router.celery.worker import (
    _BINDINGS,
    Binding,
    DeadLetterRequest,
    binding_for,
    patch_backend,
    request_class,
    strategy,
)
from dlq_router.topology import Topology, load_topology

__all__ = ["SETTINGS", "DeadLetterRequest", "configure", "queues_for"]

log = logging.getLogger("dlq_router.celery")
Exchange: Any = entity.Exchange
Queue: Any = entity.Queue

# What configure sets, and Celery's defaults for them: a value the app set that differs
# from both is a contradiction, refused.
SETTINGS: dict[str, Any] = {
    "task_acks_late": True,  # a failure must still be in the queue when the hand-off runs
    "task_acks_on_failure_or_timeout": False,  # the hand-off acks, after the broker has it
    "task_reject_on_worker_lost": True,  # a lost message is handed off (or redelivered)
    "worker_prefetch_multiplier": 1,  # no task waits in worker memory
}
_CELERY_DEFAULTS: dict[str, Any] = {
    "task_acks_late": False,
    "task_acks_on_failure_or_timeout": True,
    "task_reject_on_worker_lost": None,
    "worker_prefetch_multiplier": 4,
}
# Celery 5.5+ split the failure/timeout ack setting; None means "as the combined one".
_SPLIT_SETTINGS = ("task_acks_on_failure", "task_acks_on_timeout")


def _improperly_configured(message: str) -> Exception:
    from celery.exceptions import ImproperlyConfigured

    error: Exception = ImproperlyConfigured(f"dlq_router.celery: {message}")
    return error


def _check_settings(conf: Any) -> list[str]:
    problems = []
    for key, wanted in SETTINGS.items():
        value = conf.get(key)
        if value != wanted and value != _CELERY_DEFAULTS[key]:
            problems.append(f"{key}={value!r} (dlq-router needs {wanted!r})")
    for key in _SPLIT_SETTINGS:
        if conf.get(key):
            problems.append(f"{key}={conf.get(key)!r} (dlq-router needs it unset or False)")
    return problems


def queues_for(app: Any, topology: Topology) -> list[Any]:
    """kombu Queues for every route's work queue, declared exactly as ``declare`` does."""
    from dlq_router.backends.rabbitmq.spec import work_queue_arguments
    from dlq_router.names import rabbit_names

    out = []
    for route in topology.routes:
        arguments = work_queue_arguments(route, rabbit_names(topology, route))
        exchange = Exchange(route.exchange, type=route.exchange_type, durable=True)
        out.append(
            Queue(
                route.queue,
                exchange,
                routing_key=route.routing_key,
                durable=True,
                queue_arguments=arguments,
            )
        )
    return out


def configure(app: Any, topology: str | Path | Topology, *, max_redeliveries: int = 5) -> Topology:
    """Make ``app`` hand every failure on a routed queue to dlq-router. Returns the topology.

    ``topology`` is a topology file or a loaded ``Topology``; the broker is the app's own
    ``broker_url`` (the file's ``url`` is the router's). ``max_redeliveries``: a message a
    quorum queue delivered more often than this (its worker died each time) goes to the
    router without running again.
    """
    from celery import signals

    loaded = topology if isinstance(topology, Topology) else load_topology(topology)
    problems = _check_settings(app.conf)
    if problems:
        raise _improperly_configured("the app's settings contradict it: " + "; ".join(problems))
    app.conf.update(SETTINGS)

    # Keep the app's own queues (and its default queue, which task_queues would replace);
    # a route's queue replaces one of the same name.
    routed = {q.name: q for q in queues_for(app, loaded)}
    existing = list(app.conf.task_queues or [])
    if not existing and app.conf.task_default_queue not in routed:
        default = app.conf.task_default_queue
        exchange = Exchange(
            app.conf.task_default_exchange or default, app.conf.task_default_exchange_type
        )
        existing = [Queue(default, exchange, app.conf.task_default_routing_key or default)]
    app.conf.task_queues = [q for q in existing if q.name not in routed] + list(routed.values())

    binding = Binding(app, loaded, max_redeliveries)
    _BINDINGS[app] = binding

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is not app:
            return
        changed = [
            f"{key}={app.conf.get(key)!r} (dlq-router needs {wanted!r})"
            for key, wanted in SETTINGS.items()
            if app.conf.get(key) != wanted
        ] + [f"{key}={app.conf.get(key)!r}" for key in _SPLIT_SETTINGS if app.conf.get(key)]
        if changed:
            # Celery's signal dispatch logs and swallows exceptions: exit instead, or the
            # worker would run with failures acked and lost.
            message = "dlq_router.celery: settings changed after configure(): " + "; ".join(changed)
            log.critical(message)
            raise SystemExit(message)
        binding.start()
        for task in app.tasks.values():
            task.Request = request_class(task)
            if not getattr(task, "_dlq_router_strategy", None):
                task._dlq_router_strategy = task.Strategy
                task.Strategy = _partial_strategy(task.Strategy)
        consumed = list(app.amqp.queues.consume_from or app.amqp.queues)
        names = {route.queue for route in loaded.routes}
        unrouted = sorted(q for q in consumed if q not in names)
        routed_here = sorted(q for q in consumed if q in names)
        log.info("dlq-router: failures on %s go to the router", ", ".join(routed_here) or "-")
        if unrouted:
            log.warning(
                "dlq-router: no route for queue(s) %s in the topology: their tasks run as "
                "Celery runs them, without broker retries",
                ", ".join(unrouted),
            )

    def on_task_prerun(sender: Any = None, **_: Any) -> None:
        if sender is not None and getattr(sender, "app", None) is app:
            patch_backend(binding, sender.backend)

    signals.worker_init.connect(on_worker_init, weak=False)
    signals.task_prerun.connect(on_task_prerun, weak=False)
    return loaded


def _partial_strategy(original: Any) -> Any:
    def wrapped(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
        return strategy(original, task, app, consumer, **kwargs)

    return wrapped


def current_binding(app: Any) -> Binding | None:
    """The configuration ``configure`` recorded for ``app`` (None if not configured)."""
    return binding_for(app)
