"""Numbers from outside: every header and envelope number is read here, once, per kind.

A producer can put any value in a header or an envelope: a float, a bool, ``"²"`` (``isdigit``
is true, ``int`` refuses it), 2^63-1, ``1e400`` (an infinite float), NaN, a 5,000-digit
string (``int`` refuses more than 4,300 digits), a list, a datetime. Each reader below takes
any Python value and returns a number in its documented range, or ``None`` when the value is
unusable. None of them raises.

The rule for a whole number (attempts, timestamps, sequence numbers):

- an ``int`` (``bool`` excluded: ``True`` is not one attempt), or text / bytes holding only
  decimal digits (``str.isdecimal``: ASCII or another script's digits, never ``"²"``),
  surrounding whitespace allowed;
- within the kind's range;
- anything else is unusable: a ``float`` (even ``2.0``: the README promises a float is
  ``invalid_header``, never rounded), ``Decimal``, negative numbers, signs, exponents, NaN,
  infinity, containers, dates.
"""

from __future__ import annotations

import math
from typing import Any

# A count of failures: attempts + 1 still fits a signed 32-bit integer (AMQP ``I``, Lua,
# JavaScript workers), far past any sensible max_attempts.
MAX_ATTEMPTS = 2**31 - 2
# ms since the epoch up to the end of year 9999 UTC: every such value converts to a
# ``datetime`` (``parked show`` prints them), and no real clock is past it.
MAX_TIMESTAMP_MS = 253_402_300_799_999
# A sequence number the router wrote (``dlq-publish-id``): a signed 64-bit AMQP long.
MAX_SEQUENCE = 2**63 - 1
# kombu's priority range on Redis (``priority_steps`` 0..9).
MAX_PRIORITY = 9

# No kind needs more digits than this; longer text is refused before ``int()`` sees it.
_MAX_DIGITS = 20


def _whole(value: Any, limit: int) -> int | None:
    """A non-negative whole number up to ``limit`` (the rule in the module docstring)."""
    if type(value) is int:  # the common cases first; bool and int subclasses go below
        return value if 0 <= value <= limit else None
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # an IntEnum, say: its integer value
        number = int(value)
        return number if 0 <= number <= limit else None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > _MAX_DIGITS or not text.isdecimal():
        return None
    number = int(text)  # safe: isdecimal() text of a few digits is always an int literal
    return number if number <= limit else None


def attempts(value: Any) -> int | None:
    """Previous failures recorded in ``dlq-attempts``: 0..MAX_ATTEMPTS, or None."""
    return _whole(value, MAX_ATTEMPTS)


def timestamp_ms(value: Any) -> int | None:
    """A timestamp header (ms since the epoch): 0..MAX_TIMESTAMP_MS, or None."""
    return _whole(value, MAX_TIMESTAMP_MS)


def sequence(value: Any) -> int | None:
    """A sequence number the router stamped itself: 0..MAX_SEQUENCE, or None."""
    return _whole(value, MAX_SEQUENCE)


def priority(value: Any) -> int:
    """kombu's message priority on Redis, 0..9; 0 (kombu's default) when unusable.

    kombu reads ``int(properties["priority"])`` clamped to 0..9, so a whole number outside
    the range is clamped and a finite float is truncated, as kombu itself would publish it.
    What kombu's ``int()`` would refuse or crash on (inf, NaN, ``"²"``, a list, a bool) is 0.
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return min(max(value, 0), MAX_PRIORITY)
    if isinstance(value, float):
        return min(max(int(value), 0), MAX_PRIORITY) if math.isfinite(value) else 0
    number = _whole(value, 2**63)  # negative text is unusable: 0, as kombu's clamp gives
    return 0 if number is None else min(number, MAX_PRIORITY)
