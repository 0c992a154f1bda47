"""What ``parked list|show|groups`` print: summary rows, groups, body previews, JSON values.

Field names of ``summary_row``/``group_row``/``show_record`` are a stable interface
(documented in the README, "JSON output"): add fields, never rename them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dlq_router import headers as h
from dlq_router.backends.base import ParkedMessage
from dlq_router.backends.rabbitmq.wire import Raw
from dlq_router.parking.messages import (
    attempts,
    error_type,
    fingerprint,
    group_key,
    iso,
    message_fingerprint,
    parked_at,
    reason,
    task_id,
    task_name,
)

PICKLE_CONTENT_TYPE = "application/x-python-serialize"
PREVIEW_BYTES = 256


# --------------------------------------------------------------------------- rows


def summary_row(msg: ParkedMessage) -> dict[str, Any]:
    """One line of ``parked list`` (``--json``): field names are a stable interface."""
    at = parked_at(msg)
    return {
        "id": msg.id,
        "route": msg.route,
        "attempts": attempts(msg),
        "reason": reason(msg),
        "error_type": error_type(msg),
        "error_message": h.as_text(msg.headers.get(h.ERROR_MESSAGE)) or "",
        "parked_at": at,
        "parked_at_iso": iso(at),
        "size": msg.size,
        "content_type": h.as_text(msg.properties.get("content_type")) or "",
        "origin_exchange": h.as_text(msg.headers.get(h.ORIGIN_EXCHANGE)),
        "origin_routing_key": h.as_text(msg.headers.get(h.ORIGIN_ROUTING_KEY)),
        "fingerprint": message_fingerprint(msg),
        "task": task_name(msg),
        "task_id": task_id(msg),
    }


@dataclass
class Group:
    """Parked messages sharing route + error type + reason + task name ("" for no task)."""

    route: str
    error_type: str
    reason: str
    task: str = ""
    count: int = 0
    first_seen: int | None = None
    last_seen: int | None = None
    bytes: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.route, self.error_type, self.reason, self.task)

    def add(self, msg: ParkedMessage) -> None:
        at = parked_at(msg)
        self.count += 1
        self.bytes += msg.size
        self.first_seen = at if self.first_seen is None else min(self.first_seen, at)
        self.last_seen = at if self.last_seen is None else max(self.last_seen, at)


def groups(messages: Iterable[ParkedMessage]) -> list[Group]:
    """Groups, largest first (ties: most recently seen first)."""
    found: dict[tuple[str, str, str, str], Group] = {}
    for msg in messages:
        key = group_key(msg)
        group = found.get(key)
        if group is None:
            group = found[key] = Group(*key)
        group.add(msg)
    return sorted(found.values(), key=lambda g: (-g.count, -(g.last_seen or 0)))


def group_row(group: Group) -> dict[str, Any]:
    return {
        "fingerprint": group.fingerprint,
        "route": group.route,
        "error_type": group.error_type,
        "reason": group.reason,
        "count": group.count,
        "first_seen": group.first_seen,
        "first_seen_iso": iso(group.first_seen),
        "last_seen": group.last_seen,
        "last_seen_iso": iso(group.last_seen),
        "bytes": group.bytes,
        "task": group.task,
    }


# --------------------------------------------------------------------------- values as JSON


def to_json_value(value: Any) -> Any:
    """Header/property values as JSON, typed where JSON has no type (bytes, time, decimal)."""
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Raw):  # an AMQP value nobody could read: its wire bytes, type first
        return {"$amqp": base64.b64encode(value.data).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


def from_json_value(value: Any) -> Any:
    """Inverse of ``to_json_value``."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$bytes":
                return base64.b64decode(inner)
            if tag == "$amqp":
                return Raw(base64.b64decode(inner))
            if tag == "$datetime":
                return dt.datetime.fromisoformat(inner)
            if tag == "$decimal":
                return Decimal(inner)
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


# --------------------------------------------------------------------------- body preview


@dataclass(frozen=True)
class BodyPreview:
    kind: str  # json / text / binary / pickle
    text: str  # what to print
    size: int


def hex_preview(body: bytes, limit: int = PREVIEW_BYTES) -> str:
    lines = []
    for offset in range(0, min(len(body), limit), 16):
        chunk = body[offset : offset + 16]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {ascii_}")
    if len(body) > limit:
        lines.append(f"... {len(body) - limit} more bytes")
    return "\n".join(lines)


def preview_body(
    body: bytes, content_type: str | None, content_encoding: str | None
) -> BodyPreview:
    """Pretty JSON, text, or a hex dump. A pickle body is shown as hex and never unpickled."""
    ctype = (content_type or "").lower()
    if ctype == PICKLE_CONTENT_TYPE:
        return BodyPreview("pickle", hex_preview(body), len(body))
    encoding = (content_encoding or "utf-8").lower()
    if encoding in ("utf-8", "utf8", "ascii", "us-ascii"):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            else:
                return BodyPreview(
                    "json", json.dumps(parsed, indent=2, ensure_ascii=False), len(body)
                )
            if parsed is None and all(c.isprintable() or c in "\r\n\t" for c in text):
                return BodyPreview("text", text, len(body))
    return BodyPreview("binary", hex_preview(body), len(body))


HISTORY_HEADERS = (
    h.ATTEMPTS,
    h.FIRST_FAILED_AT,
    h.LAST_FAILED_AT,
    h.DEATH_REASON,
    h.ERROR_TYPE,
    h.ERROR_MESSAGE,
    h.PARK_REASON,
    h.PARK_DETAIL,
    h.PARKED_AT,
    h.ORIGIN_EXCHANGE,
    h.ORIGIN_ROUTING_KEY,
    h.ORIGIN_QUEUE,
    "dlq-error-traceback",  # written by dlq_router.celery
)


def show_record(msg: ParkedMessage) -> dict[str, Any]:
    """Everything ``parked show`` prints, as one JSON-safe object."""
    preview = preview_body(
        msg.body,
        h.as_text(msg.properties.get("content_type")),
        h.as_text(msg.properties.get("content_encoding")),
    )
    history = {k: to_json_value(msg.headers[k]) for k in HISTORY_HEADERS if k in msg.headers}
    for key in (h.FIRST_FAILED_AT, h.LAST_FAILED_AT, h.PARKED_AT):
        if key in msg.headers:
            history[key + "-iso"] = iso(h.as_ms(msg.headers[key]))
    if "x-death" in msg.headers:
        history["x-death"] = to_json_value(msg.headers["x-death"])
    return {
        **summary_row(msg),
        "properties": to_json_value(msg.properties),
        "headers": to_json_value(msg.headers),
        "history": history,
        "body": {"kind": preview.kind, "size": preview.size, "preview": preview.text},
        "body_base64": base64.b64encode(msg.body).decode("ascii"),
    }
