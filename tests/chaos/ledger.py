"""The chaos ledger: N uniquely identified messages, a plan for each, and the final count.

Every id gets a plan, drawn from a seeded RNG: succeed at once, fail k times and then
succeed, fail forever (parked after ``max_attempts``), or fail with a non-retryable error
(parked at once). Workers record what they processed; at the end the parking lot is read
and ``Ledger.check`` says what was lost (never processed nor parked) and what was
duplicated (processed or parked more than once).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

FOREVER = -1
NON_RETRYABLE = -2
NON_RETRYABLE_ERROR = "ChaosFatal"

# CI size by default; CHAOS_SCALE=20 (say) for the larger manual run the README reports.
SCALE = max(1, int(os.environ.get("CHAOS_SCALE", "1")))


def scaled(n: int) -> int:
    return n * SCALE


def chaos_seed() -> int:
    """The run's seed: CHAOS_SEED replays a failed run's plans and fault order (its report
    line names the seed); otherwise a fresh one."""
    return int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))


@dataclass
class Ledger:
    plans: dict[str, int]
    max_attempts: int
    processed: Counter[str] = field(default_factory=Counter)
    worker_rehandled: int = 0  # messages a worker handled again after a lost reply
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def make(cls, n: int, max_attempts: int, rng: random.Random) -> Ledger:
        plans: dict[str, int] = {}
        for i in range(n):
            draw = rng.random()
            if draw < 0.4:
                plan = 0
            elif draw < 0.75:
                plan = rng.randint(1, max_attempts - 1)
            elif draw < 0.9:
                plan = FOREVER
            else:
                plan = NON_RETRYABLE
            plans[f"m{i:07d}"] = plan
        return cls(plans=plans, max_attempts=max_attempts)

    def verdict(self, message_id: str, attempts: int) -> str | None:
        """What the worker does with this id at this attempt: None (succeed), or an error type.

        ``attempts`` is the router's ``dlq-attempts`` header (failures so far).
        """
        plan = self.plans[message_id]
        if plan == NON_RETRYABLE:
            return NON_RETRYABLE_ERROR
        if plan == FOREVER or attempts < plan:
            return "ChaosFlaky"
        return None

    def record_processed(self, message_id: str) -> None:
        with self.lock:
            self.processed[message_id] += 1

    def expected_parked(self) -> int:
        return sum(1 for p in self.plans.values() if p in (FOREVER, NON_RETRYABLE))

    def expected_processed(self) -> int:
        return len(self.plans) - self.expected_parked()

    def done(self, parked_ids: Iterable[str]) -> bool:
        with self.lock:
            seen = set(self.processed)
        seen.update(parked_ids)
        return seen.issuperset(self.plans)

    def check(self, parked: list[tuple[str, str]]) -> Result:
        """``parked``: (message id, park reason) of every parked message."""
        parked_ids = Counter(mid for mid, _ in parked)
        with self.lock:
            processed = Counter(self.processed)
        lost = [mid for mid in self.plans if mid not in processed and mid not in parked_ids]
        duplicates = sum(c - 1 for c in processed.values()) + sum(
            c - 1 for c in parked_ids.values()
        )
        wrong: list[str] = []
        for mid, reason in parked:
            plan = self.plans.get(mid)
            want = {FOREVER: "max_attempts", NON_RETRYABLE: "non_retryable"}.get(plan or 0)
            if want != reason:
                wrong.append(f"{mid} (plan {plan}) parked for {reason}")
        for mid in processed:
            if self.plans.get(mid) in (FOREVER, NON_RETRYABLE):
                wrong.append(f"{mid} (plan {self.plans.get(mid)}) was processed")
        return Result(
            messages=len(self.plans),
            processed=len(processed),
            parked=len(parked_ids),
            lost=lost,
            duplicates=duplicates,
            wrong=wrong,
        )


@dataclass
class Result:
    messages: int
    processed: int
    parked: int
    lost: list[str]
    duplicates: int
    wrong: list[str]


@dataclass
class Faults:
    """What the chaos loop did, for the assertion messages and the README figures."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str) -> None:
        self.counts[kind] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none"


def chaos_loop(
    rng: random.Random,
    actions: dict[str, Callable[[], None]],
    faults: Faults,
    *,
    rounds: int,
    pause: tuple[float, float],
    stop: threading.Event,
) -> None:
    """``rounds`` faults with a random pause before each: every kind once, then at random."""
    names = sorted(actions)
    order = rng.sample(names, len(names))
    order += [rng.choice(names) for _ in range(rounds - len(order))]
    for name in order:
        if stop.wait(rng.uniform(*pause)):
            return
        actions[name]()
        faults.add(name)


class Producer(threading.Thread):
    """Sends every id of the ledger at ``rate`` per second, while the faults happen.

    ``send(id)`` must raise on failure; the id is sent again after a pause. A send whose
    reply was lost may have arrived, so each retry counts as a possible duplicate.
    """

    def __init__(
        self,
        ledger: Ledger,
        send: Callable[[str], None],
        rate: float,
        errors: tuple[type[BaseException], ...],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.ledger, self.send, self.rate, self.errors = ledger, send, rate, errors
        self.stop = stop
        self.retries = 0
        self.sent = 0

    def run(self) -> None:
        started = time.monotonic()
        for i, mid in enumerate(self.ledger.plans):
            ahead = started + i / self.rate - time.monotonic()
            if ahead > 0 and self.stop.wait(ahead):
                return
            while not self.stop.is_set():
                try:
                    self.send(mid)
                    self.sent += 1
                    break
                except self.errors:
                    self.retries += 1
                    self.stop.wait(0.2)


def report(kind: str, seed: int, result: Result, faults: Faults, seconds: float) -> str:
    return (
        f"chaos {kind}: seed {seed}, {result.messages} messages, faults: {faults} "
        f"({faults.total}); processed {result.processed}, parked {result.parked}, "
        f"lost {len(result.lost)}, duplicates {result.duplicates}, {seconds:.0f}s"
    )
