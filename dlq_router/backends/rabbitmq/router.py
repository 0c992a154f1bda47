"""``dlq-router run`` on RabbitMQ: consume every DLQ, republish to a tier or park, then ack.

One asynchronous connection (pika ``SelectConnection``) and one channel in confirm mode.
Each dead letter is decided by ``policy.decide`` and republished with ``mandatory``; its
delivery is acked only once the broker confirmed the republish, so a crash in between
duplicates a message and never loses one. Confirms are asynchronous: up to ``prefetch``
dead letters are in flight at once, and a confirmed prefix is acked with one
``multiple=True`` frame.

Memory: besides the count window (prefetch), a byte budget on the bodies held pauses
consuming and narrows the window when dead letters are large (see "the byte budget").

Content headers arrive as bytes (rawframes.py): the router reads only ``x-death`` and its
own ``dlq-*`` headers and republishes every other header byte for byte (wire.py). No
message content can drop the connection.

What the broker refuses is never dropped: a retry returned as unroutable is parked
(reason ``unroutable``); a park that is returned or nacked (parking queue missing or full)
is *held*: the dead letter stays unacked, in memory, and its park is published again after
a growing delay. Held dead letters do not keep the DLQ's consumer window: past half of it,
that route consumes again with a fresh window (the held ones stay unacked on the channel),
so retries behind them keep flowing. An exception while routing one dead letter parks it
with reason ``router_error`` (the guard, ``_park_error``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions as pe
from pika import spec

from dlq_router import headers as h
from dlq_router.backends.base import RouterContext
from dlq_router.backends.rabbitmq import message, rawframes, wire
from dlq_router.backends.rabbitmq.budget import ByteBudget
from dlq_router.backends.rabbitmq.coalesce import Coalescer
from dlq_router.backends.rabbitmq.connection import connect, describe, parameters_list
from dlq_router.durations import format_duration_ms
from dlq_router.errors import BrokerUnavailable, UsageError
from dlq_router.ids import new_id
from dlq_router.names import RabbitNames, rabbit_names
from dlq_router.parking.messages import describe_message
from dlq_router.policy import PARK_REASONS, Decision, Park, Retry, decide, park_headers
from dlq_router.topology import Route, Topology

TICK = 0.2  # how often the ioloop looks at the stop flags
HOLD_FIRST, HOLD_MAX = 0.5, 30.0  # delay before a held park is published again, doubling
# Dead letters held in memory at once (all routes), and at most half the byte budget of
# bodies. Past either, a held dead letter is requeued to the DLQ after its delay instead
# (it comes back at the head: past these bounds, retries behind held parks wait).
MAX_HELD = 10_000
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0
CLOSE_TIMEOUT = 5.0  # how long a clean close may take before the socket is just dropped
HEALTHY_AFTER = 10.0  # consuming this long resets the reconnect backoff
HOLD_LOG_EVERY = 5.0  # at most one "held" warning per route per this many seconds
# Dead letters in flight (basic.qos). Confirms of persistent messages come in batches as
# the broker syncs its message store, so the window must cover rate x confirm latency:
# measured on RabbitMQ 3.10, 500 and 1,000 reached 5.8-6.8k msg/s and 2,000 reached
# 8.6-9.6k (more gains little). Memory is capped by the byte budget below, not by this.
DEFAULT_PREFETCH = 2_000
DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024  # bodies held at once (budget.py)

# State of a delivery (DLQ delivery tag) until it is acked or requeued.
IN_FLIGHT, DONE, WAITING = 0, 1, 2  # WAITING: held, or received while draining


@dataclass(eq=False)
class _Route:
    """One route's names and its pre-bound metric children (labels() is not free)."""

    route: Route
    names: RabbitNames
    metrics: Any = field(repr=False)
    hold_streak: int = 0  # requeued holds (past the in-memory bounds) in a row
    held_since_log: int = 0
    last_hold_log: float = 0.0
    consumer_tag: str | None = None
    consumer_held: int = 0  # held dead letters delivered to the current consumer
    # Counted here per message and added to the metrics after each read (``_count``):
    # a Prometheus increment takes a lock, twice per dead letter.
    new_dead_letters: int = 0
    new_retries: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        name = self.route.name
        m = self.metrics
        self.dead_letters = m.dead_letters.labels(name)
        self.retries = [
            m.retries.labels(name, format_duration_ms(d)) for d in self.route.retry.delays
        ]
        self.parked = {reason: m.parked.labels(name, reason) for reason in PARK_REASONS}
        self.failures = {
            kind: m.publish_failures.labels(name, kind)
            for kind in ("returned", "nack", "oversized", "error")
        }
        self.held = m.held.labels(name)
        self.held_too_long = m.held_too_long.labels(name)
        self.new_retries = [0] * len(self.retries)

    def count(self) -> None:
        if self.new_dead_letters:
            self.dead_letters.inc(self.new_dead_letters)
            self.new_dead_letters = 0
        for tier, n in enumerate(self.new_retries):
            if n:
                self.retries[tier].inc(n)
                self.new_retries[tier] = 0


@dataclass(eq=False, slots=True)
class _Publish:
    """A republish waiting for its confirm, and what is needed to redo it as a park."""

    tag: int
    route: _Route
    decision: Decision
    props: wire.Properties
    table: wire.Table
    body: bytes
    consumer: str
    returned: bool = False


def _task_headers(table: wire.Table) -> dict[str, Any]:
    """Celery's ``task`` and ``id`` headers, read from the foreign entries for the park log
    line (parks are rare; the hot path never decodes foreign headers)."""
    found: dict[str, Any] = {}
    for run in table.foreign:
        entries, _ = wire.scan(run, 0, len(run))
        for name, _start, value, end in entries:
            if name in (b"task", b"id"):
                found[name.decode()] = wire.read_value(run, value, end)
    return found


@dataclass(eq=False, slots=True)
class _Held:
    """A dead letter whose park was not confirmed: kept unacked, published again later."""

    publish: _Publish
    since: float
    tries: int = 0
    reported_at: float = 0.0  # last "held too long" report (0: none yet)


def preflight(topology: Topology, client_name: str) -> None:
    """Fail fast (exit 2, one line) on what no reconnect will fix: credentials, vhost,
    permissions, or a topology that was never declared."""
    conn = connect(topology.url, client_name=client_name)
    missing: list[str] = []
    try:
        ch = conn.channel()
        for route in topology.routes:
            names = rabbit_names(topology, route)
            lanes = [lane.queue for tier in names.tiers for lane in tier.lanes]
            for queue in [names.dlq, *lanes, names.parking]:
                try:
                    ch.queue_declare(queue, passive=True)
                except pe.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise BrokerUnavailable(
                            f"queue {queue!r}: {exc.reply_code} {exc.reply_text}"
                        ) from exc
                    missing.append(queue)
                    ch = conn.channel()
            # Publishing to a missing exchange closes the channel (not a basic.return).
            for exchange in (names.retry_exchange, names.parking_exchange):
                try:
                    ch.exchange_declare(exchange, passive=True)
                except pe.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise BrokerUnavailable(
                            f"exchange {exchange!r}: {exc.reply_code} {exc.reply_text}"
                        ) from exc
                    missing.append(exchange)
                    ch = conn.channel()
        if not missing:
            check_permissions(conn, topology)
    except pe.ChannelClosedByBroker as exc:  # 403 of a permission probe
        raise BrokerUnavailable(describe(exc, topology.url)) from exc
    except (pe.AMQPConnectionError, OSError) as exc:
        raise BrokerUnavailable(describe(exc, topology.url)) from exc
    finally:
        if conn.is_open:
            conn.close()
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"{missing[0]!r}{more} does not exist: run `dlq-router declare` first")


def check_permissions(conn: pika.BlockingConnection, topology: Topology) -> None:
    """Write on the retry and parking exchanges, tried where it has no effect: a publish with
    a routing key bound to nothing, which the broker drops. A refusal raises a 403 here,
    before the run loop, where no reconnect would fix it. (Read on the DLQ is not probed: a
    probe would have to receive a dead letter, and pika decodes its headers, which a hostile
    one can make fail; the run loop reads them through its raw-frame path.)"""
    ch = conn.channel()
    ch.confirm_delivery()
    for route in topology.routes:
        names = rabbit_names(topology, route)
        for exchange in (names.retry_exchange, names.parking_exchange):
            ch.basic_publish(exchange, "dlq-router.permission-check", b"")
    ch.close()


class Router:
    """The run loop: connect, consume, route; reconnect with backoff until stopped."""

    def __init__(self, topology: Topology, ctx: RouterContext, client_name: str) -> None:
        self.ctx = ctx
        self.log = ctx.log
        self.url = topology.url
        self.debug = self.log.isEnabledFor(logging.DEBUG)  # per-message lines only then
        # Several hosts (``?hosts=``): each reconnect tries the next one (cluster failover).
        self.params_list = parameters_list(topology.url, client_name=client_name)
        self.params = self.params_list[0]
        self.user = self.params.credentials.username
        self.routes = [_Route(r, rabbit_names(topology, r), ctx.metrics) for r in topology.routes]
        self.budget = ByteBudget(
            ctx.max_in_flight_bytes or DEFAULT_MAX_IN_FLIGHT_BYTES,
            ctx.prefetch or DEFAULT_PREFETCH,
            len(self.routes),
        )
        self.connection: Any = None
        self.channel: Any = None
        self.publisher: rawframes.Publisher | None = None
        self.inbound: rawframes.Inbound | None = None
        self.generation = 0
        self._reset()

    def _reset(self) -> None:
        self.pending: dict[int, _Publish] = {}  # publish sequence number -> publish
        self.deliveries: dict[int, int] = {}  # DLQ delivery tag -> state, in tag order
        # Both are walked from the front by number, not by ``next(iter(d))``: a dict keeps
        # the slots of popped keys until it resizes and an iterator steps over all of them,
        # so the first key after n pops from the front costs n steps (4 % of the router's
        # CPU in a profile).
        self.confirmed_upto = 0  # every publish up to this seq is settled
        self.ack_from = 1  # the lowest delivery tag that may still be in ``deliveries``
        self.top_tag = 0  # the highest delivery tag seen on this channel
        self.budget.reset()
        self.ctx.metrics.paused.set(0)
        self.seq = 0
        self.settled = False  # confirms settled dead letters that are not acked yet
        self.held: dict[int, _Held] = {}  # DLQ delivery tag -> held dead letter
        self.held_bytes = 0
        for r in self.routes:
            r.consumer_tag = None
            r.consumer_held = 0
            r.held.set(0)
        self.consuming = False
        self.consuming_since = 0.0
        self.draining = False
        self.drain_deadline = 0.0
        self.closing = False
        self.close_deadline = 0.0
        self.frame_max = pika.spec.FRAME_MAX_SIZE

    # ---- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        delay = RECONNECT_FIRST
        while not self.ctx.stop.is_set():
            self.generation += 1
            self._reset()
            self.params = self.params_list[(self.generation - 1) % len(self.params_list)]
            self.connection = pika.SelectConnection(
                self.params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            Coalescer.install(self.connection)
            # Deliveries and confirms read from the bytes, headers kept raw (rawframes.py).
            self.inbound = rawframes.install(self.connection)
            self.inbound.after = self._after_read
            self.connection.ioloop.call_later(TICK, self._tick)
            try:
                self.connection.ioloop.start()
            finally:
                self._count()
                self.ctx.metrics.set_ready(False)
                self.connection.ioloop.close()
            if self.ctx.stop.is_set():
                break
            if self.consuming and time.monotonic() - self.consuming_since > HEALTHY_AFTER:
                delay = RECONNECT_FIRST  # it worked for a while: start the backoff over
            upcoming = self.params_list[self.generation % len(self.params_list)]
            self.log.warning("reconnecting to %s:%s in %.1fs", upcoming.host, upcoming.port, delay)
            self.ctx.metrics.reconnects.inc()
            if self.ctx.stop.wait(delay):
                break
            delay = min(delay * 2, RECONNECT_MAX)
        self.log.info("router stopped")

    def _count(self) -> None:
        for r in self.routes:
            r.count()

    def _after_read(self) -> None:
        """After the frames of one socket read: ack what their confirms settled, with one
        frame for the whole confirmed prefix, and update the counters."""
        if self.settled:
            self.settled = False
            if self.channel is not None and self.channel.is_open:
                self._flush()
        self._count()

    def _tick(self) -> None:
        """Runs every TICK seconds until the ioloop stops: the only reader of the flags."""
        self._after_read()  # in case confirms came through pika's own reader
        self.ctx.metrics.in_flight_bytes.set(self.budget.held)
        self._maybe_widen()
        if self.ctx.abort.is_set():
            # Second signal: no handshake, no waiting. Unacked dead letters return to the
            # DLQ when the broker sees the socket close (at the latest, on process exit).
            self.log.warning("second signal: closing now; unacked dead letters stay in the DLQ")
            self._drop()
            return
        if self.ctx.stop.is_set():
            now = time.monotonic()
            if not self.draining:
                self._begin_drain()
            if not self.closing:
                if not self.pending:
                    self._finish()
                elif now > self.drain_deadline:
                    self.log.warning(
                        "%d republish(es) still unconfirmed after %.0fs; their dead letters "
                        "stay in the DLQ",
                        len(self.pending),
                        self.ctx.shutdown_timeout,
                    )
                    self._finish()
            elif now > self.close_deadline:
                self.log.warning("the broker did not answer the close; dropping the connection")
                self._drop()
                return
        self.connection.ioloop.call_later(TICK, self._tick)

    def _drop(self) -> None:
        """Close the socket without the AMQP handshake; the broker returns every unacked
        dead letter to the DLQ when it sees the socket go. This is how pika itself ends a
        connection on a fatal error (``_terminate_stream``); ``_on_closed`` then stops the
        ioloop. The timer is a fallback should a pika version lack that hook."""
        terminate = getattr(self.connection, "_terminate_stream", None)
        if terminate is not None and not (self.connection.is_closed):
            with contextlib.suppress(Exception):  # best effort on a connection being dropped
                terminate(pe.ConnectionClosedByClient(320, "dlq-router: aborted"))
        self.connection.ioloop.call_later(1.0, self.connection.ioloop.stop)

    def _begin_drain(self) -> None:
        self.log.info("stopping: no new dead letters, waiting for %d confirm(s)", len(self.pending))
        self.draining = True
        self.drain_deadline = time.monotonic() + self.ctx.shutdown_timeout
        self.ctx.metrics.set_ready(False)
        if self.channel is not None and self.channel.is_open:
            self._cancel_consumers()

    def _finish(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_deadline = time.monotonic() + CLOSE_TIMEOUT
        if self.channel is not None and self.channel.is_open:
            self._flush()
        self._close()

    def _close(self) -> None:
        if self.connection.is_closing or self.connection.is_closed:
            self.connection.ioloop.stop()
            return
        try:
            self.connection.close()
        except pe.ConnectionWrongStateError:  # still opening: nothing to close politely
            self.connection.ioloop.stop()

    # ---- connection and channel callbacks --------------------------------------------

    def _on_open(self, connection: Any) -> None:
        self.frame_max = connection.params.frame_max
        rawframes.read_more(connection)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, _connection: Any, exc: BaseException) -> None:
        self.log.warning("cannot connect: %s", describe(exc, self.url))
        self.connection.ioloop.stop()

    def _on_closed(self, _connection: Any, reason: BaseException) -> None:
        self.channel = None
        if not self.ctx.stop.is_set():
            self.log.warning("connection lost: %s", describe(reason, self.url))
        self.connection.ioloop.stop()

    def _on_channel_open(self, channel: Any) -> None:
        self.channel = channel
        self.publisher = rawframes.Publisher(self.connection, channel)
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        if self.inbound is not None:
            self.inbound.channel = channel.channel_number
            self.inbound.confirms[channel.channel_number] = self._confirmed
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        # After a reconnect this is the window that fits the bodies seen so far.
        self.channel.basic_qos(prefetch_count=self.budget.window, callback=self._on_qos)

    def _on_qos(self, _frame: Any) -> None:
        self._start_consumers(on_ok=self._on_consume_ok)

    def _start_consumers(self, on_ok: Any = None) -> None:
        """One consumer per route's DLQ, with the prefetch of the last basic.qos."""
        for r in self.routes:
            self._start_consumer(r, on_ok)

    def _start_consumer(self, r: _Route, on_ok: Any = None) -> None:
        tag = r.consumer_tag = self.channel.basic_consume(
            r.names.dlq, functools.partial(self._on_message, r), callback=on_ok
        )
        if self.inbound is not None:  # its deliveries skip pika's frame objects
            self.inbound.register(tag, functools.partial(self._on_delivery, r))
        r.consumer_held = 0

    def _cancel(self, r: _Route) -> None:
        if r.consumer_tag is None:
            return
        if self.inbound is not None:
            self.inbound.unregister(r.consumer_tag)  # late deliveries: pika rejects them
        self.channel.basic_cancel(r.consumer_tag)
        r.consumer_tag = None

    def _on_consume_ok(self, _frame: Any) -> None:
        if self.consuming or any(r.consumer_tag is None for r in self.routes):
            return
        self.consuming = True
        self.consuming_since = time.monotonic()
        self.ctx.metrics.set_ready(True)
        queues = ", ".join(r.names.dlq for r in self.routes)
        self.log.info("consuming %d dead-letter queue(s): %s", len(self.routes), queues)

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        # A channel closed by the broker (a DLQ deleted under us, say): start over on a
        # fresh connection, with backoff. Deliveries in flight return to the DLQ.
        self.channel = None
        if not (self.connection.is_closing or self.connection.is_closed):
            self.log.warning("channel closed: %s", reason)
            self.connection.close()

    # ---- the hot path ----------------------------------------------------------------

    def _on_message(
        self, r: _Route, _ch: Any, method: Any, props: wire.Properties, body: bytes
    ) -> None:
        """A delivery through pika (before ``Inbound`` knows the consumer)."""
        self._on_delivery(r, method.delivery_tag, method.consumer_tag, props, body)

    def _on_delivery(
        self, r: _Route, tag: int, consumer: str, props: wire.Properties, body: bytes
    ) -> None:
        if tag > self.top_tag:
            self.top_tag = tag
        if self.budget.add(tag, len(body)) and not self.draining:
            self._pause()
        if self.draining:
            self.deliveries[tag] = WAITING  # returns to the DLQ when the channel closes
            return
        self.deliveries[tag] = IN_FLIGHT
        r.new_dead_letters += 1
        fields, table_bytes = props.fields, props.table  # for the guard (carry_over copies)
        try:
            table = wire.Table(props.table)
            decision = decide(
                r.route,
                message.failure(table),
                now_ms=self.ctx.now_ms(),
                rng=self.ctx.rng,
                message_id=new_id,  # called only for a park
                continuous_jitter=False,
            )
            message.carry_over(props, table, decision.headers, self.user)
            self._publish(_Publish(tag, r, decision, props, table, body, consumer))
        except Exception as exc:  # the guard: one message must never stop a route
            original = wire.Properties(fields, table_bytes, props.flag_tail)
            original.unreadable = props.unreadable
            self._park_error(r, tag, original, body, consumer, exc)

    def _park_error(
        self,
        r: _Route,
        tag: int,
        props: wire.Properties,
        body: bytes,
        consumer: str,
        exc: Exception,
    ) -> None:
        """Park a dead letter the router failed on (reason ``router_error``, the exception in
        ``dlq-park-detail``): its headers as they came (foreign ones byte for byte) plus the
        park headers. Held, like any park, until the broker confirms it."""
        if self.channel is None or not self.channel.is_open:
            return  # the delivery went with the channel: it is back in the DLQ
        detail = h.truncate(f"{type(exc).__name__}: {exc}", 512)
        self.log.error(
            "cannot route message_id=%s from %s: %s; parking it as router_error",
            props.message_id,
            r.names.dlq,
            detail,
        )
        self.log.debug("router_error traceback", exc_info=exc)
        extra: dict[str, Any] = {}
        try:
            table = wire.Table(props.table)
        except Exception:  # keep the table whole and only append the park headers
            table = wire.Table(None)
            table.foreign = [props.table or b""]
        if props.unreadable is not None:
            extra["dlq-unreadable-properties"] = props.unreadable
        headers = park_headers(
            {**table.ours, **extra}, "router_error", detail, self.ctx.now_ms(), new_id()
        )
        headers[h.ROUTE] = r.route.name
        for stale in (h.RETRY_DUE_AT, h.RETRY_DELAY_MS, h.RETRY_TIER, h.PUBLISH_ID):
            headers.pop(stale, None)
        with contextlib.suppress(Exception):
            message.carry_over(props, table, headers, self.user)
        park = Park(0, "router_error", detail, headers)
        self._safe_publish(_Publish(tag, r, park, props, table, body, consumer))

    def _safe_publish(self, p: _Publish) -> None:
        """``_publish`` outside the delivery callback; a failure holds the dead letter."""
        try:
            self._publish(p)
        except Exception as exc:
            if self.channel is None or not self.channel.is_open:
                return
            p.route.failures["error"].inc()
            self.log.error("cannot publish message_id=%s: %r", p.props.message_id, exc)
            self._hold(p, "error")

    def _publish(self, p: _Publish) -> None:
        r, props, decision = p.route, p.props, p.decision
        seq = self.seq + 1
        out = decision.headers
        out[h.PUBLISH_ID] = seq
        props.table = p.table.splice(out)
        (encoded,) = props.encode()
        if len(encoded) + message.HEADER_FRAME_OVERHEAD > self.frame_max:
            decision = p.decision = self._shrink(p, seq)
            (encoded,) = props.encode()
            if len(encoded) + message.HEADER_FRAME_OVERHEAD > self.frame_max:
                r.failures["oversized"].inc()
                self._hold(p, "oversized")
                return
        if isinstance(decision, Retry):
            exchange = r.names.retry_exchange
            key = r.names.tiers[decision.tier].lanes[decision.lane].queue
        else:
            exchange, key = r.names.parking_exchange, r.names.parking
        p.returned = False
        if self.publisher is None:
            raise pe.ChannelWrongStateError("no open channel")
        self.publisher.publish(exchange, key, p.body, encoded, mandatory=True)
        self.seq = seq
        self.pending[seq] = p

    def _shrink(self, p: _Publish, seq: int) -> Decision:
        """Headers too big for one frame: drop our optional text, else park with the fewest
        router headers (reason ``oversized``), else also drop the largest foreign headers."""
        r, props, decision = p.route, p.props, p.decision
        props.table = p.table.splice(message.slim(decision.headers))
        if message.fits(props, self.frame_max):
            self.log.warning("dropped router text headers to fit frame_max=%d", self.frame_max)
            return decision
        minimal = message.minimal_park(
            decision.headers, r.route.name, decision.attempts, self.ctx.now_ms(), new_id()
        )
        minimal[h.PUBLISH_ID] = seq
        props.table = p.table.splice(minimal)
        self.log.warning(
            "headers of a dead letter from %s do not fit frame_max=%d; parking it as oversized",
            r.names.dlq,
            self.frame_max,
        )
        if not message.fits(props, self.frame_max) and message.drop_to_fit(
            props, p.table, minimal, self.frame_max
        ):
            self.log.warning(
                "foreign headers of message_id=%s dropped to fit its park into one frame: %s",
                props.message_id,
                minimal[message.DROPPED_HEADERS],
            )
        return Park(decision.attempts, "oversized", "headers exceed frame_max", minimal)

    def _on_return(self, _ch: Any, method: Any, props: wire.Properties, _body: bytes) -> None:
        # basic.return arrives before the confirm of the same publish.
        seq = wire.publish_id(props.table)
        publish = None if seq is None else self.pending.get(seq)
        if publish is None:
            return
        publish.returned = True
        publish.route.failures["returned"].inc()
        self.log.warning(
            "%s returned by the broker: %s %s (exchange %r, key %r)",
            "retry" if isinstance(publish.decision, Retry) else "park",
            method.reply_code,
            method.reply_text,
            method.exchange,
            method.routing_key,
        )

    def _on_confirm(self, frame: Any) -> None:
        """A confirm through pika (``Inbound`` reads them on the router's channel)."""
        m = frame.method
        self._confirmed(isinstance(m, spec.Basic.Ack), m.delivery_tag, m.multiple)

    def _confirmed(self, ack: bool, tag: int, multiple: bool) -> None:
        pending = self.pending
        if multiple:
            # Sequence numbers are consecutive; those confirmed singly leave gaps.
            seq = self.confirmed_upto + 1
            if tag > self.confirmed_upto:
                self.confirmed_upto = tag
            while seq <= tag:
                publish = pending.pop(seq, None)
                if publish is not None:
                    self._settle(publish, ack)
                seq += 1
        else:
            publish = pending.pop(tag, None)
            if publish is not None:
                self._settle(publish, ack)
        self.settled = True  # acked after this read (_after_read): one ack for many confirms
        if self.draining and not self.pending:
            self._finish()

    def _settle(self, p: _Publish, ack: bool) -> None:
        r, decision = p.route, p.decision
        if not ack:
            r.failures["nack"].inc()
            self._hold(p, "nack")
            return
        if p.returned:
            if isinstance(decision, Retry):
                self._park_unroutable(p)
            else:
                self._hold(p, "returned")
            return
        if self.held:
            self._release(p)
        if isinstance(decision, Retry):
            r.new_retries[decision.tier] += 1
            if self.debug:
                self.log.debug(
                    "retry message_id=%s attempt %d on %s tier, due in %d ms",
                    p.props.message_id,
                    decision.attempts,
                    r.route.name,
                    decision.delay_ms,
                )
        else:
            r.parked[decision.reason].inc()
            self.log.info(
                "parked %s from %s: %s (%s)",
                describe_message(_task_headers(p.table), p.props.message_id),
                r.names.dlq,
                decision.reason,
                decision.detail,
            )
        self.deliveries[p.tag] = DONE

    def _park_unroutable(self, p: _Publish) -> None:
        assert isinstance(p.decision, Retry)
        base = {
            k: v
            for k, v in p.decision.headers.items()
            if k not in (h.RETRY_DUE_AT, h.RETRY_DELAY_MS, h.RETRY_TIER, h.PUBLISH_ID)
        }
        lane = p.route.names.tiers[p.decision.tier].lanes[p.decision.lane].queue
        detail = f"retry queue {lane!r} did not accept the message"
        headers = park_headers(base, "unroutable", detail, self.ctx.now_ms(), new_id())
        park = Park(p.decision.attempts, "unroutable", detail, headers)
        self._safe_publish(_Publish(p.tag, p.route, park, p.props, p.table, p.body, p.consumer))

    # ---- acks and holds --------------------------------------------------------------

    def _flush(self) -> None:
        """Ack the confirmed prefix with one frame; behind a held head, ack one by one."""
        d = self.deliveries
        last = 0
        tag, top = self.ack_from, self.top_tag
        while tag <= top:  # (tags pika rejected, or requeued, are gaps)
            state = d.get(tag)
            if state is not None:
                if state != DONE:
                    break
                del d[tag]
                last = tag
                self.budget.release(tag)
            tag += 1
        self.ack_from = tag
        if last:
            self.channel.basic_ack(last, multiple=True)
        head = tag if tag in d else next(iter(d), 0)
        if d and (d[head] == WAITING or head in self.held):
            # multiple=True would also ack the held head: ack what is done individually.
            for tag in [t for t, state in d.items() if state == DONE]:
                del d[tag]
                self.budget.release(tag)
                self.channel.basic_ack(tag)
        self._maybe_resume()

    def _hold(self, p: _Publish, why: str) -> None:
        """Keep a dead letter unacked and publish its park again later; never drop, never
        spin, never let held ones fill the DLQ consumer's window (``_free_window``)."""
        r, tag = p.route, p.tag
        self.deliveries[tag] = WAITING
        now = time.monotonic()
        held = self.held.get(tag)
        if held is None:
            size = self.budget.sizes.get(tag, 0)
            if len(self.held) >= MAX_HELD or self.held_bytes + size > self.budget.max_bytes // 2:
                self._hold_in_dlq(r, tag, why)
                return
            self.held_bytes += size
            held = self.held[tag] = _Held(p, now)
            r.held.inc()
            if p.consumer == r.consumer_tag:
                r.consumer_held += 1
        held.publish = p
        held.tries += 1
        delay = min(HOLD_FIRST * 2 ** min(held.tries - 1, 16), HOLD_MAX)
        self.connection.ioloop.call_later(
            delay, functools.partial(self._retry_held, self.generation, tag)
        )
        limit = self.ctx.hold_alert_after
        if now - held.since >= limit and now - held.reported_at >= limit:
            held.reported_at = now  # reported again every ``limit`` while it stays held
            r.held_too_long.inc()
            self.log.error(
                "message_id=%s from %s held for %.0fs (%s): its park is still not confirmed; "
                "it stays unacked and is tried again, never dropped",
                p.props.message_id,
                r.names.dlq,
                now - held.since,
                why,
            )
        r.held_since_log += 1
        if now - r.last_hold_log >= HOLD_LOG_EVERY:
            self.log.warning(
                "holding %d dead letter(s) of %s in the DLQ (%s); next retry in %.1fs",
                r.held_since_log,
                r.names.dlq,
                why,
                delay,
            )
            r.held_since_log = 0
            r.last_hold_log = now
        self._free_window(r)

    def _hold_in_dlq(self, r: _Route, tag: int, why: str) -> None:
        """Past the in-memory bounds: requeue the dead letter after a growing delay."""
        delay = min(HOLD_FIRST * 2 ** min(r.hold_streak, 16), HOLD_MAX)
        r.hold_streak += 1
        self.connection.ioloop.call_later(
            delay, functools.partial(self._requeue, self.generation, tag)
        )
        now = time.monotonic()
        r.held_since_log += 1
        if now - r.last_hold_log >= HOLD_LOG_EVERY:
            self.log.warning(
                "holding %d dead letter(s) of %s in the DLQ (%s, %d held in memory); "
                "requeued in %.1fs",
                r.held_since_log,
                r.names.dlq,
                why,
                len(self.held),
                delay,
            )
            r.held_since_log = 0
            r.last_hold_log = now

    def _requeue(self, generation: int, tag: int) -> None:
        if generation != self.generation or self.channel is None or not self.channel.is_open:
            return  # that channel is gone; the message is back in the DLQ already
        if self.deliveries.pop(tag, None) is None:
            return
        self.budget.release(tag)
        self.channel.basic_nack(tag, multiple=False, requeue=True)
        self._flush()

    def _free_window(self, r: _Route) -> None:
        """Held dead letters keep their slots in the consumer's prefetch window; past half
        of it, consume the route again: RabbitMQ counts a consumer's prefetch per consumer
        tag, so a new consumer has a whole window while the held ones stay unacked on the
        channel (cancelling does not requeue them)."""
        if r.consumer_held * 2 < max(1, self.budget.window) or r.consumer_tag is None:
            return
        if self.draining or self.budget.paused or self.channel is None:
            return
        if len(self.held) >= MAX_HELD:
            return  # the bound: retries behind wait until parks are confirmed again
        self._cancel(r)
        self._start_consumer(r)

    def _retry_held(self, generation: int, tag: int) -> None:
        if generation != self.generation or self.channel is None or not self.channel.is_open:
            return  # that channel is gone; the message is back in the DLQ already
        held = self.held.get(tag)
        if held is None or self.draining:
            return  # draining: it stays unacked and returns to the DLQ on close
        self.deliveries[tag] = IN_FLIGHT
        self._safe_publish(held.publish)

    def _release(self, p: _Publish) -> None:
        """A held dead letter's park was confirmed."""
        held = self.held.pop(p.tag, None)
        if held is None:
            return
        r = p.route
        r.held.dec()
        r.hold_streak = 0
        self.held_bytes -= self.budget.sizes.get(p.tag, 0)
        if p.consumer == r.consumer_tag:
            r.consumer_held -= 1
        if held.reported_at:
            self.log.warning(
                "message_id=%s from %s released after %.0fs held",
                p.props.message_id,
                r.names.dlq,
                time.monotonic() - held.since,
            )

    # ---- the byte budget (budget.py counts) -------------------------------------------
    #
    # RabbitMQ applies a per-consumer prefetch only to consumers created after it (a
    # channel-wide one would apply at once, but quorum queues refuse it), so the window is
    # changed by consuming again: cancel, basic.qos, basic.consume. Deliveries still on the
    # wire for a cancelled consumer are rejected back to the DLQ by pika (requeued; the
    # router never sees them): a change costs at most one window of redeliveries and loses
    # nothing.

    def _cancel_consumers(self) -> None:
        for r in self.routes:
            self._cancel(r)

    def _consume(self, window: int) -> None:
        self.budget.consuming_with(window, time.monotonic())
        self.channel.basic_qos(prefetch_count=window)  # for the consumers created next
        self._start_consumers()

    def _pause(self) -> None:
        """Over the budget: stop deliveries until what is held is down to half of it."""
        b = self.budget
        b.paused = True
        self.ctx.metrics.paused.set(1)
        self.log.info(
            "pausing: %d bytes of dead letters held (budget %d); resuming below %d",
            b.held,
            b.max_bytes,
            b.max_bytes // 2,
        )
        self._cancel_consumers()

    def _maybe_resume(self) -> None:
        b = self.budget
        if not b.may_resume() or self.draining:
            return
        if self.channel is None or not self.channel.is_open:
            return
        b.paused = False
        self.ctx.metrics.paused.set(0)
        window = b.fitting_window()
        self.log.info(
            "resuming with a window of %d (average body %d bytes, %d bytes held)",
            window,
            b.avg_size,
            b.held,
        )
        self._consume(window)

    def _maybe_widen(self) -> None:
        """Bodies got smaller since the window was narrowed: consume with a wider one."""
        if self.draining or not self.consuming or self.channel is None:
            return
        window = self.budget.wider_window(time.monotonic())
        if window is None or not self.channel.is_open:
            return
        self.log.info(
            "widening the window to %d (average body %d bytes)", window, self.budget.avg_size
        )
        self._cancel_consumers()
        self._consume(window)


def run(topology: Topology, ctx: RouterContext) -> None:
    """Route dead letters of every route until ``ctx.stop`` (then drain) or ``ctx.abort``."""
    client_name = f"dlq-router run pid={os.getpid()}"
    preflight(topology, client_name)
    Router(topology, ctx, client_name).run()
