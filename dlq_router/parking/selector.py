"""Selectors: which parked messages an operation applies to, parsed from the CLI flags.

``Selector`` holds the filters, ``parse_selector`` validates what the operator typed, and
``newest_first``/``select``/``missing_ids`` apply a selector to newest-first streams.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from dlq_router.backends.base import ParkedMessage
from dlq_router.durations import parse_duration_ms
from dlq_router.errors import SelectorError
from dlq_router.parking.messages import (
    FINGERPRINT_LENGTH,
    error_type,
    message_fingerprint,
    now_ms,
    parked_at,
    reason,
    task_name,
)
from dlq_router.policy import PARK_REASONS, is_non_retryable

# --------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Selector:
    """Which parked messages an operation applies to. Empty filters mean "any"."""

    routes: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()  # Celery task names
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
            or self.tasks
            or self.ids
            or self.groups
            or self.older_than_ms is not None
            or self.newer_than_ms is not None
        )

    @property
    def header_filters(self) -> bool:
        """Filters that need a message's headers (route and time come from the index)."""
        return bool(self.error_types or self.reasons or self.tasks or self.groups)

    def require_choice(self, action: str) -> None:
        """Bulk changes need an explicit selector or ``--all`` (``--limit`` alone is not one)."""
        if not self.has_filter and not self.all:
            raise SelectorError(
                f"{action} needs a selector (--route, --error-type, --reason, --task, "
                "--older-than, --newer-than, --id, --group) or --all"
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
        if self.tasks and task_name(msg) not in self.tasks:
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
    tasks: Sequence[str] = (),
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
    if any(not t.strip() for t in tasks):
        raise SelectorError("--task must not be empty")
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
        tasks=tuple(dict.fromkeys(tasks)),
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
