"""The parking lot on Redis: hash ``{q}:parked`` (id -> kombu envelope) + zset index by time.

Reading pages through the index newest first (ZREVRANGE by rank, HMGET the envelopes), so
``parked list --limit 50`` costs two round trips whatever the size of the lot. Moving and
deleting are Lua scripts, one call per batch, that check each id is still parked; Python
builds the new envelopes. Every key of a route shares its hash tag, so a route's scripts
touch one Cluster slot (kombu's priority lists and ``--to-route`` to another route are the
exception: see the README, "Known limitations").
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis.exceptions as rex

from dlq_router import headers as h
from dlq_router.backends.base import ParkedMessage
from dlq_router.backends.rabbitmq.wire import Raw
from dlq_router.backends.redis.connection import DeferredCall, RedisClient, describe, script
from dlq_router.backends.redis.envelope import Envelope, work_list
from dlq_router.errors import BrokerUnavailable, NotFound, UsageError
from dlq_router.ids import new_id
from dlq_router.names import RedisKeys, redis_keys
from dlq_router.parking import (
    Progress,
    RateLimiter,
    ReplayOptions,
    ReplayResult,
    Selector,
    missing_ids,
    newest_first,
    no_progress,
    parked_at,
    select,
)
from dlq_router.policy import reset_for_replay
from dlq_router.topology import Route, Topology

PAGE = 1000
BATCH = 1000
# Envelope properties that belong to one delivery and are regenerated, not exported.
_TRANSPORT_PROPERTIES = ("body_encoding", "delivery_tag")


@dataclass
class _Entry:
    msg: ParkedMessage
    envelope: dict[str, Any] | None  # None when the stored envelope cannot be read


def decode(route: str, msg_id: str, raw: bytes, *, full: bool = True) -> _Entry:
    """A stored envelope as a ParkedMessage; an unreadable one keeps its raw bytes as body.

    ``full=False`` (replay, purge) reads only what selecting needs: headers, no body or
    properties; the envelope itself is kept either way.
    """
    try:
        env = json.loads(raw)
        props = dict(env.get("properties") or {})
        body = env["body"]
        if not full:
            data = b""
        elif props.get("body_encoding") == "base64":
            data = base64.b64decode(body)
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            raise ValueError("body is neither base64 nor text")
        headers = env.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError("headers is not an object")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        bad = ParkedMessage(msg_id, route, {"dlq-envelope-error": str(exc)}, {}, raw)
        return _Entry(bad, None)
    if not full:
        return _Entry(ParkedMessage(msg_id, route, headers, {}, data), env)
    properties = {
        "content_type": env.get("content-type"),
        "content_encoding": env.get("content-encoding"),
    }
    properties.update({k: v for k, v in props.items() if k not in _TRANSPORT_PROPERTIES})
    return _Entry(ParkedMessage(msg_id, route, headers, properties, data), env)


def _json_default(value: Any) -> Any:
    """AMQP header types JSON lacks, for messages imported from RabbitMQ."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Raw):  # a RabbitMQ value nobody could read: kept as its wire bytes
        return {"$amqp": base64.b64encode(value.data).decode("ascii")}
    raise TypeError(f"cannot store {type(value).__name__} in a kombu envelope")


# json.dumps(..., default=) builds a new encoder per call; one, without the cycle check
# (decoded JSON and header dicts have no cycles), writes the same text.
_encode = json.JSONEncoder(default=_json_default, check_circular=False).encode


def envelope_for(msg: ParkedMessage, route: Route) -> dict[str, Any]:
    """A kombu envelope for a message parked elsewhere (import from RabbitMQ or a file)."""
    props = {
        k: v
        for k, v in msg.properties.items()
        if k not in ("content_type", "content_encoding", *_TRANSPORT_PROPERTIES) and v is not None
    }
    props.setdefault(
        "delivery_info",
        {
            "exchange": h.as_text(msg.headers.get(h.ORIGIN_EXCHANGE)) or "",
            "routing_key": h.as_text(msg.headers.get(h.ORIGIN_ROUTING_KEY)) or route.queue,
        },
    )
    props.setdefault("priority", 0)
    props["body_encoding"] = "base64"
    props["delivery_tag"] = new_id()
    return {
        "body": base64.b64encode(msg.body).decode("ascii"),
        "content-encoding": msg.properties.get("content_encoding"),
        "content-type": msg.properties.get("content_type"),
        "headers": msg.headers,
        "properties": props,
    }


class RedisParkingLot:
    def __init__(self, client: RedisClient, topology: Topology) -> None:
        self.client = client
        self.topology = topology

    # ----------------------------------------------------------------- reading

    def _keys(self, route: Route) -> RedisKeys:
        return redis_keys(self.topology, route)

    def _routes(self, selector: Selector) -> list[Route]:
        return [r for r in self.topology.routes if selector.wants_route(r.name)]

    def _fetch(self, route: Route, ids: Sequence[str], *, full: bool = True) -> list[_Entry]:
        if not ids:
            return []
        raws: list[bytes | None] = self.client.hmget(self._keys(route).parked, list(ids))  # type: ignore[assignment]
        pairs = zip(ids, raws, strict=True)
        return [decode(route.name, i, raw, full=full) for i, raw in pairs if raw]

    def _ids(self, route: Route, selector: Selector, *, newest: bool) -> Iterator[list[str]]:
        """Pages of ids in the selector's time window, by rank, newest (or oldest) first."""
        index = self._keys(route).parked_index
        low, high = selector.window()
        lo = "-inf" if low is None else str(low)
        hi = "+inf" if high is None else str(high)
        if newest:  # ranks of ZREVRANGE: entries parked after the window come first
            skip = 0 if high is None else self.client.zcount(index, f"({high}", "+inf")
        else:
            skip = 0 if low is None else self.client.zcount(index, "-inf", f"({low}")
        total = self.client.zcount(index, lo, hi)
        page = PAGE
        if selector.limit is not None and not selector.has_filter:
            page = min(PAGE, selector.limit)
        fetch = self.client.zrevrange if newest else self.client.zrange
        for start in range(skip, skip + total, page):
            stop = min(start + page, skip + total) - 1
            found: list[bytes] = fetch(index, start, stop)  # type: ignore[assignment]
            ids = [i.decode() for i in found]
            if ids:
                yield ids

    def _iter_route(self, route: Route, selector: Selector) -> Iterator[ParkedMessage]:
        """Messages of one route matching ``selector`` (no limit), newest first."""
        if selector.ids:
            found = [e.msg for e in self._fetch(route, sorted(selector.ids))]
            found.sort(key=lambda m: -parked_at(m))
            yield from (m for m in found if selector.matches(m))
            return
        for ids in self._ids(route, selector, newest=True):
            yield from (e.msg for e in self._fetch(route, ids) if selector.matches(e.msg))

    def iter(self, selector: Selector) -> Iterator[ParkedMessage]:
        try:
            streams = [self._iter_route(r, selector) for r in self._routes(selector)]
            yield from select(newest_first(streams), selector)
        except rex.RedisError as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc

    def scan(self, selector: Selector) -> Iterator[ParkedMessage]:
        """Every match, a page of the index at a time (already bounded: ``iter`` is lazy)."""
        yield from self.iter(dataclasses.replace(selector, limit=None))

    def get(self, msg_id: str, route: str | None = None) -> ParkedMessage:
        try:
            for r in self.topology.routes:
                if route is None or r.name == route:
                    found = self._fetch(r, [msg_id])
                    if found:
                        return found[0].msg
        except rex.RedisError as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        raise NotFound(f"no parked message with id {msg_id!r}")

    # ----------------------------------------------------------------- moving

    def _plan(self, selector: Selector) -> dict[str, list[str]]:
        """Ids to act on per route, oldest first, fixed before anything moves (moving
        shifts ranks). Header filters are checked again batch by batch."""
        routes = self._routes(selector)
        if selector.limit is not None:
            chosen = list(self.iter(selector))
            return {r.name: [m.id for m in reversed(chosen) if m.route == r.name] for r in routes}
        if selector.ids:
            return {r.name: sorted(selector.ids) for r in routes}
        return {
            r.name: [i for page in self._ids(r, selector, newest=False) for i in page]
            for r in routes
        }

    def _batches(
        self, selector: Selector, batch: int, result: ReplayResult, *, full: bool
    ) -> Iterator[tuple[Route, list[_Entry]]]:
        """Batches of matching entries, oldest first; also records --id values not found."""
        seen: set[str] = set()
        for name, ids in self._plan(selector).items():
            route = self.topology.route(name)
            for start in range(0, len(ids), batch):
                entries = self._fetch(route, ids[start : start + batch], full=full)
                if selector.header_filters or selector.ids:
                    # the index already applied route and time window
                    entries = [e for e in entries if selector.matches(e.msg)]
                seen.update(e.msg.id for e in entries)
                if entries:
                    result.selected += len(entries)
                    yield route, entries
        result.missing = missing_ids(selector, seen)

    def _destination(self, route: Route, options: ReplayOptions) -> Route:
        if options.to_route is None:
            return route
        try:
            return self.topology.route(options.to_route)
        except KeyError as exc:
            raise UsageError(f"--to-route: {exc.args[0]}") from None

    def replay(
        self, selector: Selector, options: ReplayOptions, progress: Progress = no_progress
    ) -> ReplayResult:
        result = ReplayResult(dry_run=options.dry_run)
        limiter = RateLimiter(options.rate)
        if options.to_route is not None:
            self._destination(self.topology.routes[0], options)  # fail before reading
        move = script(self.client, "parked_replay")
        # Pipelined: batch N is sent to parked_replay.lua once batch N+1 is fetched, and its
        # reply read once N+1 is built, so Redis moves while Python builds envelopes.
        built: tuple[list[str], list[Any], int] | None = None  # keys, args, count
        moving: tuple[DeferredCall, int] | None = None

        def settle() -> None:
            nonlocal moving
            if moving is not None:
                call, count = moving
                moving = None
                gone = call.result()
                result.replayed += count - len(gone)
                result.skipped += len(gone)
                progress(count)

        def send() -> None:
            nonlocal built, moving
            if built is not None:
                keys, args, count = built
                built = None
                settle()  # one batch in flight at a time, in order
                limiter.wait(count)
                moving = (DeferredCall(move, keys, args), count)

        try:
            batches = self._batches(
                selector, limiter.batch_size(BATCH), result, full=options.dry_run
            )
            for route, entries in batches:
                send()
                dest = self._destination(route, options)
                if options.dry_run:
                    result.planned += [(e.msg, f"redis list {dest.queue}") for e in entries]
                    continue
                lists: dict[str, int] = {}  # destination list -> its number in the script
                args: list[Any] = []
                for entry in entries:
                    if entry.envelope is None:
                        result.fail(entry.msg.id, "stored envelope is not readable JSON")
                        continue
                    env = self._replay_envelope(entry, dest, options)
                    # kombu's priority list for this message, as its own _put would pick
                    target = work_list(dest.queue, Envelope(env).priority_step())
                    number = lists.setdefault(target, len(lists) + 1)
                    args += [f"{number} {entry.msg.id}", _encode(env)]
                if args:
                    keys = self._keys(route)
                    built = ([keys.parked, keys.parked_index, *lists], args, len(args) // 2)
            send()
            settle()
        except rex.RedisError as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        finally:
            if moving is not None:
                moving[0].abandon()
        return result

    @staticmethod
    def _replay_envelope(entry: _Entry, dest: Route, options: ReplayOptions) -> dict[str, Any]:
        """The parked envelope as it goes back to work: router headers reset, new tag."""
        assert entry.envelope is not None
        env = dict(entry.envelope)
        env["headers"] = reset_for_replay(entry.msg.headers, keep_attempts=options.keep_attempts)
        props = dict(env.get("properties") or {})
        props["delivery_tag"] = new_id()
        if options.to_route is not None:
            props["delivery_info"] = {
                **(props.get("delivery_info") or {}),
                "exchange": "",
                "routing_key": dest.queue,
            }
        env["properties"] = props
        return env

    def purge(self, selector: Selector, progress: Progress = no_progress) -> ReplayResult:
        result = ReplayResult()
        delete = script(self.client, "parked_purge")
        try:
            for route, entries in self._batches(selector, BATCH, result, full=False):
                keys = self._keys(route)
                gone = delete(
                    keys=[keys.parked, keys.parked_index], args=[e.msg.id for e in entries]
                )
                result.replayed += len(gone)
                result.skipped += len(entries) - len(gone)
                progress(len(entries))
        except rex.RedisError as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        return result

    def put(
        self, messages: Sequence[ParkedMessage], progress: Progress = no_progress
    ) -> ReplayResult:
        result = ReplayResult(selected=len(messages))
        add = script(self.client, "parked_put")
        by_route: dict[str, list[ParkedMessage]] = {}
        for msg in messages:
            by_route.setdefault(msg.route, []).append(msg)
        try:
            for name, msgs in by_route.items():
                route = self.topology.route(name)
                keys = self._keys(route)
                for start in range(0, len(msgs), BATCH):
                    chunk = msgs[start : start + BATCH]
                    args: list[Any] = []
                    for msg in chunk:
                        env = envelope_for(msg, route)
                        args += [msg.id, parked_at(msg), _encode(env)]
                    added = add(keys=[keys.parked, keys.parked_index], args=args)
                    result.replayed += len(added)
                    result.skipped += len(chunk) - len(added)
                    progress(len(chunk))
        except rex.RedisError as exc:
            raise BrokerUnavailable(describe(exc, self.topology.url)) from exc
        return result
