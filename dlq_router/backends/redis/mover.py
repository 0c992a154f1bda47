"""The mover: push due retries back to kombu's work list, sleeping until the next one is due.

Not a fixed poll: after each pass it sleeps until the lowest score left in any route's retry
zset (capped at ``MAX_SLEEP_S``, so retries scheduled by other replicas and the stop flag
are seen), and the claimer wakes it early when it schedules an earlier retry.
"""

from __future__ import annotations

import threading
from typing import Any

from dlq_router.backends.base import RouterContext
from dlq_router.backends.redis import envelope
from dlq_router.backends.redis.connection import RedisClient, script
from dlq_router.names import redis_keys
from dlq_router.topology import Topology

MOVE_BATCH = 500
MAX_SLEEP_S = 1.0
# Scores are due_ms * 4096 + (sequence % 4096): FIFO within a millisecond (BullMQ's trick),
# and exact in a double (below 2**53) until the year 2039.
SEQ_SPAN = 4096


class Mover:
    def __init__(self, topology: Topology, ctx: RouterContext, *, priorities: bool) -> None:
        self.ctx = ctx
        # kombu's priority lists hash to other Cluster slots than {queue}: on Cluster every
        # retry goes to the plain work list (priority step 0).
        self.priorities = priorities
        self.routes: list[tuple[str, list[str]]] = []
        for route in topology.routes:
            k = redis_keys(topology, route)
            keys = [k.retry, k.work]
            if priorities:
                keys += [envelope.work_list(k.work, step) for step in envelope.PRIORITY_STEPS[1:]]
            self.routes.append((route.name, keys))
        self._wake = threading.Event()
        # When the mover next looks (ms since the epoch); 0 while it is moving, when any new
        # retry may have been missed by the pass in progress.
        self._planned_ms = 0.0

    def schedule(self, score: int) -> None:
        """A retry with this score was just written: wake the mover if it sleeps past it."""
        planned = self._planned_ms
        if planned == 0 or score // SEQ_SPAN < planned:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def run(self, client: RedisClient, halt: threading.Event) -> None:
        move = script(client, "move")
        while not halt.is_set():
            self._planned_ms = 0
            self._wake.clear()
            next_score = self.move_due(move)
            self.ctx.metrics.beat("mover")
            now = self.ctx.clock() * 1000
            if next_score is None:
                sleep_ms = MAX_SLEEP_S * 1000
            else:
                # +0.5 ms: wake just after the due millisecond has begun.
                sleep_ms = min(max(next_score // SEQ_SPAN - now + 0.5, 0), MAX_SLEEP_S * 1000)
            self._planned_ms = now + sleep_ms
            if sleep_ms > 0:
                self._wake.wait(sleep_ms / 1000)

    def move_due(self, move: Any) -> int | None:
        """Move every due retry of every route; the lowest score still waiting, if any."""
        lowest: int | None = None
        for name, keys in self.routes:
            while True:
                max_score = (self.ctx.now_ms() + 1) * SEQ_SPAN - 1
                moved, next_score = move(keys=keys, args=[max_score, MOVE_BATCH])
                if moved:
                    self.ctx.metrics.moved.labels(name).inc(moved)
                if moved < MOVE_BATCH:
                    break
            if next_score:
                score = int(float(next_score))
                lowest = score if lowest is None else min(lowest, score)
        return lowest
