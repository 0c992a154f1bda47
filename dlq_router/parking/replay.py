"""Replay plumbing shared by the backends: options, result, rate limiter, progress callback.

Field names of ``ReplayResult.as_dict`` are a stable interface (documented in
the README, "JSON output"): add fields, never rename them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlq_router.backends.base import ParkedMessage
from dlq_router.errors import UsageError

Progress = Callable[[int], None]


def no_progress(_: int) -> None:
    pass


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
