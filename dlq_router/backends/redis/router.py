"""The Redis run loop: claim dead letters, decide, route each batch in one Lua call.

Two working threads, each with its own connection (plus one that turns ``ctx.stop`` into
the internal halt flag): the claimer (the calling thread) leases dead letters
(claim.lua), asks the policy what to do, applies every decision of the batch atomically
(route.lua) and recovers expired leases (recover.lua); the mover (mover.py) pushes due
retries back to the work list. A crash between claim and route leaves the batch leased
(claim ids in ``{q}:inflight``, the dead letters in ``{q}:claims``); it goes back to the
dead-letter list when the lease expires. At least once: a recovered batch may be routed
again after a crash, never lost. Each dead letter crosses the wire once: route.lua gets
claim ids and new payloads, not the claimed bytes again. Under a backlog the claimer
pipelines: batch N's route.lua call is sent after batch N+1 is claimed and its reply read
after N+1 is decided, so Redis and Python work at the same time (on Redis Cluster the call
is made synchronously: redirections are the cluster client's job).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis.exceptions as rex

from dlq_router import headers as h
from dlq_router.backends.base import RouterContext
from dlq_router.backends.redis import envelope
from dlq_router.backends.redis.connection import (
    CONNECTION_ERRORS,
    DeferredCall,
    RedisClient,
    connect,
    describe,
    script,
)
from dlq_router.backends.redis.held import HeldLetters
from dlq_router.backends.redis.mover import Mover
from dlq_router.durations import format_duration_ms
from dlq_router.errors import BrokerError, BrokerUnavailable
from dlq_router.ids import new_id
from dlq_router.names import RedisKeys, redis_keys
from dlq_router.parking.messages import describe_envelope
from dlq_router.policy import Failure, Park, decide, park_headers
from dlq_router.topology import Route, Topology

# A claimed batch is routed within milliseconds; a router that has not finished it after
# the lease is presumed dead and the batch is recovered (a late router then skips it).
LEASE_MS = 5_000
# A park refused by a full parking lot (overflow: reject-publish) stays leased this long,
# then goes back to the dead-letter list and is examined again.
HOLD_MS = 2_000
# Dead letters claimed per script call: ctx.prefetch, capped (a batch is one route.lua call).
MAX_CLAIM_BATCH = 1_000
DEFAULT_PREFETCH = 500
RECOVER_LIMIT = 1_000
MAINTENANCE_EVERY_S = 1.0
# Each router announces itself per route in ``{q}:routers`` (member: host:pid, score: until
# when the announcement holds), refreshed at every maintenance, so ``status`` can tell whether
# *this route* has a router. CLIENT LIST cannot: it sees every router on the server.
ANNOUNCE_FOR_MS = 5_000
ROUTER_ID = f"{socket.gethostname()}:{os.getpid()}"
IDLE_MIN_S, IDLE_MAX_S = 0.005, 0.1
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0


@dataclass(frozen=True)
class RouteKeys:
    route: Route
    keys: RedisKeys


class Item(NamedTuple):
    """One decision, as route.lua takes it (a tuple: one is built per dead letter)."""

    op: str  # "r" retry / "p" park
    claim: str  # the claim id (lease) of the dead letter
    payload: str  # retry member or parked envelope
    arg: int | str  # due ms / parked id
    label: str  # tier (retry) or park reason, for metrics
    # A park: the envelope again under another id (route.lua found the id taken).
    rebuild: Callable[[str], str] | None = None


class _Decided(NamedTuple):
    """A decided batch, not yet sent to route.lua."""

    rk: RouteKeys
    route_batch: Any  # the registered route.lua script
    items: list[Item]
    args: list[Any]
    letters: list[bytes]  # the claimed dead letters (to recognise one held again)


def supervise(
    name: str, url: str, ctx: RouterContext, halt: threading.Event, body: Callable[[Any], None]
) -> None:
    """Run ``body(client)`` until it returns; reconnect with capped backoff when Redis drops.

    Errors that are not about the connection (a WRONGTYPE key, say) end the router with a
    ``BrokerError``: retrying them would only loop.
    """
    delay = BACKOFF_MIN_S
    while not halt.is_set():
        started = time.monotonic()
        try:
            client = connect(url, client_name=f"dlq-router-{name}")
        except BrokerUnavailable as exc:
            ctx.metrics.set_ready(False)
            ctx.log.warning("%s: %s; retrying in %.1fs", name, exc, delay)
            halt.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            continue
        try:
            body(client)
            return
        except CONNECTION_ERRORS as exc:
            ctx.metrics.set_ready(False)
            ctx.metrics.reconnects.inc()
            if time.monotonic() - started > 30:
                delay = BACKOFF_MIN_S  # it worked for a while: start the backoff again
            ctx.log.warning(
                "%s: lost Redis (%s); reconnecting in %.1fs", name, describe(exc, url), delay
            )
            halt.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        except rex.RedisError as exc:
            raise BrokerError(describe(exc, url)) from exc
        finally:
            client.close()


class Claimer:
    """Lease dead letters, decide, route them; recover expired leases now and then."""

    def __init__(self, topology: Topology, ctx: RouterContext, mover: Mover) -> None:
        self.ctx = ctx
        self.mover = mover
        self.routes = [RouteKeys(r, redis_keys(topology, r)) for r in topology.routes]
        self.batch = max(1, min(ctx.prefetch or DEFAULT_PREFETCH, MAX_CLAIM_BATCH))
        # Under a backlog the claimer pipelines (claim, decide and route of consecutive
        # batches overlap; Redis and Python work at the same time):
        #   read claim N+1 -> send route N -> send claim N+2 -> decide N+1 -> read route N
        # Batches are still routed one at a time, in claim order, each atomically.
        self._decided: _Decided | None = None
        self._routing: tuple[_Decided, DeferredCall] | None = None
        # route name -> (its next claim, on the wire; that batch's id; route.lua)
        self._claims: dict[str, tuple[DeferredCall, str, Any]] = {}
        self.held = HeldLetters(ctx)

    def run(self, client: RedisClient, halt: threading.Event) -> None:
        try:
            self._loop(client, halt)
            self.finish()  # what is claimed or decided is routed before the client closes
        finally:
            self._abandon()  # after a failure; the leases expire and are recovered

    def finish(self) -> None:
        """Route everything claimed or decided, and read every reply still on the wire."""
        self._send_decided()
        self._collect_route()
        while self._claims:
            name, (call, batch_id, route_batch) = self._claims.popitem()
            letters: list[bytes] = call.result()
            if letters:
                rk = next(r for r in self.routes if r.route.name == name)
                self._decided = self._decide_batch(rk, route_batch, batch_id, letters)
                self._send_decided()
                self._collect_route()

    def _abandon(self) -> None:
        self._decided = None
        routing, self._routing = self._routing, None
        calls = [call for call, _, _ in self._claims.values()]
        self._claims.clear()
        if routing is not None:
            calls.append(routing[1])
        for call in calls:
            call.abandon()

    def _send_decided(self) -> None:
        decided, self._decided = self._decided, None
        if decided is not None:
            self._collect_route()  # one route.lua call in flight at a time
            k = decided.rk.keys
            keys = [k.inflight, k.retry, k.seq, k.parked, k.parked_index, k.claims]
            self._routing = (decided, DeferredCall(decided.route_batch, keys, decided.args))

    def _collect_route(self) -> None:
        routing, self._routing = self._routing, None
        if routing is not None:
            decided, call = routing
            statuses, min_score = call.result()
            if min_score:
                self.mover.schedule(int(min_score))
            text = statuses.decode()
            if "c" in text:
                text = self._repark(decided, text)
            if "h" in text or self.held:
                ids = [item.arg for item in decided.items]
                self.held.note(decided.rk.route.name, text, decided.letters, ids)
            self.account(decided.rk, decided.items, text)

    def _repark(self, decided: _Decided, statuses: str) -> str:
        """Park again, under fresh ids, the items whose ``dlq-id`` was already parked.

        A producer can set any ``dlq-id``; route.lua never replaces a parked message, it
        answers "c" and leaves the dead letter leased. A fresh id is the router's own, so
        the second call parks it (a few rounds at most, for ids that collide again).
        """
        k = decided.rk.keys
        keys = [k.inflight, k.retry, k.seq, k.parked, k.parked_index, k.claims]
        result = list(statuses)
        for _ in range(3):
            todo = [i for i, s in enumerate(result) if s == "c"]
            if not todo:
                break
            args: list[Any] = list(decided.args[:4])
            for i in todo:
                item = decided.items[i]
                fresh = new_id()
                assert item.rebuild is not None  # only parks come back "c"
                self.ctx.log.warning(
                    "%s: a different message is already parked as %s; parking this one as %s",
                    decided.rk.route.name,
                    item.arg,
                    fresh,
                )
                decided.items[i] = item._replace(payload=item.rebuild(fresh), arg=fresh)
                args += [f"p {item.claim} {fresh}", decided.items[i].payload]
            again, _ = decided.route_batch(keys=keys, args=args)
            for i, status in zip(todo, again.decode(), strict=True):
                result[i] = status
        # Still taken after three fresh ids (never seen): the lease expires and the dead
        # letter is examined again, like a held one.
        return "".join("h" if s == "c" else s for s in result)

    def _claim(self, rk: RouteKeys, claim: Any, batch_id: str) -> DeferredCall:
        k = rk.keys
        lease_until = self.ctx.now_ms() + LEASE_MS
        args = [self.batch, lease_until, batch_id]
        return DeferredCall(claim, [k.dlq, k.inflight, k.claims], args)

    def _loop(self, client: RedisClient, halt: threading.Event) -> None:
        claim, route_batch = script(client, "claim"), script(client, "route")
        recover, expire = script(client, "recover"), script(client, "expire_parked")
        self.maintain(recover, expire)
        self.announce(client)
        last_maintenance = time.monotonic()
        idle = IDLE_MIN_S
        while not halt.is_set():
            claimed = [self.claim_route(rk, claim, route_batch) for rk in self.routes]
            self.ctx.metrics.set_ready(True)
            self.ctx.metrics.beat("claimer")
            if time.monotonic() - last_maintenance >= MAINTENANCE_EVERY_S:
                self.maintain(recover, expire)
                self.announce(client)
                last_maintenance = time.monotonic()
            if max(claimed) >= self.batch:
                idle = IDLE_MIN_S  # a backlog: claim again at once
            elif any(claimed):
                # Drained: wait a moment so a trickle is routed in batches, not one by one.
                idle = IDLE_MIN_S
                halt.wait(idle)
            else:
                # Redis cannot block on a list and lease into a zset in one step, so an idle
                # router polls, backing off to IDLE_MAX_S (one cheap EVALSHA per route).
                halt.wait(idle)
                idle = min(idle * 2, IDLE_MAX_S)

    def announce(self, client: RedisClient) -> None:
        """Say, per route, that a router serves it until now + ANNOUNCE_FOR_MS."""
        now = self.ctx.now_ms()
        for rk in self.routes:
            key = rk.keys.routers
            client.zadd(key, {ROUTER_ID: now + ANNOUNCE_FOR_MS})
            client.zremrangebyscore(key, "-inf", now)  # announcements of routers gone
            client.pexpire(key, ANNOUNCE_FOR_MS)

    def maintain(self, recover: Any, expire: Any) -> None:
        """Return expired leases to the dead-letter list; apply parking retention."""
        for rk in self.routes:
            k = rk.keys
            while True:
                n = int(
                    recover(
                        keys=[k.inflight, k.dlq, k.claims], args=[self.ctx.now_ms(), RECOVER_LIMIT]
                    )
                )
                if n:
                    self.ctx.log.info("%s: recovered %d dead letter(s) from leases", k.dlq, n)
                if n < RECOVER_LIMIT:
                    break
            retention = rk.route.parking.retention
            if retention is not None:
                cutoff = self.ctx.now_ms() - retention
                while True:
                    n = int(expire(keys=[k.parked, k.parked_index], args=[cutoff, RECOVER_LIMIT]))
                    if n:
                        self.ctx.log.info("%s: dropped %d past retention", k.parked, n)
                    if n < RECOVER_LIMIT:
                        break

    def claim_route(self, rk: RouteKeys, claim: Any, route_batch: Any) -> int:
        self._collect_route()  # sent before the last batch was decided: its reply is waiting
        pending = self._claims.pop(rk.route.name, None)
        if pending is None:
            batch_id = new_id()
            call = self._claim(rk, claim, batch_id)
        else:
            call, batch_id, _ = pending
        letters: list[bytes] = call.result()
        self._send_decided()  # Redis routes the previous batch while this one is decided
        if len(letters) >= self.batch:  # a backlog: claim the next batch meanwhile too
            next_id = new_id()
            self._claims[rk.route.name] = (self._claim(rk, claim, next_id), next_id, route_batch)
        if not letters:
            self._collect_route()
            return 0
        self._decided = self._decide_batch(rk, route_batch, batch_id, letters)
        if len(letters) < self.batch:  # no backlog, so nothing to overlap with: route now
            self._send_decided()
            self._collect_route()
        return len(letters)

    def _decide_batch(
        self, rk: RouteKeys, route_batch: Any, batch_id: str, letters: list[bytes]
    ) -> _Decided:
        now = self.ctx.now_ms()
        # claim.lua's claim ids: the batch id and the 1-based position, four digits.
        items = [
            self.decide(rk, f"{batch_id}{i:04d}", raw, now) for i, raw in enumerate(letters, 1)
        ]
        parking = rk.route.parking
        args: list[Any] = [now, parking.max_length or 0, parking.overflow, now + HOLD_MS]
        for item in items:
            args += [f"{item.op} {item.claim} {item.arg}", item.payload]
        return _Decided(rk, route_batch, items, args, letters)

    def decide(self, rk: RouteKeys, claim: str, raw: bytes, now: int) -> Item:
        """One dead letter's decision. Never raises: a failure on this message (a bug)
        parks it as ``router_error`` with the exception text, and routing goes on."""
        try:
            return self._decide(rk, claim, raw, now)
        except Exception as exc:
            return self._router_error(rk, claim, raw, now, exc)

    def _router_error(
        self, rk: RouteKeys, claim: str, raw: bytes, now: int, exc: Exception
    ) -> Item:
        detail = f"{type(exc).__name__}: {h.as_text(exc)}"
        route = rk.route
        self.ctx.log.error(
            "%s: the router failed on a dead letter (claim %s); parking it as router_error: %s",
            route.name,
            claim,
            detail,
            exc_info=exc,
        )

        def build(message_id: str) -> str:
            headers = park_headers({h.ROUTE: route.name}, "router_error", detail, now, message_id)
            try:  # the envelope as it came, with the park headers added
                env = envelope.parse(raw)
                base = {**env.headers, h.ROUTE: route.name}
                parked = park_headers(base, "router_error", detail, now, message_id)
                parked[h.ID] = message_id
                return env.with_headers(parked, new_delivery_tag=False)
            except Exception:  # that is what failed: keep the raw bytes, like malformed
                return envelope.wrap_malformed(raw, headers, route.queue)

        message_id = new_id()
        return Item("p", claim, build(message_id), message_id, "router_error", build)

    def _decide(self, rk: RouteKeys, claim: str, raw: bytes, now: int) -> Item:
        route, queue = rk.route, rk.route.queue
        message_id = new_id()
        try:
            env = envelope.parse(raw)
        except envelope.Malformed as exc:
            detail = str(exc)

            def wrap(message_id: str) -> str:
                headers = park_headers({h.ROUTE: route.name}, "malformed", detail, now, message_id)
                return envelope.wrap_malformed(raw, headers, queue)

            return Item("p", claim, wrap(message_id), message_id, "malformed", wrap)
        info = env.delivery_info
        failure = Failure(
            env.headers,
            origin_exchange=h.as_text(info.get("exchange")) or "",
            origin_routing_key=h.as_text(info.get("routing_key")) or queue,
            origin_queue=queue,
        )
        decision = decide(
            route,
            failure,
            now_ms=now,
            rng=self.ctx.rng,
            message_id=message_id,
            continuous_jitter=True,
        )
        if isinstance(decision, Park):
            parked = decision.headers

            def rebuild(message_id: str) -> str:
                return env.with_headers({**parked, h.ID: message_id}, new_delivery_tag=False)

            payload = env.with_headers(parked, new_delivery_tag=False)
            return Item("p", claim, payload, parked[h.ID], decision.reason, rebuild)
        step = env.priority_step() if self.mover.priorities else 0
        payload = str(step) + env.with_headers(decision.headers, new_delivery_tag=True)
        tier = format_duration_ms(route.retry.delays[decision.tier])
        return Item("r", claim, payload, decision.due_at_ms, tier)

    def account(self, rk: RouteKeys, items: list[Item], statuses: str) -> None:
        """Count a batch's outcomes (one counter update per label, not per message)."""
        m, name = self.ctx.metrics, rk.route.name
        outcomes = Counter(zip(statuses, (item.label for item in items), strict=True))
        for status, item in zip(statuses, items, strict=True):
            if status == "p":  # name the task and id of what was parked
                self.ctx.log.info(
                    "%s: parked %s: %s", name, describe_envelope(item.payload), item.label
                )
        for (status, label), n in outcomes.items():
            if status == "r":
                m.dead_letters.labels(name).inc(n)
                m.retries.labels(name, label).inc(n)
            elif status == "p":
                m.dead_letters.labels(name).inc(n)
                m.parked.labels(name, label).inc(n)
            elif status == "h":
                m.publish_failures.labels(name, "parking_full").inc(n)
                self.ctx.log.warning(
                    "%s: parking lot full (max_length %s, reject-publish); holding %d %s "
                    "dead letter(s) in %s and trying again in %.0fs",
                    name,
                    rk.route.parking.max_length,
                    n,
                    label,
                    rk.keys.inflight,
                    HOLD_MS / 1000,
                )
            else:
                self.ctx.log.info(
                    "%s: %d lease(s) lost to another router, which routes them", name, n
                )


def _wait_for_threads(
    threads: list[threading.Thread], halt: threading.Event, ctx: RouterContext
) -> bool:
    """Wait for the loops to end, as on RabbitMQ: after the first signal at most
    ``ctx.shutdown_timeout`` seconds, after a second one not at all. False when they were
    left running (a call hanging on Redis, say); what they hold stays leased and returns to
    the dead-letter list when the lease expires, so nothing is lost."""
    deadline: float | None = None
    while any(t.is_alive() for t in threads):
        if ctx.abort.is_set():
            ctx.log.warning(
                "second signal: exiting now; leased dead letters return to the dead-letter "
                "list when their lease expires (%.0fs)",
                LEASE_MS / 1000,
            )
            return False
        if deadline is None and (ctx.stop.is_set() or halt.is_set()):
            deadline = time.monotonic() + ctx.shutdown_timeout
        if deadline is not None and time.monotonic() > deadline:
            ctx.log.warning(
                "still busy %.0fs after the stop (Redis not answering?); exiting anyway, "
                "leased dead letters return to the dead-letter list when their lease expires",
                ctx.shutdown_timeout,
            )
            return False
        for t in threads:
            t.join(0.1)
    return True


def run(topology: Topology, ctx: RouterContext) -> None:
    """Route dead letters of every route until ``ctx.stop`` is set, then return.

    On stop, the batch in flight is finished (claim and route are each atomic) before the
    threads return; anything still leased is recovered by the next router after the lease.
    """
    halt = threading.Event()
    priorities = not topology.url.split("://", 1)[0].endswith("+cluster")
    mover = Mover(topology, ctx, priorities=priorities)
    claimer = Claimer(topology, ctx, mover)
    failure: list[BaseException] = []

    def guarded(name: str, body: Callable[[Any], None]) -> None:
        try:
            supervise(name, topology.url, ctx, halt, body)
        except BaseException as exc:
            failure.append(exc)
            halt.set()

    def watch_stop() -> None:
        while not halt.is_set():
            if ctx.stop.wait(0.5):
                halt.set()
        mover.wake()

    threads = [
        threading.Thread(target=watch_stop, name="dlq-router-stop", daemon=True),
        threading.Thread(
            target=guarded,
            args=("mover", lambda c: mover.run(c, halt)),
            name="dlq-router-mover",
            daemon=True,
        ),
        threading.Thread(
            target=guarded,
            args=("claimer", lambda c: claimer.run(c, halt)),
            name="dlq-router-claimer",
            daemon=True,
        ),
    ]
    for t in threads:
        t.start()
    ctx.log.info("routing %d route(s) on Redis", len(claimer.routes))
    if not _wait_for_threads(threads, halt, ctx):
        ctx.metrics.set_ready(False)
        return  # the threads are daemons, blocked in a call: the process exit ends them
    ctx.metrics.set_ready(False)
    if failure:
        raise failure[0]
    ctx.log.info("router stopped")
