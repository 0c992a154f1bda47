"""The ``ParkingLot`` protocol each backend implements (``backends/*/parking.py``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from dlq_router.backends.base import ParkedMessage
from dlq_router.parking.replay import Progress, ReplayOptions, ReplayResult, no_progress
from dlq_router.parking.selector import Selector


class ParkingLot(Protocol):
    """The parking lot of one broker, for every route of a topology.

    Reading never consumes or reorders. Moving is at-least-once: a message leaves the parking
    lot only after the broker confirmed where it went.
    """

    def iter(self, selector: Selector) -> Iterator[ParkedMessage]:
        """Messages matching ``selector`` (``limit`` applied), newest first."""
        ...

    def scan(self, selector: Selector) -> Iterator[ParkedMessage]:
        """Messages matching ``selector`` (``limit`` ignored) in no particular order, one at
        a time: nothing is kept, so summaries of a large lot stay small (``LotSummary``)."""
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
