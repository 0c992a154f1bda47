"""Dead letters whose park Redis would not store, and the loud report when one stays held.

A held dead letter stays leased until ``HOLD_MS``, goes back to ``{q}:dlq`` and is claimed
again under a new claim id, so it is recognised by a digest of its bytes. One held longer
than ``REPORT_AFTER_S`` is reported (an error log line with its id, and
``dlq_router_held_too_long``), again every ``REPORT_AFTER_S`` while it stays held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from dlq_router.backends.base import RouterContext

REPORT_AFTER_S = 60.0
# Digests remembered at most (oldest forgotten first): memory stays bounded whatever
# happens to the parking lot.
MAX_TRACKED = 10_000


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class HeldLetters:
    def __init__(self, ctx: RouterContext) -> None:
        self.ctx = ctx
        self.since: dict[str, float] = {}  # digest -> first seen held (ctx.clock seconds)
        self.reported: dict[str, float] = {}  # digest -> last report

    def __bool__(self) -> bool:
        return bool(self.since)

    def note(self, route: str, statuses: str, letters: Sequence[bytes], ids: Sequence[Any]) -> None:
        """Record a routed batch: held ones ("h") are tracked, the others forgotten."""
        now = self.ctx.clock()
        for status, raw, msg_id in zip(statuses, letters, ids, strict=True):
            key = _digest(raw)
            if status != "h":
                if self.since.pop(key, None) is not None:
                    self.reported.pop(key, None)
                continue
            since = self.since.setdefault(key, now)
            held_for = now - since
            if held_for >= REPORT_AFTER_S and now - self.reported.get(key, 0.0) >= REPORT_AFTER_S:
                self.reported[key] = now
                self.ctx.metrics.held_too_long.labels(route).inc()
                self.ctx.log.error(
                    "%s: dead letter %s (digest %s) held for %.0fs: its park is refused every "
                    "time (parking lot full?); it stays leased and is tried again, never dropped",
                    route,
                    msg_id,
                    key,
                    held_for,
                )
        while len(self.since) > MAX_TRACKED:
            oldest = next(iter(self.since))
            del self.since[oldest]
            self.reported.pop(oldest, None)
