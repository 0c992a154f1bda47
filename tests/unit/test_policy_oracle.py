"""policy.decide against its first, straightforward implementation (kept here as the
oracle): the optimised one must decide and write headers exactly the same way.

The oracle's number and id readers follow the documented rules of ``dlq_router.numbers``
(issue 10: ``"²".isdigit()`` made both versions raise, and that counted as agreement). The
policy must never raise: an exception from ``decide`` fails the test whatever the oracle
says.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from dlq_router import headers as h
from dlq_router.durations import format_duration_ms
from dlq_router.names import tier_lanes
from dlq_router.policy import Decision, Failure, Park, ParkReason, Retry, decide
from dlq_router.topology import Route

# ---- the oracle: dlq_router/headers.py and policy.py before the optimisation -----------


def as_text(value: Any) -> str | None:
    """A header value as text (AMQP long strings may arrive as bytes), or None."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return str(value)


def whole(value: Any, limit: int) -> int | None:
    """The documented number rule: an int (not bool) or decimal-digit text, 0..limit."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= limit else None
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and 0 < len(value.strip()) <= 20 and value.strip().isdecimal():
        number = int(value.strip())
        return number if number <= limit else None
    return None


def as_ms(value: Any) -> int | None:
    """A timestamp header as integer ms (up to the end of year 9999), or None."""
    return whole(value, 253_402_300_799_999)


def truncate(text: str, limit: int = h.MAX_ERROR_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    marker = f"... [truncated {len(text) - limit} chars]"
    return text[: max(0, limit - len(marker))] + marker


def strip_broker_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k not in h.BROKER_DEATH_HEADERS}


def is_non_retryable(error_type: str | None, non_retryable: list[str]) -> bool:
    """Match the full dotted name, or the bare class name against undotted entries."""
    if not error_type:
        return False
    short = error_type.rsplit(".", 1)[-1]
    return any(
        entry in (error_type, short) if "." not in entry else entry == error_type
        for entry in non_retryable
    )


def _read_attempts(value: Any) -> int | None:
    """Previous failures recorded in our header; None when the value is unusable."""
    if value is None:
        return 0
    return whole(value, 2**31 - 2)


def park_headers(
    base: Mapping[str, Any], reason: str, detail: str, now_ms: int, message_id: str
) -> dict[str, Any]:
    """Stamp why and when a message was parked (also used for transport-level parks)."""
    out = dict(base)
    out[h.PARK_REASON] = reason
    out[h.PARK_DETAIL] = truncate(detail, 512)
    out[h.PARKED_AT] = now_ms
    given = incoming_id = base.get(h.ID)
    if isinstance(given, bytes):
        incoming_id = given.decode("ascii", errors="replace")
    plausible = (
        isinstance(incoming_id, str)
        and 0 < len(incoming_id) <= 128
        and incoming_id.isascii()
        and incoming_id.isprintable()
        and " " not in incoming_id
    )
    out[h.ID] = incoming_id if plausible else message_id
    return out


def reference_decide(
    route: Route,
    failure: Failure,
    *,
    now_ms: int,
    rng: random.Random,
    message_id: str,
    continuous_jitter: bool,
) -> Decision:
    """Decide retry or park for one dead letter.

    ``continuous_jitter`` (Redis) draws any delay within +-jitter; otherwise (RabbitMQ) a
    random lane of the tier is chosen and the delay is that lane's fixed TTL.
    ``message_id`` is used as the parked id when the message has none yet.
    """
    incoming = failure.headers
    out = strip_broker_headers(incoming)
    out[h.ROUTE] = route.name
    out[h.LAST_FAILED_AT] = now_ms
    if as_ms(incoming.get(h.FIRST_FAILED_AT)) is None:
        out[h.FIRST_FAILED_AT] = now_ms
    if failure.death_reason:
        out[h.DEATH_REASON] = failure.death_reason
    error_message = as_text(incoming.get(h.ERROR_MESSAGE))
    if error_message is not None:
        out[h.ERROR_MESSAGE] = truncate(error_message)

    # Where the message goes back to: our own record first (it survives republishing),
    # then what the broker told us on the first death.
    origin_exchange = as_text(incoming.get(h.ORIGIN_EXCHANGE))
    origin_key = as_text(incoming.get(h.ORIGIN_ROUTING_KEY))
    origin_queue = as_text(incoming.get(h.ORIGIN_QUEUE))
    if origin_exchange is None or origin_key is None:
        origin_exchange, origin_key = failure.origin_exchange, failure.origin_routing_key
        origin_queue = failure.origin_queue
    if origin_exchange is not None and origin_key is not None:
        out[h.ORIGIN_EXCHANGE] = origin_exchange
        out[h.ORIGIN_ROUTING_KEY] = origin_key
        if origin_queue is not None:
            out[h.ORIGIN_QUEUE] = origin_queue

    previous = _read_attempts(incoming.get(h.ATTEMPTS))

    def park(reason: ParkReason, detail: str, attempts: int) -> Park:
        out[h.ATTEMPTS] = attempts
        return Park(attempts, reason, detail, park_headers(out, reason, detail, now_ms, message_id))

    if previous is None:
        bad = truncate(repr(incoming.get(h.ATTEMPTS)), 100)
        # Keep the bad value visible for the operator; the count restarts on replay.
        out["dlq-invalid-attempts"] = bad
        return park("invalid_header", f"{h.ATTEMPTS} is not a whole number: {bad}", 1)
    attempts = previous + 1

    error_type = as_text(incoming.get(h.ERROR_TYPE))
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


# ---- the comparison --------------------------------------------------------------------

ABSENT = object()
VALUES: dict[str, list[Any]] = {
    h.ATTEMPTS: [ABSENT, None, 0, 1, 2, 3, 7, -1, True, False, "2", " 3 ", "abc", b"1", b"x1",
                 1.5, bytearray(b"2"), "\u0663", "\u00b2", "", 2.0, 2.5, 2**31 - 2, 2**31 - 1,
                 2**63 - 1, 2**64, 10**30, "9" * 30, "+3", "-3", "3.0", "1e3", b"\xff",
                 float("inf"), float("nan"), Decimal("2"), [1], {"n": 1},
                 dt.datetime(2026, 1, 1), "\u00b2\u00b3", "\uff13"],
    h.FIRST_FAILED_AT: [ABSENT, None, 1_700_000_000_000, "1700000000000", b"17", True, "x", 1.5,
                        "\u00b2", 2**64 - 1, 253_402_300_799_999, 253_402_300_800_000, -1,
                        float("inf"), dt.datetime(2026, 1, 1)],
    h.ERROR_MESSAGE: [ABSENT, None, "SMTP down", "e" * 5000, b"bytes \xff", 42, Decimal("1.5"),
                      [1, "a"], 2.5],
    h.ERROR_TYPE: [ABSENT, None, "ValueError", "pkg.ValueError", b"ValueError", "", 7,
                   "myapp.errors.Permanent", "other.Permanent", "IOError"],
    h.ORIGIN_EXCHANGE: [ABSENT, None, "emails", b"emails", "", 5],
    h.ORIGIN_ROUTING_KEY: [ABSENT, None, "emails", b"rk", ""],
    h.ORIGIN_QUEUE: [ABSENT, None, "emails", b"q"],
    h.ID: [ABSENT, "kept-id", b"bytes-id", "", "has space", "x" * 200, 7, ["id"], "bell\x07"],
    h.PARK_REASON: [ABSENT, "max_attempts"],
    h.PARKED_AT: [ABSENT, 1],
    h.RETRY_TIER: [ABSENT, "10s"],
    "x-death": [ABSENT, [{"count": 1, "queue": "emails"}]],
    "x-first-death-reason": [ABSENT, "rejected"],
    "x-last-death-queue": [ABSENT, "emails.dlq"],
    "task": [ABSENT, "tasks.send"],
    "retries": [ABSENT, 0],
}  # fmt: skip
ROUTES = [
    {"delays": [200, 400, 800], "max_attempts": 4},
    {"delays": [1000], "max_attempts": 1},
    {"delays": [250, 10_000, 90_000, 3_600_000], "max_attempts": 9, "jitter": 0.2},
    {"delays": [1500, 60_000], "max_attempts": 3, "jitter": 0.1, "jitter_lanes": 5},
]
NON_RETRYABLE = [[], ["ValueError", "myapp.errors.Permanent"]]


def make_route(i: int) -> Route:
    return Route.model_validate(
        {
            "name": f"r{i}",
            "exchange": "emails",
            "retry": ROUTES[i % len(ROUTES)],
            "non_retryable": NON_RETRYABLE[i // len(ROUTES) % 2],
        }
    )


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """Everything a decision says, header order included. Raising is a failure, never an
    outcome two versions could agree on."""
    d = fn(*args, **kwargs)
    if isinstance(d, Retry):
        return (
            "retry",
            d.attempts,
            d.tier,
            d.lane,
            d.delay_ms,
            d.due_at_ms,
            list(d.headers.items()),
        )
    assert isinstance(d, Park)
    return ("park", d.attempts, d.reason, d.detail, list(d.headers.items()))


@pytest.mark.parametrize("seed", range(8))
def test_decide_matches_the_reference_implementation(seed: int) -> None:
    rng = random.Random(seed)
    routes = [make_route(i) for i in range(2 * len(ROUTES))]
    seen: set[str] = set()
    for n in range(1500):
        headers: dict[str, Any] = {}
        names = list(VALUES)
        rng.shuffle(names)  # header order must survive as it came
        for name in names:
            value = rng.choice(VALUES[name])
            if value is not ABSENT:
                headers[name] = value
        failure = Failure(
            headers=headers,
            origin_exchange=rng.choice([None, "", "emails"]),
            origin_routing_key=rng.choice([None, "emails"]),
            origin_queue=rng.choice([None, "emails.q"]),
            death_reason=rng.choice([None, "", "rejected", "expired"]),
        )
        route = rng.choice(routes)
        kwargs = {
            "now_ms": 1_800_000_000_000 + n,
            "message_id": f"id-{n}",
            "continuous_jitter": rng.random() < 0.5,
        }
        before = list(headers.items())
        draw = rng.random()
        new = outcome(decide, route, failure, rng=random.Random(draw), **kwargs)
        old = outcome(reference_decide, route, failure, rng=random.Random(draw), **kwargs)
        assert new == old, (headers, failure, kwargs)
        assert list(headers.items()) == before  # the input is never mutated
        seen.add(str(new[2]) if new[0] == "park" else new[0])
    # the generator reaches every branch
    assert {"retry", "max_attempts", "non_retryable", "no_origin", "invalid_header"} <= seen
