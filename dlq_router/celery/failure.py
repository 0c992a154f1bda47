"""What the worker side writes on a failed task, and what the router will do with it.

Pure code (no broker, no Celery import): the Celery hooks in ``dlq_router.celery.worker``
build the dead letter's headers here and ask the policy whether the router will park it,
so the result state stored for the task (RETRY or FAILURE) matches what happens next.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dlq_router import headers as h
from dlq_router import policy
from dlq_router.topology import Route

# The last lines of the traceback, cut to leave the header table room in one AMQP frame.
TRACEBACK = "dlq-error-traceback"
MAX_TRACEBACK = 4096

# Quorum queues count deliveries in this header. It describes one delivery only, so it is
# never forwarded: a stale count would come back with the retry as if the broker had set it.
DELIVERY_COUNT = "x-delivery-count"


def error_type(exc: BaseException) -> str:
    """Dotted class name (``myapp.errors.PermanentError``); builtins stay bare (``ValueError``).

    Celery hands the worker's parent an ``UnpickleableExceptionWrapper`` when an exception
    could not be pickled; its recorded module and class name are used then.
    """
    module = getattr(exc, "exc_module", None)
    name = getattr(exc, "exc_cls_name", None)
    if not (isinstance(module, str) and isinstance(name, str)):
        module, name = type(exc).__module__, type(exc).__qualname__
    return name if module in ("builtins", "exceptions", "") else f"{module}.{name}"


def error_message(exc: BaseException) -> str:
    message = getattr(exc, "exc_message", None)
    if isinstance(message, tuple | list):
        return h.truncate(" ".join(str(part) for part in message))
    try:
        return h.truncate(str(exc))
    except Exception:  # a broken __str__ must not stop the hand-off
        return h.truncate(repr(type(exc)))


def truncate_traceback(text: str, limit: int = MAX_TRACEBACK) -> str:
    """Keep the end of a traceback: the raising frame and the exception are at the bottom."""
    if len(text) <= limit:
        return text
    marker = f"[... {len(text) - limit} chars cut] "
    return marker + text[len(text) - (limit - len(marker)) :]


def dead_letter_headers(
    incoming: Mapping[str, Any],
    exc: BaseException,
    traceback: str | None,
    *,
    origin: tuple[str, str] | None,
    queue: str,
) -> dict[str, Any]:
    """The headers a failed message carries to the route's dead-letter entry.

    Every header it arrived with is kept (the ``dlq-*`` ones count its attempts, Celery's
    ``id``/``task`` name it), except the broker's per-delivery count. ``origin`` is the
    delivery's (exchange, routing key) on RabbitMQ, recorded only if not already present
    (the first one wins, as in the README's worker contract); None on Redis, where the
    router takes the origin from kombu's envelope.
    """
    out = {k: v for k, v in incoming.items() if k != DELIVERY_COUNT}
    out[h.ERROR_TYPE] = error_type(exc)
    out[h.ERROR_MESSAGE] = error_message(exc)
    if traceback:
        out[TRACEBACK] = truncate_traceback(traceback)
    else:
        out.pop(TRACEBACK, None)
    if origin is not None and (h.ORIGIN_EXCHANGE not in out or h.ORIGIN_ROUTING_KEY not in out):
        out[h.ORIGIN_EXCHANGE], out[h.ORIGIN_ROUTING_KEY] = origin
        out[h.ORIGIN_QUEUE] = queue
    return out


def will_park(route: Route, dead_letter: Mapping[str, Any], queue: str) -> bool:
    """Whether the router will park this dead letter (rather than schedule a retry).

    Runs the router's own policy on the headers the worker is about to send, with the
    work queue as origin (the router knows it from x-death or kombu's envelope).
    """
    decision = policy.decide(
        route,
        policy.Failure(
            headers=dead_letter,
            origin_exchange=route.exchange,
            origin_routing_key=route.routing_key,
            origin_queue=queue,
        ),
        now_ms=0,
        rng=random.Random(0),
        message_id="-",
        continuous_jitter=True,
    )
    return isinstance(decision, policy.Park)


def redeliveries(headers: Mapping[str, Any], redelivered: bool) -> int:
    """How often a quorum queue has delivered this message before (0 when unknown).

    Only a redelivered message's count is the broker's: a first delivery carries none.
    """
    if not redelivered:
        return 0
    value = headers.get(DELIVERY_COUNT)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


@dataclass(frozen=True)
class RouteMatch:
    """Which route a delivery belongs to, by the (exchange, routing key) it arrived with."""

    by_key: Mapping[tuple[str, str], Route]
    by_exchange: Mapping[str, Route]  # fanout work exchanges: any routing key

    def find(self, exchange: Any, routing_key: Any) -> Route | None:
        ex = exchange if isinstance(exchange, str) else ""
        key = routing_key if isinstance(routing_key, str) else ""
        route = self.by_key.get((ex, key))
        if route is None and ex:
            route = self.by_exchange.get(ex)
        return route
