"""What a parked message says about itself: header accessors, group fingerprints, timestamps.

Pure helpers on ``ParkedMessage`` that the other ``parking`` modules build on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from dlq_router import headers as h
from dlq_router import numbers
from dlq_router.backends.base import ParkedMessage

FINGERPRINT_LENGTH = 12
# Celery message protocol 2 headers naming the task (never the body: it may be a pickle).
CELERY_TASK = "task"
CELERY_ID = "id"


# --------------------------------------------------------------------------- reading headers


def parked_at(msg: ParkedMessage) -> int:
    return h.as_ms(msg.headers.get(h.PARKED_AT)) or 0


def attempts(msg: ParkedMessage) -> int | None:
    return numbers.attempts(msg.headers.get(h.ATTEMPTS))


def error_type(msg: ParkedMessage) -> str:
    return h.as_text(msg.headers.get(h.ERROR_TYPE)) or ""


def reason(msg: ParkedMessage) -> str:
    return h.as_text(msg.headers.get(h.PARK_REASON)) or ""


def task_name(msg: ParkedMessage) -> str:
    """Celery's task name (protocol 2 ``task`` header); "" for a message that is no task."""
    return h.as_text(msg.headers.get(CELERY_TASK)) or ""


def task_id(msg: ParkedMessage) -> str:
    """Celery's task id (``id`` header, read only beside a ``task`` header), else the
    message's ``message_id``, else its ``correlation_id``; "" when none is there."""
    if CELERY_TASK in msg.headers:
        found = h.as_text(msg.headers.get(CELERY_ID))
        if found:
            return found
    for prop in ("message_id", "correlation_id"):
        found = h.as_text(msg.properties.get(prop))
        if found:
            return found
    return ""


def describe_message(headers: Mapping[str, Any], message_id: Any = None) -> str:
    """How router logs name a message: ``task app.send[<task id>]`` for a Celery task,
    else ``message_id=<id>``."""
    task = h.as_text(headers.get(CELERY_TASK))
    if task:
        return f"task {task}[{h.as_text(headers.get(CELERY_ID)) or '?'}]"
    return f"message_id={h.as_text(message_id)}"


def describe_envelope(text: str | bytes) -> str:
    """``describe_message`` for a kombu Redis envelope (JSON text); never raises."""
    try:
        envelope = json.loads(text)
        headers = envelope.get("headers") if isinstance(envelope, dict) else None
        props = envelope.get("properties") if isinstance(envelope, dict) else None
        correlation = props.get("correlation_id") if isinstance(props, dict) else None
        return describe_message(headers if isinstance(headers, dict) else {}, correlation)
    except (ValueError, RecursionError):
        return "message_id=None"


def fingerprint(route: str, error: str, why: str, task: str = "") -> str:
    """Stable id of a group (route + task + error type + park reason), usable as ``--group``.

    A message that is no Celery task (task "") keeps the fingerprint of earlier versions,
    sha1(route, error type, reason), so existing groups keep their fingerprints.
    """
    key = f"{route}\0{error}\0{why}" + (f"\0{task}" if task else "")
    digest = hashlib.sha1(key.encode(), usedforsecurity=False)
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def group_key(msg: ParkedMessage) -> tuple[str, str, str, str]:
    """(route, error type, reason, task): what ``parked groups`` groups by."""
    return (msg.route, error_type(msg), reason(msg), task_name(msg))


def message_fingerprint(msg: ParkedMessage) -> str:
    return fingerprint(*group_key(msg))


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return int(time.time() * 1000)
