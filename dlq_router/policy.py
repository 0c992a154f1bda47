"""What happens to a dead letter: retry on which tier and when, or park and why.

Pure code: no broker, no clock, no global random. Backends describe a dead letter as a
``Failure``, call ``decide``, then publish ``Retry.headers``/``Park.headers`` unchanged.

Attempts count failures. After failure n (n = 1, 2, ...): if n >= max_attempts the message
is parked; otherwise it waits ``delays[min(n, len(delays)) - 1]`` (the last tier repeats).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dlq_router import headers as h
from dlq_router import numbers
from dlq_router.durations import format_duration_ms
from dlq_router.names import tier_lanes
from dlq_router.topology import Route

ParkReason = Literal[
    "max_attempts",  # attempts exhausted
    "non_retryable",  # the error type is listed in the route's non_retryable
    "no_origin",  # nothing says where the message came from, so it cannot go back
    "invalid_header",  # a router header holds a value of the wrong type
    "unroutable",  # the retry tier did not accept it (deleted queue, say)
    "malformed",  # the transport envelope itself could not be read (Redis)
    "oversized",  # its headers plus ours do not fit one AMQP frame (RabbitMQ)
    "router_error",  # the router failed on this message (a bug); the error text is the detail
]
PARK_REASONS: tuple[str, ...] = ParkReason.__args__  # type: ignore[attr-defined]


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field, per message
class Failure:
    """One dead letter as the backend saw it. ``origin_*`` come from the broker, if known."""

    headers: Mapping[str, Any]
    origin_exchange: str | None = None
    origin_routing_key: str | None = None
    origin_queue: str | None = None
    death_reason: str | None = None


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field, per message
class Retry:
    attempts: int
    tier: int
    lane: int
    delay_ms: int
    due_at_ms: int
    headers: dict[str, Any] = field(repr=False)


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field, per message
class Park:
    attempts: int
    reason: ParkReason
    detail: str
    headers: dict[str, Any] = field(repr=False)


Decision = Retry | Park


def is_non_retryable(error_type: str | None, non_retryable: list[str]) -> bool:
    """Match the full dotted name, or the bare class name against undotted entries."""
    if not error_type or not non_retryable:
        return False
    short = error_type.rsplit(".", 1)[-1]
    return any(
        entry in (error_type, short) if "." not in entry else entry == error_type
        for entry in non_retryable
    )


def park_headers(
    base: Mapping[str, Any], reason: str, detail: str, now_ms: int, message_id: str
) -> dict[str, Any]:
    """Stamp why and when a message was parked (also used for transport-level parks)."""
    out = dict(base)
    out[h.PARK_REASON] = reason
    out[h.PARK_DETAIL] = h.truncate(detail, 512)
    out[h.PARKED_AT] = now_ms
    # A parked message keeps its id across replays; one that is not a plausible id
    # (a list, 10 KB of text, control characters) gets ``message_id``.
    out[h.ID] = h.read_id(base.get(h.ID)) or message_id
    return out


def decide(
    route: Route,
    failure: Failure,
    *,
    now_ms: int,
    rng: random.Random,
    message_id: str | Callable[[], str],
    continuous_jitter: bool,
) -> Decision:
    """Decide retry or park for one dead letter.

    ``continuous_jitter`` (Redis) draws any delay within +-jitter; otherwise (RabbitMQ) a
    random lane of the tier is chosen and the delay is that lane's fixed TTL.
    ``message_id`` is used as the parked id when the message has none yet (a callable is
    called only then: the RabbitMQ router passes its id generator, as most dead letters
    are retried).
    """
    incoming = failure.headers
    get = incoming.get
    out = h.strip_broker_headers(incoming)
    out[h.ROUTE] = route.name
    out[h.LAST_FAILED_AT] = now_ms
    if h.as_ms(get(h.FIRST_FAILED_AT)) is None:
        out[h.FIRST_FAILED_AT] = now_ms
    if failure.death_reason:
        out[h.DEATH_REASON] = failure.death_reason
    error_message = h.as_text(get(h.ERROR_MESSAGE))
    if error_message is not None:
        out[h.ERROR_MESSAGE] = h.truncate(error_message)

    # Where the message goes back to: our own record first (it survives republishing),
    # then what the broker told us on the first death.
    origin_exchange = h.as_text(get(h.ORIGIN_EXCHANGE))
    origin_key = h.as_text(get(h.ORIGIN_ROUTING_KEY))
    if origin_exchange is None or origin_key is None:
        origin_exchange, origin_key = failure.origin_exchange, failure.origin_routing_key
        origin_queue = failure.origin_queue
    else:
        origin_queue = h.as_text(get(h.ORIGIN_QUEUE))
    if origin_exchange is not None and origin_key is not None:
        out[h.ORIGIN_EXCHANGE] = origin_exchange
        out[h.ORIGIN_ROUTING_KEY] = origin_key
        if origin_queue is not None:
            out[h.ORIGIN_QUEUE] = origin_queue

    raw_attempts = get(h.ATTEMPTS)
    previous = 0 if raw_attempts is None else numbers.attempts(raw_attempts)

    def park(reason: ParkReason, detail: str, attempts: int) -> Park:
        out[h.ATTEMPTS] = attempts
        new_id = message_id if isinstance(message_id, str) else message_id()
        return Park(attempts, reason, detail, park_headers(out, reason, detail, now_ms, new_id))

    if previous is None:
        bad = h.truncate(h.show_value(raw_attempts), 100)
        # Keep the bad value visible for the operator; the count restarts on replay.
        out["dlq-invalid-attempts"] = bad
        return park("invalid_header", f"{h.ATTEMPTS} is not a whole number: {bad}", 1)
    attempts = previous + 1

    error_type = h.as_text(get(h.ERROR_TYPE))
    if is_non_retryable(error_type, route.non_retryable):
        return park("non_retryable", f"{error_type} is listed as non-retryable", attempts)
    if h.ORIGIN_EXCHANGE not in out:
        return park(
            "no_origin", "no dlq-origin-* or x-death header says where it came from", attempts
        )
    if attempts >= route.retry.max_attempts:
        return park(
            "max_attempts", f"failed {attempts} of {route.retry.max_attempts} attempts", attempts
        )

    tier = min(attempts, len(route.retry.delays)) - 1
    if continuous_jitter:
        lane = 0
        jitter = route.retry.jitter
        delay = round(route.retry.delays[tier] * (1 + rng.uniform(-jitter, jitter)))
    else:
        ttls = tier_lanes(route.retry, tier)
        lane = rng.randrange(len(ttls))
        delay = ttls[lane]
    delay = max(1, delay)
    out[h.ATTEMPTS] = attempts
    out[h.RETRY_TIER] = format_duration_ms(route.retry.delays[tier])
    out[h.RETRY_DELAY_MS] = delay
    out[h.RETRY_DUE_AT] = now_ms + delay
    for stale in (h.PARK_REASON, h.PARK_DETAIL, h.PARKED_AT):
        out.pop(stale, None)
    return Retry(attempts, tier, lane, delay, now_ms + delay, out)


def reset_for_replay(headers: Mapping[str, Any], *, keep_attempts: bool) -> dict[str, Any]:
    """Headers of a parked message as it goes back to work (``dlq-router replay``)."""
    out = h.strip_broker_headers(headers)
    for key in (
        h.PARK_REASON,
        h.PARK_DETAIL,
        h.PARKED_AT,
        h.RETRY_DUE_AT,
        h.RETRY_DELAY_MS,
        h.RETRY_TIER,
        h.PUBLISH_ID,
        "dlq-invalid-attempts",
    ):
        out.pop(key, None)
    if not keep_attempts:
        out.pop(h.ATTEMPTS, None)
    return out
