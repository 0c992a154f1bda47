"""Durations as operators write them: ``250ms``, ``10s``, ``1m``, ``1h``, ``7d``."""

from __future__ import annotations

import re
from functools import lru_cache

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration_ms(value: object) -> int:
    """Parse a duration into whole milliseconds; bare integers are milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 10s, 1m, 1h, 1d)")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        ms = round(float(m.group(1)) * _UNITS_MS[m.group(2)])
    else:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 10s, 1m, 1h, 1d)")
    if ms <= 0:
        raise ValueError(f"{value!r} must be longer than 0ms")
    return ms


@lru_cache(maxsize=1024)  # a handful of tier delays, formatted for every routed message
def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling: 10000 -> '10s', 90000 -> '90s', 1500 -> '1500ms'."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
