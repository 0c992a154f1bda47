"""A parking lot summarised in one pass: count, age range and groups, keeping no message.

``status`` and the console fold a scan (``ParkingLot.scan``) into a ``LotSummary`` so that a
million parked messages cost a few counters, not a million bodies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dlq_router.backends.base import ParkedMessage
from dlq_router.parking.messages import group_key, parked_at
from dlq_router.parking.render import Group


@dataclass
class LotSummary:
    """What a pass over parked messages leaves behind: counters and groups."""

    count: int = 0
    bytes: int = 0
    oldest: int | None = None  # parked-at ms of the oldest message seen
    newest: int | None = None
    _groups: dict[tuple[str, str, str, str], Group] = field(default_factory=dict)

    def add(self, msg: ParkedMessage) -> None:
        at = parked_at(msg)
        self.count += 1
        self.bytes += msg.size
        self.oldest = at if self.oldest is None else min(self.oldest, at)
        self.newest = at if self.newest is None else max(self.newest, at)
        key = group_key(msg)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(*key)
        group.add(msg)

    def groups(self) -> list[Group]:
        """Groups, largest first (ties: most recently seen first), as ``render.groups``."""
        return sorted(self._groups.values(), key=lambda g: (-g.count, -(g.last_seen or 0)))


def summarize(messages: Iterable[ParkedMessage]) -> LotSummary:
    summary = LotSummary()
    for msg in messages:
        summary.add(msg)
    return summary
