"""dlq_router.numbers: one reader per kind of number; any value in, a number or None out."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import IntEnum
from typing import Any

import pytest

from dlq_router import numbers as n


class Three(IntEnum):
    THREE = 3


def short(value: Any) -> str:
    """A test id for any value (repr() refuses a 5,000-digit int)."""
    try:
        return repr(value)[:40]
    except ValueError:
        return f"<{type(value).__name__}>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0), (3, 3), ("3", 3), (" 3\n", 3), (b"3", 3), (bytearray(b"12"), 12),
        ("\u0663", 3), ("\uff13", 3), (Three.THREE, 3), (n.MAX_ATTEMPTS, n.MAX_ATTEMPTS),
        (n.MAX_ATTEMPTS + 1, None), (-1, None), ("-1", None), ("+1", None), (True, None),
        (False, None), (2.0, None), (2.5, None), (float("inf"), None), (float("nan"), None),
        (Decimal("2"), None), ("\u00b2", None), ("1\u00b2", None), ("", None), (" ", None),
        ("1e3", None), ("3.0", None), ("9" * 5000, None), (10**5000, None), (2**63 - 1, None),
        (b"\xff", None), (None, None), ([1], None), ({"a": 1}, None),
        (dt.datetime(2026, 1, 1), None), (object(), None),
    ],
    ids=short,
)  # fmt: skip
def test_attempts(value: Any, expected: int | None) -> None:
    assert n.attempts(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_795_683_600_000, 1_795_683_600_000), ("1795683600000", 1_795_683_600_000),
        (n.MAX_TIMESTAMP_MS, n.MAX_TIMESTAMP_MS), (n.MAX_TIMESTAMP_MS + 1, None),
        (2**64 - 1, None), (1.7e12, None), ("\u00b2", None), (-5, None),
    ],
    ids=short,
)  # fmt: skip
def test_timestamp_ms(value: Any, expected: int | None) -> None:
    assert n.timestamp_ms(value) == expected
    if expected is not None:  # every accepted timestamp converts to a datetime
        dt.datetime.fromtimestamp(expected / 1000, dt.UTC)


def test_sequence_range() -> None:
    assert n.sequence(2**63 - 1) == 2**63 - 1
    assert n.sequence(2**63) is None
    assert n.sequence("18446744073709551615") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0), (0, 0), (5, 5), (9, 9), (12, 9), (-4, 0), (2**70, 9), (4.9, 4), (-0.5, 0),
        (1e400, 0), (float("inf"), 0), (float("-inf"), 0), (float("nan"), 0), (True, 0),
        ("7", 7), (" 7 ", 7), ("-7", 0), ("\u00b2", 0), ("abc", 0), (b"6", 6), ([6], 0),
        ({"p": 6}, 0), ("9" * 5000, 0),
    ],
    ids=short,
)  # fmt: skip
def test_priority_follows_kombu_and_never_raises(value: Any, expected: int) -> None:
    assert n.priority(value) == expected
