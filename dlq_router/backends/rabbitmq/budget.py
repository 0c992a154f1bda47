"""The RabbitMQ router's byte budget: how many bytes of dead-letter bodies it holds.

basic.qos counts messages, not bytes. A window of 2,000 dead letters of 1 MB each, all
held while a full parking queue refuses them, would be 2 GB: a sidecar killed for it would
restart into the same 2 GB. So the router also keeps a budget on the bodies it holds: past
it, it stops consuming; once they are down to half, it consumes again with the window that
fits the budget at the average body size seen; when bodies get smaller the window grows
back. This class only counts; the router does the channel work (see ``Router._pause``).
"""

from __future__ import annotations

# The average body size follows new deliveries with this weight.
SIZE_WEIGHT = 0.05
# The window grows back at most this often (seconds), and only when it at least doubles.
WIDEN_EVERY = 2.0


class ByteBudget:
    def __init__(self, max_bytes: int, prefetch: int, consumers: int) -> None:
        self.max_bytes = max_bytes
        self.prefetch = prefetch  # the widest window
        self.consumers = max(1, consumers)  # one per route, each with its own prefetch
        self.avg_size = 0.0  # kept across reconnects
        self.reset()

    def reset(self) -> None:
        """A new connection: nothing held, not paused."""
        self.sizes: dict[int, int] = {}  # delivery tag -> body bytes, until acked/requeued
        self.held = 0
        self.paused = False
        self.window = self.fitting_window() if self.avg_size else self.prefetch
        self.window_changed = 0.0

    def add(self, tag: int, size: int) -> bool:
        """A delivery arrived; True if it takes the bodies held past the budget."""
        self.sizes[tag] = size
        self.held += size
        self.avg_size += (size - self.avg_size) * SIZE_WEIGHT if self.avg_size else size
        return self.held > self.max_bytes and not self.paused

    def release(self, tag: int) -> None:
        """That delivery was acked or requeued."""
        self.held -= self.sizes.pop(tag, 0)

    def fitting_window(self) -> int:
        """Dead letters per consumer that fit the budget at the average body size."""
        fit = int(self.max_bytes / self.consumers // max(self.avg_size, 1.0))
        return max(1, min(self.prefetch, fit))

    def may_resume(self) -> bool:
        return self.paused and self.held <= self.max_bytes // 2

    def wider_window(self, now: float) -> int | None:
        """The window to consume with instead of the current one, if it should grow now."""
        if self.paused or self.window >= self.prefetch or now - self.window_changed < WIDEN_EVERY:
            return None
        window = self.fitting_window()
        return window if window >= 2 * self.window else None

    def consuming_with(self, window: int, now: float) -> None:
        self.window = window
        self.window_changed = now
