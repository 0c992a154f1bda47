"""Header names dlq-router reads and writes, and tolerant readers for their values.

Router-owned headers have no ``x-`` prefix: RabbitMQ reserves ``x-`` for itself, and since
3.13 it no longer updates ``x-death`` on republished messages, so attempts are counted here.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

from dlq_router import numbers

ATTEMPTS = "dlq-attempts"
RETRY_DUE_AT = "dlq-retry-due-at"  # absolute due time, ms since the epoch
RETRY_DELAY_MS = "dlq-retry-delay-ms"
RETRY_TIER = "dlq-retry-tier"  # e.g. "10s"
FIRST_FAILED_AT = "dlq-first-failed-at"
LAST_FAILED_AT = "dlq-last-failed-at"
ORIGIN_EXCHANGE = "dlq-origin-exchange"
ORIGIN_ROUTING_KEY = "dlq-origin-routing-key"
ORIGIN_QUEUE = "dlq-origin-queue"
ROUTE = "dlq-route"
ERROR_TYPE = "dlq-error-type"  # set by the worker side when it knows the exception
ERROR_MESSAGE = "dlq-error-message"
DEATH_REASON = "dlq-death-reason"  # rejected / expired / maxlen / delivery_limit
PARK_REASON = "dlq-park-reason"
PARK_DETAIL = "dlq-park-detail"
PARKED_AT = "dlq-parked-at"
ID = "dlq-id"  # stable id of a parked message
PUBLISH_ID = "dlq-publish-id"  # correlates basic.return with a publish (RabbitMQ)
# AMQP properties the router cannot republish as they were (RabbitMQ), kept as headers:
ORIGINAL_EXPIRATION = "dlq-original-expiration"  # per-message TTL would fight the tier TTL
ORIGINAL_USER_ID = "dlq-original-user-id"  # RabbitMQ refuses a user_id that is not ours

# Written by RabbitMQ when it dead-letters. Stripped before republishing: a message that
# cycles back into a queue it has passed through is dropped when the cycle has no rejection.
BROKER_DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-reason",
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-last-death-reason",
        "x-last-death-queue",
        "x-last-death-exchange",
    }
)

# Headers must fit in one AMQP frame together; long error text is cut to leave headroom.
MAX_ERROR_MESSAGE = 2048
# A parked id a producer sent that is longer than this (or not plain text) is replaced.
MAX_ID_LENGTH = 128


def as_text(value: Any) -> str | None:
    """A header value as text (AMQP long strings may arrive as bytes), or None.

    Never raises: a value that has no text (a 5,000-digit int, a list nested thousands deep)
    is shown by ``show_value``, a short, bounded rendering.
    """
    if isinstance(value, str):  # the common case first: this runs several times a message
        return value
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, list | tuple | dict | set | frozenset):
        return show_value(value)  # str() of a container recurses without bound
    try:
        return str(value)  # int, float, Decimal, datetime, bool: their usual text
    except Exception:  # an int past sys.get_int_max_str_digits(), a broken __str__
        return show_value(value)


# reprlib cuts depth, length and every element's size: a hostile value renders in
# bounded time and space (plain repr() recurses, and refuses huge ints).
_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8


def show_value(value: Any) -> str:
    """A short rendering of any header value, for logs and park details. Never raises."""
    try:
        return _repr.repr(value)
    except Exception:  # a huge int (repr refuses it), or a broken __repr__
        return f"<{type(value).__name__}>"


def read_id(value: Any) -> str | None:
    """A ``dlq-id`` as text when it looks like an id (printable ASCII, no spaces, at most
    MAX_ID_LENGTH characters), else None: a producer may put anything in the header."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", errors="replace")
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        return value
    return None


def as_ms(value: Any) -> int | None:
    """A timestamp header as integer ms (``numbers.timestamp_ms``), or None."""
    return numbers.timestamp_ms(value)


def truncate(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    marker = f"... [truncated {len(text) - limit} chars]"
    return text[: max(0, limit - len(marker))] + marker


def strip_broker_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without RabbitMQ's death headers, in the original order."""
    out = dict(headers)
    if not BROKER_DEATH_HEADERS.isdisjoint(out):
        for name in BROKER_DEATH_HEADERS:
            out.pop(name, None)
    return out
