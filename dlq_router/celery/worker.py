"""The worker-side hooks ``configure`` installs: which route a delivery belongs to, the
failure hand-off in the worker's main process, and the result state in the pool process.

Flow of a failed task on a routed queue (prefork pool):

1. pool process: the task raises; Celery's tracer stores the result. The backend's
   ``mark_as_failure`` is wrapped (``patch_backend``): when the router will retry, it
   stores RETRY instead of FAILURE and skips errbacks and chord handling, which belong
   to the final failure.
2. main process: ``DeadLetterRequest.on_failure`` builds the dead letter's headers,
   hands the message off (RabbitMQ: confirmed publish to the DLX; Redis: LPUSH to the
   dead-letter list), sends ``task-retried`` or ``task-failed``, then acks.
   If the hand-off fails the message is requeued: it runs again rather than get lost.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from billiard.exceptions import Terminated, WorkerLostError
from celery import states
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.imports import symbol_by_name
from celery.worker.state import task_ready

from dlq_router.celery import failure
from dlq_router.celery.handoff import HandOff, RabbitHandOff, RedisHandOff
from dlq_router.names import rabbit_names, redis_keys
from dlq_router.topology import Route, Topology

log = logging.getLogger("dlq_router.celery")

# Celery's control flow, not failures: these keep Celery's own meaning.
_CELERY_FLOW = (Ignore, Retry, Terminated, MemoryError)


@dataclass
class Binding:
    """One configured app: its topology, its routes by delivery, and its hand-off."""

    app: Any
    topology: Topology
    max_redeliveries: int
    kind: str = ""  # "rabbitmq" or "redis", from the app's broker transport
    match: failure.RouteMatch | None = None
    handoff: HandOff | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """At worker start: broker kind, route table, hand-off (the app is configured now)."""
        with self.app.connection_for_write() as conn:
            driver = conn.transport.driver_type
        self.kind = "redis" if driver == "redis" else "rabbitmq"
        self.match = build_match(self.app, self.topology)
        if self.handoff is not None:
            self.handoff.close()
        self.handoff = None

    def route_of(self, delivery_info: Mapping[str, Any] | None) -> Route | None:
        if self.match is None:
            self.start()
        assert self.match is not None
        info = delivery_info or {}
        return self.match.find(info.get("exchange"), info.get("routing_key"))

    def dead_letter_target(self, route: Route) -> str:
        if self.kind == "redis":
            return redis_keys(self.topology, route).dlq
        return rabbit_names(self.topology, route).dlx

    def hand_off(self, message: Any, route: Route, headers: dict[str, Any]) -> None:
        with self.lock:
            if self.handoff is None:
                self.handoff = (
                    RedisHandOff(self.app) if self.kind == "redis" else RabbitHandOff(self.app)
                )
            handoff = self.handoff
        handoff.send(message, self.dead_letter_target(route), headers)

    def origin(self, delivery_info: Mapping[str, Any]) -> tuple[str, str] | None:
        if self.kind == "redis":
            return None
        return (
            str(delivery_info.get("exchange") or ""),
            str(delivery_info.get("routing_key") or ""),
        )


_BINDINGS: weakref.WeakKeyDictionary[Any, Binding] = weakref.WeakKeyDictionary()


def binding_for(app: Any) -> Binding | None:
    return _BINDINGS.get(app)


def build_match(app: Any, topology: Topology) -> failure.RouteMatch:
    """(exchange, routing key) pairs a route's messages arrive with.

    Celery publishes with the kombu Queue's exchange and key (Celery puts its default
    exchange in place of ``""``), a retry comes back from a tier via the route's work
    exchange and key, and a replay to the default exchange uses the queue name.
    """
    by_key: dict[tuple[str, str], Route] = {}
    by_exchange: dict[str, Route] = {}
    queues = app.amqp.queues
    for route in topology.routes:
        pairs = [(route.exchange, route.routing_key), ("", route.queue)]
        queue = queues.get(route.queue)
        if queue is not None and queue.exchange is not None:
            pairs.append((queue.exchange.name or "", queue.routing_key or ""))
        for pair in pairs:
            by_key.setdefault(pair, route)
        if route.exchange and route.exchange_type == "fanout":
            by_exchange.setdefault(route.exchange, route)
    return failure.RouteMatch(by_key, by_exchange)


def _unwrap(exc: BaseException) -> BaseException:
    if isinstance(exc, ExceptionWithTraceback):
        return exc.exc  # type: ignore[no-any-return]
    return exc


def _store_state(
    task: Any, task_id: str, exc: BaseException, tb: str | None, request: Any, park: bool
) -> None:
    """Store FAILURE (errbacks, chords: the final failure) or RETRY (the router retries)."""
    store = not task.ignore_result or task.store_errors_even_if_ignored
    if park:
        task.backend.mark_as_failure(task_id, exc, tb, request=request, store_result=store)
    elif store:
        task.backend.mark_as_retry(task_id, exc, tb, request=request)


class DeadLetterRequest:
    """Mixed in front of each task's Request class (``configure`` does it at worker start)."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        req: Any = self
        binding = binding_for(req._app or req.task.app)
        route = binding.route_of(req.delivery_info) if binding is not None else None
        exc = _unwrap(exc_info.exception)
        if (
            binding is None
            or route is None
            or isinstance(exc, _CELERY_FLOW)
            or (isinstance(exc, Reject) and exc.requeue)
        ):
            return super().on_failure(exc_info, send_failed_event, return_ok)  # type: ignore[misc]
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            if req._already_cancelled or req._already_revoked:
                return None  # killed on purpose (revoke): leave it unacked, as Celery does
            exc_info = req._worker_lost_info(exc)
            exc = _unwrap(exc_info.exception)
        worker_lost = isinstance(exc, WorkerLostError)
        if worker_lost and getattr(req, "_success_was_stored", lambda: False)():
            # Stored SUCCESS, then the pool process died: Celery acks it as done.
            return super().on_failure(exc_info, send_failed_event, return_ok)  # type: ignore[misc]
        task_ready(req)
        message = req.message
        tb = exc_info.traceback if isinstance(exc_info.traceback, str) else None
        headers = failure.dead_letter_headers(
            message.headers or {},
            exc,
            tb,
            origin=binding.origin(message.delivery_info or {}),
            queue=route.queue,
        )
        park = failure.will_park(route, headers, route.queue)
        try:
            binding.hand_off(message, route, headers)
        except Exception as handoff_error:
            log.error(
                "dlq-router: could not hand %s[%s] to %s (%r); requeued, it will run again",
                req.name, req.id, binding.dead_letter_target(route), handoff_error,
            )  # fmt: skip
            req.reject(requeue=True)
            return None
        req._dlq_router_handed_off = True
        # The pool process stored the state of an ordinary failure already (patch_backend);
        # a lost pool process, a Reject or a failure outside the task could not.
        if worker_lost or isinstance(exc, Reject) or not return_ok:
            _store_state(req.task, req.id, exc, tb, req._context, park)
        log.log(
            logging.WARNING if park else logging.INFO,
            "dlq-router: task %s[%s] failed (%s); %s",
            req.name, req.id, headers["dlq-error-type"],
            "the router parks it" if park else "the router retries it",
        )  # fmt: skip
        if park:
            req.send_event("task-failed", exception=repr(exc), traceback=tb or "")
        else:
            req.send_event("task-retried", exception=repr(exc), traceback=tb or "")
        req.acknowledge()
        return None

    def on_timeout(self, soft: bool, timeout: float) -> Any:
        """A hard time limit reaches ``on_failure`` first (billiard), which hands the
        message off and acks it; Celery's own handling would then store FAILURE over the
        RETRY and reject again, so it is skipped for a message handed off."""
        req: Any = self
        if not soft and getattr(req, "_dlq_router_handed_off", False):
            log.error(
                "Hard time limit (%ss) exceeded for %s[%s]; handed to the router",
                timeout, req.name, req.id,
            )  # fmt: skip
            return None
        return super().on_timeout(soft, timeout)  # type: ignore[misc]


def request_class(task: Any) -> type:
    base = symbol_by_name(task.Request)
    if issubclass(base, DeadLetterRequest):
        return base  # type: ignore[no-any-return]
    return type(f"DeadLetter{base.__name__}", (DeadLetterRequest, base), {})


def strategy(
    original: Any, task: Any, app: Any, consumer: Any, **kwargs: Any
) -> Callable[..., Any]:
    """Celery's strategy, behind a check of the quorum queue's delivery count.

    A message the broker has delivered more than ``max_redeliveries`` times (the worker
    died each time before it could ack) goes to the router without running again, as a
    ``WorkerLostError`` failure: counted there as one attempt, retried on the tiers or
    parked. Only quorum queues count deliveries; classic queues and Redis do not.
    """
    handler = symbol_by_name(original)(task, app, consumer, **kwargs)
    binding = binding_for(app)

    def on_message(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
    ) -> Any:
        if binding is not None:
            info = message.delivery_info or {}
            route = binding.route_of(info)
            if route is not None:
                headers = message.headers or {}
                count = failure.redeliveries(headers, bool(info.get("redelivered")))
                if count > binding.max_redeliveries:
                    return _give_up(binding, task, route, message, count, ack, reject)
        return handler(message, body, ack, reject, callbacks, **kw)

    return on_message


def _give_up(
    binding: Binding, task: Any, route: Route, message: Any, count: int, ack: Any, reject: Any
) -> None:
    headers_in = message.headers or {}
    task_id = str(headers_in.get("id") or "")
    try:
        raise WorkerLostError(
            f"delivered {count + 1} times without finishing (the worker died each time)"
        )
    except WorkerLostError:
        einfo = ExceptionInfo()
    exc = einfo.exception
    headers = failure.dead_letter_headers(
        headers_in, exc, None, origin=binding.origin(message.delivery_info or {}), queue=route.queue
    )
    park = failure.will_park(route, headers, route.queue)
    try:
        binding.hand_off(message, route, headers)
    except Exception as handoff_error:
        log.error(
            "dlq-router: could not hand %s[%s] off (%r); requeued",
            task.name,
            task_id,
            handoff_error,
        )
        reject(log, (), requeue=True)
        return
    if task_id:
        _store_state(task, task_id, exc, None, None, park)
    log.warning(
        "dlq-router: task %s[%s] was delivered %d times without finishing; handed to the router",
        task.name, task_id, count + 1,
    )  # fmt: skip
    ack(log, ())


def patch_backend(binding: Binding, backend: Any) -> None:
    """Wrap ``backend.mark_as_failure`` (once per backend object) in the pool process."""
    if getattr(backend, "_dlq_router_patched", False):
        return
    original = backend.mark_as_failure

    @functools.wraps(original)
    def mark_as_failure(
        task_id: str,
        exc: BaseException,
        traceback: Any = None,
        request: Any = None,
        store_result: bool = True,
        call_errbacks: bool = True,
        state: str = states.FAILURE,
    ) -> Any:
        route = None
        if (
            request is not None
            and state == states.FAILURE
            and not isinstance(exc, (*_CELERY_FLOW, Reject, WorkerLostError))
        ):
            route = binding.route_of(getattr(request, "delivery_info", None))
        if route is not None:
            headers = dict(getattr(request, "__dict__", {}))
            dead_letter = failure.dead_letter_headers(
                headers, exc, None, origin=None, queue=route.queue
            )
            if not failure.will_park(route, dead_letter, route.queue):
                if store_result:
                    return backend.mark_as_retry(task_id, exc, traceback, request=request)
                return None
        return original(
            task_id, exc, traceback, request=request, store_result=store_result,
            call_errbacks=call_errbacks, state=state,
        )  # fmt: skip

    backend.mark_as_failure = mark_as_failure
    backend._dlq_router_patched = True
