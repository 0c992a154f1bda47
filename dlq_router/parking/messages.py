"""What a parked message says about itself: header accessors, group fingerprints, timestamps.

Pure helpers on ``ParkedMessage`` that the other ``parking`` modules build on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

from dlq_router import headers as h
from dlq_router import numbers
from dlq_router.backends.base import ParkedMessage

FINGERPRINT_LENGTH = 12


# --------------------------------------------------------------------------- reading headers


def parked_at(msg: ParkedMessage) -> int:
    return h.as_ms(msg.headers.get(h.PARKED_AT)) or 0


def attempts(msg: ParkedMessage) -> int | None:
    return numbers.attempts(msg.headers.get(h.ATTEMPTS))


def error_type(msg: ParkedMessage) -> str:
    return h.as_text(msg.headers.get(h.ERROR_TYPE)) or ""


def reason(msg: ParkedMessage) -> str:
    return h.as_text(msg.headers.get(h.PARK_REASON)) or ""


def fingerprint(route: str, error: str, why: str) -> str:
    """Stable id of a group (route + error type + park reason), usable as ``--group``."""
    digest = hashlib.sha1(f"{route}\0{error}\0{why}".encode(), usedforsecurity=False)
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def message_fingerprint(msg: ParkedMessage) -> str:
    return fingerprint(msg.route, error_type(msg), reason(msg))


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return int(time.time() * 1000)
