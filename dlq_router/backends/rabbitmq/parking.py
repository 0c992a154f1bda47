"""The parking lot on RabbitMQ: one parking queue per route, read without changing it.

AMQP has no peek. Every operation takes a *snapshot*: it consumes the queue's whole depth
(as reported by a passive declare) without acking, on its own channel, with a prefetch that
covers the depth. Closing that channel hands every unacked message back to the broker in
its original position, not redelivered to anyone else meanwhile. Replay and purge ack only
the messages they moved (after the republish was confirmed) before closing. A snapshot reads
the whole queue: that is the cost of listing (figures in the README, "Benchmarks").

Reading keeps memory bounded: a snapshot given a ``sink`` hands each delivery to it and keeps
nothing, so ``iter`` with a limit holds only the newest N that match (a heap), ``scan`` (groups,
status, the console) holds only what arrived in one read, and the broker keeps the rest
unacked. Only replay, purge and unlimited listings (export) hold every message they select.

The consumer is registered on pika's underlying channel (``channel._impl``): BlockingChannel's
own cancel rejects its buffered messages one by one before the close, which would put them
back ahead of the ones already delivered on a quorum queue. The same channel object also
gives asynchronous publisher confirms, so replay keeps a window of publishes in flight
instead of one round trip per message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.data
import pika.exceptions as pe
from pika.spec import Basic

from dlq_router import headers as h
from dlq_router.backends.base import ParkedMessage
from dlq_router.backends.rabbitmq import rawframes, replaywire, wire
from dlq_router.backends.rabbitmq.coalesce import Coalescer
from dlq_router.backends.rabbitmq.connection import describe
from dlq_router.errors import BrokerUnavailable, NotFound, UsageError
from dlq_router.names import rabbit_names
from dlq_router.parking import (
    Progress,
    RateLimiter,
    ReplayOptions,
    ReplayResult,
    Selector,
    missing_ids,
    no_progress,
    parked_at,
    select,
)
from dlq_router.policy import reset_for_replay
from dlq_router.topology import Route, Topology

# AMQP basic properties kept verbatim (headers travel separately).
AMQP_PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)
MAX_PREFETCH = 65535  # basic.qos prefetch-count is 16 bits; 0 = unlimited
IDLE_TIMEOUT = 5.0  # a snapshot stops short of the depth after this long without a delivery
CONFIRM_TIMEOUT = 30.0
# Republished messages awaiting the broker's confirm: the duplicate bound of an interrupted
# replay. Confirms of persistent messages arrive in batches as the broker syncs its message
# store; 2,000 replayed 8.7-9.4k msg/s where 1,000 did 8.2-8.4k (RabbitMQ 3.10, 2 cores).
WINDOW = 2_000
# How long closing a snapshot waits without progress for the broker to show its messages
# back in the queue, and the slowest requeue rate it allows for before giving up (msg/s).
RETURN_TIMEOUT = 10.0
RETURN_RATE = 5_000


def decode_headers(table: bytes | None) -> dict[str, Any]:
    """A parked header table as the values parking works with, without pika's table codec
    inside the connection (a value it cannot decode there drops the connection: one hostile
    park made the whole lot unreadable). One level is split by ``wire.scan``; scalars are
    read by ``wire.read_value`` (``T`` becomes a naive UTC datetime, as pika gave it); a
    nested table or array no deeper than ``MAX_NESTING`` is decoded by pika's codec here,
    outside the connection, and any value that cannot be read (a ``T`` past year 9999 or
    holding milliseconds, deeper nesting, bytes that do not size) stays ``wire.Raw``: its
    wire bytes, shown tagged (``$amqp``) and republished as is. Bytes past the last entry
    that can be sized are dropped (the router keeps them; the lot does not yet)."""
    if not table:
        return {}
    entries, _stop = wire.scan(table, 0, len(table))
    out: dict[str, Any] = {}
    for name, _start, pos, stop in entries:
        out[name.decode("utf-8", "replace")] = _header_value(table, pos, stop)
    return out


def _header_value(table: bytes, pos: int, stop: int) -> Any:
    kind = table[pos]
    try:
        if kind in _NESTED:
            if not wire.nesting_within(table, pos, stop, MAX_NESTING):
                return wire.Raw(table[pos:stop])
            value, _end = pika.data.decode_value(table[pos:stop], 0)
            return value
        value = wire.read_value(table, pos, stop)
        if kind == _TIMESTAMP:
            return _EPOCH + dt.timedelta(seconds=value)
        return value
    except Exception:  # pika's codec raises what it likes on foreign bytes
        # (RecursionError, OverflowError, ValueError, struct.error, ...): keep the bytes
        return wire.Raw(table[pos:stop])


_NESTED = frozenset(b"FA")
# Deeper tables/arrays stay raw: pika's decoder and every renderer after it recurse.
MAX_NESTING = 32
_TIMESTAMP = ord("T")
_EPOCH = dt.datetime(1970, 1, 1)


def _properties(props: wire.Properties) -> dict[str, Any]:
    """The basic properties other than headers, as pika gave them (text, ints)."""
    out: dict[str, Any] = {}
    for i, (name, _bit, kind) in enumerate(wire.FIELDS):
        raw = props.fields[i]
        if raw is None or i == wire.HEADERS:
            continue
        if kind == "s":
            out[name] = raw[1:].decode("utf-8", "replace")
        elif kind == "o":
            out[name] = raw[0]
        else:  # q: the timestamp property, an int as pika gave it
            out[name] = int.from_bytes(raw, "big")
    return out


def to_message(route: str, props: wire.Properties, body: bytes) -> ParkedMessage:
    headers = decode_headers(props.table)
    properties = _properties(props)
    msg_id = h.as_text(headers.get(h.ID)) or properties.get("message_id")
    if not msg_id:  # not parked by dlq-router: derive a stable id from the content
        seen = repr(sorted(headers.items())).encode()
        digest = hashlib.sha1(body + seen, usedforsecurity=False)
        msg_id = "sha1-" + digest.hexdigest()[:16]
    return ParkedMessage(str(msg_id), route, headers, properties, body)


def to_properties(msg: ParkedMessage, headers: dict[str, Any]) -> Any:
    """AMQP properties of ``msg``; properties from another broker (kombu's) are left out.
    Headers holding ``wire.Raw`` values go out with those values byte for byte (pika cannot
    encode them): the table is assembled here, each other entry encoded by pika's codec."""
    kept = {k: v for k, v in msg.properties.items() if k in AMQP_PROPERTIES and v is not None}
    if not any(isinstance(v, wire.Raw) for v in headers.values()):
        return pika.BasicProperties(headers=headers, **kept)
    pieces: list[bytes] = []
    for name, value in headers.items():
        if isinstance(value, wire.Raw):
            pieces.append(wire.encode_entry(name, value))
        else:
            one: list[bytes] = []
            pika.data.encode_table(one, {name: value})
            pieces.append(b"".join(one)[4:])  # without the table length
    encoded = b"".join(pika.BasicProperties(**kept).encode())
    props = wire.Properties.parse(encoded, 0, len(encoded))
    props.table = b"".join(pieces)
    return props


@dataclass
class _Held:
    tag: int
    msg: ParkedMessage
    snapshot: _Snapshot
    props: wire.Properties | None = None  # as delivered: replay republishes from these bytes


# A delivery read raw (``_Snapshot(raw=True)``): (delivery tag, properties, body).
_Props = Any  # wire.Properties | rawframes.Content: a delivery's properties as read
_Delivery = tuple[int, _Props, bytes]


def _fields(props: wire.Properties | rawframes.Content) -> wire.Properties:
    return props.properties() if isinstance(props, rawframes.Content) else props


class _Snapshot:
    """Every message of one parking queue, held unacked; ``close`` puts the rest back in place.

    Acks: a message that leaves is acked once its republish is confirmed. While every earlier
    delivery also leaves, one ``multiple`` ack covers the whole run (a replay of everything
    sends one ack per confirm batch, not per message); past the first message that stays,
    acks are single so that nothing that stays is acked.
    """

    def __init__(
        self,
        connection: pika.BlockingConnection,
        route: Route,
        queue: str,
        *,
        read: bool = True,
        sink: Callable[[int, ParkedMessage], None] | None = None,
        raw: bool = False,
    ) -> None:
        self.connection = connection
        self.route = route
        self.queue = queue
        self.held: list[_Held] = []
        # With a sink, each delivery goes there (tag, message) and nothing is held here.
        self.sink = sink
        # raw: deliveries are only appended to ``arrived`` as they came (streaming replay)
        self.raw = raw
        self.arrived: list[_Delivery] = []
        self.received = 0
        self.channel = connection.channel()
        self.depth = self.channel.queue_declare(queue, passive=True).method.message_count
        self.short = 0  # messages not read because another consumer holds them
        self._floor = 0  # every delivery tag <= floor is acked
        self._acked = 0
        self.closing = False  # set by close(): no more acks
        self._ready: set[int] = set()  # confirmed, waiting to be covered by a multiple ack
        self._kept_min: float = float("inf")  # lowest tag that stays parked
        self._last, self._seen = time.monotonic(), 0
        # raw, on a connection reading frames itself: deliveries skip pika's frame objects
        reader = connection._impl._on_data_available
        self.reader = reader if raw and isinstance(reader, rawframes.Inbound) else None
        self.consumer_tag = ""
        if self.depth:
            prefetch = self.depth if self.depth <= MAX_PREFETCH else 0
            self.channel.basic_qos(prefetch_count=prefetch)
            tag = self.channel._impl.basic_consume(queue, self._on_message, auto_ack=False)
            if self.reader is not None:  # before any delivery: nothing is read until pump()
                self.reader.register(
                    tag, self._on_direct, channel=self.channel.channel_number, content=True
                )
                self.consumer_tag = tag
        if read:
            while self.pump():
                pass

    def _on_message(self, _ch: Any, method: Basic.Deliver, props: Any, body: bytes) -> None:
        self.received += 1
        if self.raw:
            self.arrived.append((method.delivery_tag, props, body))
            return
        props = _fields(props)
        msg = to_message(self.route.name, props, body)
        if self.sink is not None:
            self.sink(method.delivery_tag, msg)
        else:
            self.held.append(_Held(method.delivery_tag, msg, self, props))

    def _on_direct(self, tag: int, _consumer: str, props: Any, body: bytes) -> None:
        self.received += 1
        self.arrived.append((tag, props, body))

    @property
    def finished(self) -> bool:
        return self.received >= self.depth or self.short > 0

    def pump(self) -> bool:
        """Read what has arrived; False once the whole depth (or all that is free) is read."""
        if self.finished:
            return False
        self.connection.process_data_events(time_limit=0.01)
        reason = getattr(self.channel, "_closing_reason", None)
        if isinstance(reason, pe.ChannelClosedByBroker):
            raise reason  # a refused consume (403: no read permission) is not an empty lot
        if self.received != self._seen:
            self._last, self._seen = time.monotonic(), self.received
        elif time.monotonic() - self._last > IDLE_TIMEOUT:
            # Nothing for a while. Messages still ready in the queue mean the broker is only
            # slow (paging a million persistent messages in from disk, on a busy machine):
            # keep reading. None ready: another listing or replay holds the rest (unacked,
            # so not ready for us), and this snapshot stops short.
            if self.channel.queue_declare(self.queue, passive=True).method.message_count:
                self._last = time.monotonic()
            else:
                self.short = self.depth - self.received
        return not self.finished

    def leave(self, tag: int) -> None:
        """This message's republish is confirmed (or it is purged): remove it at ``flush``."""
        self._ready.add(tag)

    def keep(self, tag: int) -> None:
        """This message stays parked: no multiple ack may reach it from now on."""
        if tag < self._kept_min:
            self.flush()
            self._kept_min = tag

    def flush(self) -> None:
        """Ack what has left: one multiple ack for the run from the last floor, singles after
        the first message that stays."""
        if self.closing:
            return
        top = self._floor
        while top + 1 in self._ready and top + 1 < self._kept_min:
            top += 1
            self._ready.discard(top)
        if top > self._floor:
            self.channel._impl.basic_ack(top, multiple=True)
            self._acked += top - self._floor
            self._floor = top
        for tag in sorted(t for t in self._ready if t > self._kept_min):
            self.channel._impl.basic_ack(tag)
            self._ready.discard(tag)
            self._acked += 1

    def close(self) -> None:
        """Hand back what was not acked and wait (bounded) until the queue shows it again.

        The broker answers channel.close first and requeues the channel's unacked messages
        when its queue process sees the channel go, which for 100,000 messages takes a
        moment: a command run right after (a replay after a listing) would otherwise see
        part of the parking lot missing, or stop short waiting for it.
        """
        if self.reader is not None and self.consumer_tag:
            self.reader.unregister(self.consumer_tag)
        # Nothing more is acked from here on. The calls below let pika run callbacks: a
        # replay interrupted by Ctrl-C still gets confirms, and acking on them would make
        # ``returning`` too high and the wait below run out its timeout. Such a message stays
        # parked as well as replayed (a duplicate, never a loss).
        self.closing = True
        if not self.channel.is_open:
            return
        returning = self.received - self._acked
        ready = self.channel.queue_declare(self.queue, passive=True).method.message_count
        self.channel.close()
        if returning:
            _wait_until_back(self.connection, self.queue, ready + returning)


def _wait_until_back(connection: pika.BlockingConnection, queue: str, expected: int) -> None:
    """Poll the queue's ready count until it reaches ``expected``; give up after RETURN_TIMEOUT
    without growth, or later for a large return (a concurrent replay may take messages
    meanwhile: then the count never gets there, and that is fine).

    The broker may show a large return all at once after a pause: a million handed-back
    messages reappeared after tens of seconds on a busy machine, so the first wait is sized
    by the count (RETURN_RATE) and every growth restarts the no-progress timer."""
    channel = connection.channel()
    returning = max(0, expected - channel.queue_declare(queue, passive=True).method.message_count)
    last = -1
    deadline = time.monotonic() + max(RETURN_TIMEOUT, returning / RETURN_RATE)
    try:
        while (ready := channel.queue_declare(queue, passive=True).method.message_count) < expected:
            if ready > last:
                if last >= 0:
                    deadline = max(deadline, time.monotonic() + RETURN_TIMEOUT)
                last = ready
            elif time.monotonic() > deadline:
                return
            connection.sleep(0.02)
    finally:
        if channel.is_open:
            channel.close()


class RabbitParkingLot:
    def __init__(self, connect: Callable[[], pika.BlockingConnection], topology: Topology) -> None:
        self._opener = connect
        self.topology = topology

    def _connect(self, *, content: bool = False) -> pika.BlockingConnection:
        """The connection, reading content headers as bytes and assembling deliveries without
        pika's per-frame dispatch (``rawframes.install``): pika's table codec would raise on
        a hostile parked header inside the connection. With ``content`` (replay's own
        connection) properties stay one piece of bytes (``rawframes.Content``) and the socket
        is read in larger pieces."""
        connection = self._opener()
        rawframes.install(connection._impl, content=content)
        if content:
            rawframes.read_more(connection._impl)
        return connection

    def _routes(self, selector: Selector) -> list[Route]:
        return [r for r in self.topology.routes if selector.wants_route(r.name)]

    def _snapshots(self, routes: Sequence[Route]) -> list[_Snapshot]:
        conn = self._connect()
        snaps: list[_Snapshot] = []
        try:
            for route in routes:
                snaps.append(_Snapshot(conn, route, rabbit_names(self.topology, route).parking))
        except (pe.AMQPError, OSError) as exc:
            self._close(snaps)
            raise self._open_error(exc, route) from exc
        return snaps

    def _open_error(self, exc: BaseException, route: Route) -> Exception:
        """Ours for an error opening a route's snapshot: 404 is a parking queue not declared."""
        if isinstance(exc, pe.ChannelClosedByBroker) and exc.reply_code == 404:
            return NotFound(
                f"parking queue of route {route.name!r} does not exist "
                "(run `dlq-router declare` first)"
            )
        return BrokerUnavailable(describe(exc, self.topology.url))

    @staticmethod
    def _close(snaps: Sequence[_Snapshot]) -> None:
        for snap in snaps:
            # a dead channel has returned its messages already
            with contextlib.suppress(pe.AMQPError, OSError):
                snap.close()

    @staticmethod
    def _chosen(snaps: Sequence[_Snapshot], selector: Selector) -> list[_Held]:
        """Held messages that ``selector`` picks, newest first (queue order breaks ties)."""
        held = [x for snap in snaps for x in reversed(snap.held)]
        held.sort(key=lambda x: -parked_at(x.msg))  # stable: later in the queue = newer
        by_msg = {id(x.msg): x for x in held}
        return [by_msg[id(m)] for m in select((x.msg for x in held), selector)]

    def iter(self, selector: Selector) -> Iterator[ParkedMessage]:
        if selector.limit is not None:
            yield from self._newest(selector, selector.limit)
            return
        snaps = self._snapshots(self._routes(selector))
        try:
            chosen = [x.msg for x in self._chosen(snaps, selector)]
        finally:
            self._close(snaps)
        yield from chosen

    def _read(self, selector: Selector, sink: Callable[[int, int, ParkedMessage], None]) -> None:
        """Every parked message of the selected routes through ``sink(route index, delivery
        tag, message)``, one route at a time; nothing is held here and each queue is handed
        back (and seen back in place) before the next is read."""
        for snap in self._streams(selector, sink):
            while self._pump(snap):
                pass

    def _streams(
        self, selector: Selector, sink: Callable[[int, int, ParkedMessage], None]
    ) -> Iterator[_Snapshot]:
        """Unread snapshots of the selected routes feeding ``sink``, one open at a time and
        closed (messages back in place) when the caller moves on."""
        conn = None
        for index, route in enumerate(self._routes(selector)):
            queue = rabbit_names(self.topology, route).parking
            try:
                conn = conn or self._connect()
                snap = _Snapshot(
                    conn, route, queue, read=False, sink=functools.partial(sink, index)
                )
            except (pe.AMQPError, OSError) as exc:
                raise self._open_error(exc, route) from exc
            try:
                yield snap
            finally:
                self._close([snap])

    def _pump(self, snap: _Snapshot) -> bool:
        try:
            return snap.pump()
        except (pe.AMQPError, OSError) as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc

    def _newest(self, selector: Selector, limit: int) -> list[ParkedMessage]:
        """The newest ``limit`` messages that match, holding no more than that many: a
        min-heap on (parked at, earlier route first, later in the queue first), the order
        ``_chosen`` sorts by."""
        heap: list[tuple[int, int, int, ParkedMessage]] = []

        def keep(index: int, tag: int, msg: ParkedMessage) -> None:
            if not selector.matches(msg):
                return
            item = (parked_at(msg), -index, tag, msg)  # (index, tag) is unique: no msg compare
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item[:3] > heap[0][:3]:
                heapq.heapreplace(heap, item)

        self._read(selector, keep)
        return [item[3] for item in sorted(heap, key=lambda i: i[:3], reverse=True)]

    def scan(self, selector: Selector) -> Iterator[ParkedMessage]:
        """Matching messages in queue order as they arrive; only one read's worth is held."""
        arrived: list[ParkedMessage] = []

        def keep(_index: int, _tag: int, msg: ParkedMessage) -> None:
            if selector.matches(msg):
                arrived.append(msg)

        for snap in self._streams(selector, keep):
            while True:
                more = self._pump(snap)
                yield from arrived
                arrived.clear()
                if not more:
                    break

    def get(self, msg_id: str, route: str | None = None) -> ParkedMessage:
        selector = Selector(routes=(route,) if route else (), ids=frozenset([msg_id]), limit=1)
        for msg in self.iter(selector):
            return msg
        raise NotFound(f"no parked message with id {msg_id!r}")

    # ----------------------------------------------------------------- moving

    def _destination(self, msg: ParkedMessage, to_route: Route | None) -> tuple[str, str]:
        """(exchange, routing key) from the topology: --to-route's, else those of the route
        whose parking queue held the message (where its retries go too). Never from the
        message's ``dlq-origin-*`` headers: anyone who can dead-letter a message can write
        them, and a replay would then publish into any exchange the operator may write to."""
        names = rabbit_names(self.topology, to_route or self.topology.route(msg.route))
        return names.work_exchange, names.routing_key

    def replay(
        self, selector: Selector, options: ReplayOptions, progress: Progress = no_progress
    ) -> ReplayResult:
        to_route = None
        if options.to_route is not None:
            try:
                to_route = self.topology.route(options.to_route)
            except KeyError as exc:
                raise UsageError(f"--to-route: {exc.args[0]}") from None
        result = ReplayResult(dry_run=options.dry_run)
        snaps: list[_Snapshot] = []
        try:
            if selector.limit is None and not options.dry_run:
                self._stream(selector, options, to_route, result, progress, snaps)
            else:
                snaps += self._snapshots(self._routes(selector))
                chosen = self._chosen(snaps, selector)
                result.selected = len(chosen)
                result.missing = missing_ids(selector, (x.msg.id for x in chosen))
                chosen.reverse()  # oldest first: replayed work keeps its original order
                if options.dry_run:
                    for x in chosen:
                        exchange, key = self._destination(x.msg, to_route)
                        result.planned.append((x.msg, f"exchange {exchange!r} key {key!r}"))
                elif chosen:
                    _keep_unchosen(snaps, chosen)
                    publisher = _Publisher(snaps[0].connection, self, result, progress)
                    publisher.replay_options(to_route, options)
                    for x in chosen:
                        publisher.send(x)
                    publisher.drain()
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise NotFound(f"a parking queue does not exist: {exc.reply_text}") from exc
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        except (pe.AMQPError, OSError) as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        finally:
            self._close(snaps)  # everything not acked goes back in place
        return result

    def _stream(
        self,
        selector: Selector,
        options: ReplayOptions,
        to_route: Route | None,
        result: ReplayResult,
        progress: Progress,
        snaps: list[_Snapshot],
    ) -> None:
        """Replay in queue order while reading: no limit means no need to see all first.
        Deliveries are republished from their bytes (``replaywire``); a message is decoded
        only when a filter other than --route needs it (or its republish fails)."""
        conn = self._connect(content=True)  # properties stay one piece of bytes
        publisher = _Publisher(conn, self, result, progress)
        publisher.replay_options(to_route, options)
        decode = dataclasses.replace(selector, routes=()).has_filter
        seen: list[str] = []
        for route in self._routes(selector):
            queue = rabbit_names(self.topology, route).parking
            snap = _Snapshot(conn, route, queue, read=False, raw=True)
            snaps.append(snap)
            target = publisher.target(snap)
            while True:
                more = snap.pump()
                arrived, snap.arrived = snap.arrived, []
                for tag, props, body in arrived:
                    msg = None
                    if decode:
                        msg = to_message(route.name, _fields(props), body)
                        if not selector.matches(msg):
                            snap.keep(tag)
                            continue
                        seen.append(msg.id)
                    result.selected += 1
                    publisher.send_raw(target, tag, props, body, msg)
                if not more and not snap.arrived:
                    break
        publisher.drain()
        result.missing = missing_ids(selector, seen)

    def purge(self, selector: Selector, progress: Progress = no_progress) -> ReplayResult:
        result = ReplayResult()
        snaps = self._snapshots(self._routes(selector))
        try:
            chosen = self._chosen(snaps, selector)
            result.selected = result.replayed = len(chosen)
            result.missing = missing_ids(selector, (x.msg.id for x in chosen))
            _keep_unchosen(snaps, chosen)
            for x in chosen:
                x.snapshot.leave(x.tag)
            for snap in snaps:
                snap.flush()
            progress(len(chosen))
            if snaps:
                snaps[0].connection.process_data_events(time_limit=0)
        except (pe.AMQPError, OSError) as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        finally:
            self._close(snaps)
        return result

    def put(
        self, messages: Sequence[ParkedMessage], progress: Progress = no_progress
    ) -> ReplayResult:
        """Publish to the parking queues (confirmed); ids already parked there are skipped."""
        result = ReplayResult(selected=len(messages))
        routes = {m.route for m in messages}
        present = {m.id for m in self.iter(Selector(routes=tuple(sorted(routes))))}
        todo = [m for m in messages if m.id not in present]
        result.skipped = len(messages) - len(todo)
        try:
            publisher = _Publisher(self._connect(), self, result, progress)
            publisher.park(todo)
        except (pe.AMQPError, OSError) as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        return result


def _keep_unchosen(snaps: Sequence[_Snapshot], chosen: Sequence[_Held]) -> None:
    picked = {id(x) for x in chosen}
    for snap in snaps:
        for held in snap.held:
            if id(held) not in picked:
                snap.keep(held.tag)


@dataclass(eq=False)
class _Target:
    """Where one snapshot's replayed messages go (resolved once, not per message)."""

    snapshot: _Snapshot
    exchange: str
    key: str


# What a publish awaiting its confirm came from: (parked copy's snapshot and delivery tag, or
# None and 0 for an import; the message, or its raw (properties, body) when never decoded).
_Pending = tuple["_Snapshot | None", int, "ParkedMessage | tuple[_Props, bytes]"]


class _Publisher:
    """Publishes with a window of unconfirmed messages; acts on each confirm as it comes."""

    def __init__(
        self,
        connection: pika.BlockingConnection,
        lot: RabbitParkingLot,
        result: ReplayResult,
        progress: Progress,
    ) -> None:
        self.connection = connection
        self.lot = lot
        self.result = result
        self.progress = progress
        # One socket write per ioloop turn instead of one per frame (three per publish).
        Coalescer.install(connection._impl)
        self.channel = connection.channel()
        self.impl = self.channel._impl
        self.frames = rawframes.Publisher(connection._impl, self.impl)
        self.seq = 0
        self.low = 1  # every publish below this one has been confirmed
        self.pending: dict[int, _Pending] = {}  # publish sequence number -> what it was
        self.returned: set[int] = set()  # publish ids of returned (unroutable) publishes
        self.returned_ids: set[str] = set()  # parked ids of returned unmarked publishes
        self.exchanges: dict[str, bool] = {"": True}  # the default exchange always exists
        self.targets: dict[_Snapshot, _Target] = {}
        self.snapshots: list[_Snapshot] = []  # where the replayed messages are held
        self.to_route: Route | None = None
        self.options = ReplayOptions()
        self.reset = replaywire.Reset(keep_attempts=False)
        self.limiter = RateLimiter(None)
        ready: list[bool] = []
        self.impl.add_on_return_callback(self._on_return)
        self.impl.confirm_delivery(self._on_confirm, callback=lambda _f: ready.append(True))
        while not ready:
            connection.process_data_events(time_limit=0.01)

    def replay_options(self, to_route: Route | None, options: ReplayOptions) -> None:
        self.to_route = to_route
        self.options = options
        self.reset = replaywire.Reset(keep_attempts=options.keep_attempts)
        # Waiting for the rate cap serves confirms (and heartbeats) meanwhile.
        self.limiter = RateLimiter(options.rate, sleep=self._serve)

    def target(self, snap: _Snapshot) -> _Target:
        found = self.targets.get(snap)
        if found is None:
            names = rabbit_names(self.lot.topology, self.to_route or snap.route)
            found = self.targets[snap] = _Target(snap, names.work_exchange, names.routing_key)
            self.snapshots.append(snap)
        return found

    def _on_return(self, _ch: Any, _method: Any, props: _Props, _body: bytes) -> None:
        # mandatory publish that no queue accepted; its confirm (an ack) follows. Its
        # properties come as ``Content`` (this connection reads content headers so).
        seq = wire.publish_id(props.table)
        if seq is not None:
            self.returned.add(seq)
        elif (msg_id := h.as_text(decode_headers(props.table).get(h.ID))) is not None:
            # an unmarked publish (import keeps parked copies as exported): its parked id
            self.returned_ids.add(msg_id)

    @staticmethod
    def _ident(snap: _Snapshot | None, ref: ParkedMessage | tuple[_Props, bytes]) -> str:
        """The parked id of a publish (decoding a raw one only now, for a report)."""
        if isinstance(ref, ParkedMessage):
            return ref.id
        assert snap is not None
        return to_message(snap.route.name, _fields(ref[0]), ref[1]).id

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        tag = method.delivery_tag
        pending = self.pending
        # Single confirms may come out of order (an unroutable message is acked at once,
        # before earlier ones that wait for a queue); `multiple` covers every seq up to tag.
        if method.multiple:
            seqs = range(self.low, tag + 1)
            self.low = max(self.low, tag + 1)
        else:
            seqs = range(tag, tag + 1)
        returned, returned_ids = self.returned, self.returned_ids
        done = 0
        for seq in seqs:
            entry = pending.pop(seq, None)
            if entry is None:
                continue
            snap, delivery, ref = entry
            if (
                ok
                and seq not in returned
                and not (returned_ids and self._ident(snap, ref) in returned_ids)
            ):
                if snap is not None:
                    snap.leave(delivery)
                done += 1
                continue
            msg_id = self._ident(snap, ref)
            self.result.fail(
                msg_id, "unroutable (no queue bound)" if ok else "refused by the broker (nack)"
            )
            if snap is not None:
                snap.keep(delivery)
            returned.discard(seq)
            returned_ids.discard(msg_id)
        if not method.multiple:
            while self.low <= self.seq and self.low not in pending:
                self.low += 1
        self.result.replayed += done
        for snap in self.snapshots:  # one ack frame per confirm batch, not per message
            snap.flush()
        if done:
            self.progress(done)

    def _room(self) -> bool:
        """Wait while the window is full; False if the broker closed the channel (403: no
        write permission)."""
        while len(self.pending) >= WINDOW and self.channel.is_open:
            self.connection.process_data_events(time_limit=0.01)
        return bool(self.channel.is_open)

    def _publish(
        self,
        exchange: str,
        key: str,
        msg: ParkedMessage,
        headers: dict[str, Any],
        snap: _Snapshot | None,
        tag: int,
        *,
        mark: bool = True,
    ) -> None:
        """Publish ``msg`` with ``headers`` through pika's encoder (import; replay of a
        message whose properties could not be split)."""
        if not self._room():
            self.result.fail(msg.id, self._why_closed())
            if snap is not None:
                snap.keep(tag)
            return
        self.seq += 1
        if mark:
            headers[h.PUBLISH_ID] = self.seq  # ties a basic.return to its publish
        self.pending[self.seq] = (snap, tag, msg)
        props = to_properties(msg, headers)
        self.impl.basic_publish(exchange, key, msg.body, props, mandatory=True)
        if self.seq % 100 == 0:
            self.connection.process_data_events(time_limit=0)

    def send_raw(
        self,
        target: _Target,
        tag: int,
        props: _Props,
        body: bytes,
        msg: ParkedMessage | None = None,
    ) -> None:
        """Republish one parked delivery from its bytes (``replaywire``: the reset headers,
        every other entry and property as it came); ``msg`` if it was decoded already.
        Its parked copy is acked once this is confirmed."""
        snap = target.snapshot
        if not (self.exchanges.get(target.exchange) or self._exchange_exists(target.exchange)):
            msg_id = msg.id if msg is not None else self._ident(snap, (props, body))
            self.result.fail(msg_id, f"exchange {target.exchange!r} does not exist")
            snap.keep(tag)
            return
        whole = type(props) is rawframes.Content
        if not whole and not replaywire.republishable(props):
            msg = msg or to_message(snap.route.name, props, body)
            self._send_decoded(target, tag, msg)
            return
        self.limiter.wait()
        if (len(self.pending) >= WINDOW or not self.impl.is_open) and not self._room():
            msg_id = msg.id if msg is not None else self._ident(snap, (props, body))
            self.result.fail(msg_id, self._why_closed())
            snap.keep(tag)
            return
        self.seq = seq = self.seq + 1
        table = self.reset.table(props.table, seq)  # with dlq-publish-id: ties a return to it
        self.pending[seq] = (snap, tag, msg if msg is not None else (props, body))
        plist = props.with_table(table) if whole else replaywire.content(props, table)
        self.frames.publish(target.exchange, target.key, body, plist, mandatory=True)
        if seq % 100 == 0:
            self.connection.process_data_events(time_limit=0)

    def _send_decoded(self, target: _Target, tag: int, msg: ParkedMessage) -> None:
        headers = reset_for_replay(msg.headers, keep_attempts=self.options.keep_attempts)
        self.limiter.wait()
        self._publish(target.exchange, target.key, msg, headers, target.snapshot, tag)

    def _exchange_exists(self, name: str) -> bool:
        if name not in self.exchanges:
            ch = self.connection.channel()
            try:
                ch.exchange_declare(name, passive=True)
                ch.close()
                self.exchanges[name] = True
            except pe.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                self.exchanges[name] = False
        return self.exchanges[name]

    def drain(self) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while self.pending and time.monotonic() < deadline and self.channel.is_open:
            self.connection.process_data_events(time_limit=0.01)
        why = self._why_closed()
        for snap, tag, ref in self.pending.values():  # unconfirmed: still parked
            self.result.fail(self._ident(snap, ref), why)
            if snap is not None:
                snap.keep(tag)
        self.pending.clear()
        for snap in self.snapshots:
            snap.flush()
        if self.channel.is_open:
            self.channel.close()

    def _why_closed(self) -> str:
        reason = getattr(self.channel, "_closing_reason", None)
        if isinstance(reason, pe.ChannelClosedByBroker):
            return describe(reason, self.lot.topology.url)  # "user lp may not write to ..."
        return "no confirm from the broker in time"

    def _serve(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.connection.process_data_events(time_limit=left)

    def send(self, held: _Held) -> None:
        """Republish one held parked message; its parked copy is acked once confirmed."""
        target = self.target(held.snapshot)
        if held.props is not None:
            self.send_raw(target, held.tag, held.props, held.msg.body, held.msg)
            return
        if not self._exchange_exists(target.exchange):
            self.result.fail(held.msg.id, f"exchange {target.exchange!r} does not exist")
            held.snapshot.keep(held.tag)
            return
        self._send_decoded(target, held.tag, held.msg)

    def park(self, messages: Sequence[ParkedMessage]) -> None:
        """Import: publish each message to its route's parking queue, unchanged."""
        for msg in messages:
            names = rabbit_names(self.lot.topology, self.lot.topology.route(msg.route))
            if not self._exchange_exists(names.parking_exchange):
                raise UsageError(
                    f"exchange {names.parking_exchange!r} does not exist: run "
                    "`dlq-router declare` first (parks go through it)"
                )
            # Unmarked: parked copies stay as exported. Through the route's parking exchange,
            # as the router parks: no write on the default exchange is needed.
            self._publish(
                names.parking_exchange,
                names.parking,
                msg,
                dict(msg.headers),
                None,
                0,
                mark=False,
            )
        self.drain()
