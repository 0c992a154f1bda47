"""The parking lot, broker-neutral: selectors, groups, summary rows, previews, export format.

Backends implement ``ParkingLot`` (``backends/*/parking.py``); the CLI (``cli/parked.py``,
``cli/replay.py``) only talks to that protocol and to the pure helpers here. Field names of
``summary_row``/``group_row``/``show_record``/``ReplayResult.as_dict`` are a stable interface
(documented in docs-parking.md): add fields, never rename them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import heapq
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from dlq_router import headers as h
from dlq_router.backends.base import ParkedMessage
from dlq_router.durations import parse_duration_ms
from dlq_router.errors import SelectorError, UsageError
from dlq_router.policy import PARK_REASONS, is_non_retryable

EXPORT_FORMAT = "dlq-router.parked.v1"
FINGERPRINT_LENGTH = 12
PICKLE_CONTENT_TYPE = "application/x-python-serialize"
PREVIEW_BYTES = 256

Progress = Callable[[int], None]


def no_progress(_: int) -> None:
    pass


# --------------------------------------------------------------------------- reading headers


def parked_at(msg: ParkedMessage) -> int:
    return h.as_ms(msg.headers.get(h.PARKED_AT)) or 0


def attempts(msg: ParkedMessage) -> int | None:
    value = msg.headers.get(h.ATTEMPTS)
    return value if isinstance(value, int) and not isinstance(value, bool) else h.as_ms(value)


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


# --------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Selector:
    """Which parked messages an operation applies to. Empty filters mean "any"."""

    routes: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    older_than_ms: int | None = None  # parked at least this long ago
    newer_than_ms: int | None = None  # parked at most this long ago
    ids: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    limit: int | None = None  # the newest N that match
    all: bool = False
    now_ms: int = field(default_factory=now_ms)  # one clock reading for the whole operation

    @property
    def has_filter(self) -> bool:
        return bool(
            self.routes
            or self.error_types
            or self.reasons
            or self.ids
            or self.groups
            or self.older_than_ms is not None
            or self.newer_than_ms is not None
        )

    @property
    def header_filters(self) -> bool:
        """Filters that need a message's headers (route and time come from the index)."""
        return bool(self.error_types or self.reasons or self.groups)

    def require_choice(self, action: str) -> None:
        """Bulk changes need an explicit selector or ``--all`` (``--limit`` alone is not one)."""
        if not self.has_filter and not self.all:
            raise SelectorError(
                f"{action} needs a selector (--route, --error-type, --reason, --older-than, "
                "--newer-than, --id, --group) or --all"
            )

    def window(self) -> tuple[int | None, int | None]:
        """Parked-at range (inclusive ms) implied by --older-than/--newer-than."""
        high = self.now_ms - self.older_than_ms if self.older_than_ms is not None else None
        low = self.now_ms - self.newer_than_ms if self.newer_than_ms is not None else None
        return low, high

    def wants_route(self, route: str) -> bool:
        return not self.routes or route in self.routes

    def matches(self, msg: ParkedMessage) -> bool:
        """Every filter but ``limit`` (which needs the newest-first order)."""
        if not self.wants_route(msg.route):
            return False
        if self.ids and msg.id not in self.ids:
            return False
        if self.reasons and reason(msg) not in self.reasons:
            return False
        if self.error_types and not is_non_retryable(error_type(msg), list(self.error_types)):
            return False
        low, high = self.window()
        at = parked_at(msg)
        if (low is not None and at < low) or (high is not None and at > high):
            return False
        return not self.groups or message_fingerprint(msg) in self.groups


def parse_selector(
    *,
    known_routes: Sequence[str],
    routes: Sequence[str] = (),
    error_types: Sequence[str] = (),
    reasons: Sequence[str] = (),
    older_than: str | None = None,
    newer_than: str | None = None,
    limit: int | None = None,
    ids: Sequence[str] = (),
    groups: Sequence[str] = (),
    all_: bool = False,
) -> Selector:
    """Validate what the operator typed; any problem is one ``SelectorError`` line (exit 2)."""
    for route in routes:
        if route not in known_routes:
            raise SelectorError(
                f"--route {route!r}: no such route (routes: {', '.join(known_routes)})"
            )
    for why in reasons:
        if why not in PARK_REASONS:
            raise SelectorError(f"--reason {why!r}: must be one of {', '.join(PARK_REASONS)}")
    for group in groups:
        if len(group) != FINGERPRINT_LENGTH or any(c not in "0123456789abcdef" for c in group):
            raise SelectorError(
                f"--group {group!r}: a fingerprint is {FINGERPRINT_LENGTH} lowercase hex "
                "characters (see `dlq-router parked groups`)"
            )
    if any(not i.strip() for i in ids):
        raise SelectorError("--id must not be empty")
    if limit is not None and limit < 1:
        raise SelectorError(f"--limit {limit}: must be at least 1")
    durations: dict[str, int | None] = {}
    for flag, value in (("--older-than", older_than), ("--newer-than", newer_than)):
        try:
            durations[flag] = parse_duration_ms(value) if value is not None else None
        except ValueError as exc:
            raise SelectorError(f"{flag}: {exc}") from None
    older, newer = durations["--older-than"], durations["--newer-than"]
    if older is not None and newer is not None and older >= newer:
        raise SelectorError(
            f"--older-than {older_than} and --newer-than {newer_than}: nothing can match "
            "(--older-than must be shorter than --newer-than)"
        )
    selector = Selector(
        routes=tuple(dict.fromkeys(routes)),
        error_types=tuple(dict.fromkeys(error_types)),
        reasons=tuple(dict.fromkeys(reasons)),
        older_than_ms=older,
        newer_than_ms=newer,
        ids=frozenset(ids),
        groups=frozenset(groups),
        limit=limit,
        all=all_,
    )
    if all_ and selector.has_filter:
        raise SelectorError("--all selects everything: do not combine it with filters")
    return selector


def newest_first(streams: Iterable[Iterable[ParkedMessage]]) -> Iterator[ParkedMessage]:
    """Merge per-route streams that are each newest first into one newest-first stream."""
    return heapq.merge(*streams, key=lambda m: -parked_at(m))


def select(messages: Iterable[ParkedMessage], selector: Selector) -> Iterator[ParkedMessage]:
    """Apply every filter and then ``limit`` to a newest-first stream."""
    taken = 0
    for msg in messages:
        if selector.limit is not None and taken >= selector.limit:
            return
        if selector.matches(msg):
            taken += 1
            yield msg


def missing_ids(selector: Selector, seen: Iterable[str]) -> list[str]:
    return sorted(selector.ids - set(seen))


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
    }


@dataclass
class Group:
    """Parked messages sharing route + error type + reason."""

    route: str
    error_type: str
    reason: str
    count: int = 0
    first_seen: int | None = None
    last_seen: int | None = None
    bytes: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.route, self.error_type, self.reason)

    def add(self, msg: ParkedMessage) -> None:
        at = parked_at(msg)
        self.count += 1
        self.bytes += msg.size
        self.first_seen = at if self.first_seen is None else min(self.first_seen, at)
        self.last_seen = at if self.last_seen is None else max(self.last_seen, at)


def groups(messages: Iterable[ParkedMessage]) -> list[Group]:
    """Groups, largest first (ties: most recently seen first)."""
    found: dict[tuple[str, str, str], Group] = {}
    for msg in messages:
        key = (msg.route, error_type(msg), reason(msg))
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
    }


# --------------------------------------------------------------------------- values as JSON


def to_json_value(value: Any) -> Any:
    """Header/property values as JSON, typed where JSON has no type (bytes, time, decimal)."""
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
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


# --------------------------------------------------------------------------- export / import


def export_line(msg: ParkedMessage) -> str:
    """One JSONL line holding everything needed to park the message again, on either broker."""
    return json.dumps(
        {
            "format": EXPORT_FORMAT,
            "id": msg.id,
            "route": msg.route,
            "parked_at": parked_at(msg),
            "headers": to_json_value(msg.headers),
            "properties": to_json_value(msg.properties),
            "body": base64.b64encode(msg.body).decode("ascii"),
        },
        separators=(",", ":"),
    )


def import_line(line: str, where: str) -> ParkedMessage:
    """Parse one export line; ``where`` (file:line) names it in the error."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not a {EXPORT_FORMAT} record")
        headers = from_json_value(data["headers"])
        properties = from_json_value(data["properties"])
        if not isinstance(headers, dict) or not isinstance(properties, dict):
            raise ValueError("headers and properties must be objects")
        return ParkedMessage(
            id=str(data["id"]),
            route=str(data["route"]),
            headers=headers,
            properties=properties,
            body=base64.b64decode(data["body"], validate=True),
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise UsageError(f"{where}: cannot import: {exc}") from None


# --------------------------------------------------------------------------- replay


class RateLimiter:
    """Caps throughput at ``rate`` messages/s: message k leaves no earlier than start + k/rate."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise UsageError(f"--rate {rate}: must be above 0")
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.start: float | None = None
        self.sent = 0

    def wait(self, n: int = 1) -> None:
        """Block until ``n`` more messages may go."""
        if self.rate is None:
            return
        if self.start is None:
            self.start = self.clock()
        delay = self.start + self.sent / self.rate - self.clock()
        if delay > 0:
            self.sleep(delay)
        self.sent += n

    def batch_size(self, preferred: int) -> int:
        """Batches small enough that the cap is smooth (about 10 batches per second)."""
        if self.rate is None:
            return preferred
        return max(1, min(preferred, int(self.rate / 10)))


@dataclass(frozen=True)
class ReplayOptions:
    to_route: str | None = None
    keep_attempts: bool = False
    rate: float | None = None
    dry_run: bool = False


@dataclass
class ReplayResult:
    """What a replay (or purge) did. ``planned`` lists (message, destination) on a dry run."""

    selected: int = 0
    replayed: int = 0
    skipped: int = 0  # selected but gone (replayed or purged concurrently) when its turn came
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, why)
    missing: list[str] = field(default_factory=list)  # --id values that are not parked
    planned: list[tuple[ParkedMessage, str]] = field(default_factory=list)
    dry_run: bool = False

    def fail(self, msg_id: str, why: str) -> None:
        self.failed += 1
        self.failures.append((msg_id, why))

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selected": self.selected,
            "replayed": self.replayed,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": [{"id": i, "error": why} for i, why in self.failures],
            "missing_ids": self.missing,
        }


class ParkingLot(Protocol):
    """The parking lot of one broker, for every route of a topology.

    Reading never consumes or reorders. Moving is at-least-once: a message leaves the parking
    lot only after the broker confirmed where it went.
    """

    def iter(self, selector: Selector) -> Iterator[ParkedMessage]:
        """Messages matching ``selector`` (``limit`` applied), newest first."""
        ...

    def get(self, msg_id: str, route: str | None = None) -> ParkedMessage:
        """One message by id; ``NotFound`` when it is not parked."""
        ...

    def replay(
        self, selector: Selector, options: ReplayOptions, progress: Progress = no_progress
    ) -> ReplayResult:
        """Send the selected messages back to work; ``progress(n)`` after each n moved."""
        ...

    def purge(self, selector: Selector, progress: Progress = no_progress) -> ReplayResult:
        """Delete the selected messages (``replayed`` counts the deleted ones)."""
        ...

    def put(
        self, messages: Sequence[ParkedMessage], progress: Progress = no_progress
    ) -> ReplayResult:
        """Park these messages (import); ids already parked are skipped where detectable."""
        ...
