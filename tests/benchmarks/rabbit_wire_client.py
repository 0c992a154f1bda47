"""A minimal client that moves dead letters the way ``dlq-router run`` does on the wire.

Used by ``bench_rabbit_attribution.py`` (one subprocess per measured configuration, so its
CPU can be read from /proc apart from the script's). It consumes one DLQ with a
per-consumer window (``basic.qos``), republishes each message in confirm mode, and acks a
delivery only after the broker confirmed its republish. Each wire choice the router makes
can be switched off alone, to see what it costs the *broker*:

- ``mandatory``: publish with the mandatory flag (the router does, to detect unroutable
  retries).
- ``exchange``: the route's retry exchange (direct, one binding per lane queue) or ``""``
  (the default exchange, straight to the queue).
- ``keys``: routing keys drawn at random per message (the jitter lanes of a tier), or one.
- ``add_dlq``: add the ``dlq-*`` headers the router writes on a retry.
- ``strip_x_death``: drop ``x-death`` and ``x-first/last-death-*`` (the router does).
- ``window``: the prefetch count.
- ``ack``: ``run`` = one ``multiple=True`` ack per confirmed prefix (the router), ``each``
  = one ack per message.
- ``coalesce``: the frames of one ioloop turn go out in one socket write (the router's
  ``Coalescer``); off, pika writes each frame by itself. This changes how many publishes
  the broker reads at once and therefore how it batches its confirms.
- ``channels``: ``one`` channel consumes and publishes (the router), or ``per_key``: one
  publishing channel per routing key. RabbitMQ confirms with ``multiple`` only the prefix
  below a channel's oldest unconfirmed publish and sends every later confirm on its own
  (``rabbit_channel:coalesce_and_send``); queues confirm independently, so publishes
  spread over several queues on one channel come back as many single confirms.

The client does none of the router's decisions (no policy, no header parsing beyond what
pika does): its own CPU is not the router's. Run by hand::

    python tests/benchmarks/rabbit_wire_client.py '{"url": ..., "queue": ..., "n": ...}'

It prints one JSON line: frames seen and sent, per message.
"""

from __future__ import annotations

import functools
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import pika
from pika import spec

from dlq_router import headers as h
from dlq_router.backends.rabbitmq.coalesce import Coalescer


@dataclass
class WireConfig:
    url: str
    queue: str
    n: int
    route: str
    exchange: str
    keys: list[str]
    mandatory: bool = True
    add_dlq: bool = True
    strip_x_death: bool = True
    window: int = 2000
    ack: str = "run"  # run | each
    coalesce: bool = True
    channels: str = "one"  # one | per_key (a publishing channel per routing key)
    timeout: float = 300.0


@dataclass
class Stats:
    delivered: int = 0
    published: int = 0
    confirmed: int = 0
    confirm_frames: int = 0
    ack_frames: int = 0
    returns: int = 0
    nacks: int = 0


def retry_headers(route: str, seq: int, now_ms: int) -> dict[str, Any]:
    """The ``dlq-*`` headers the router adds to a first-failure retry (values alike)."""
    return {
        h.ROUTE: route,
        h.LAST_FAILED_AT: now_ms,
        h.FIRST_FAILED_AT: now_ms,
        h.DEATH_REASON: "rejected",
        h.ORIGIN_EXCHANGE: route,
        h.ORIGIN_ROUTING_KEY: route,
        h.ORIGIN_QUEUE: route,
        h.ATTEMPTS: 1,
        h.RETRY_DUE_AT: now_ms + 3_600_000,
        h.RETRY_DELAY_MS: 3_600_000,
        h.RETRY_TIER: "1h",
        h.PUBLISH_ID: seq,
    }


class _Publisher:
    """A channel in confirm mode and its publish seq -> global seq map."""

    def __init__(self) -> None:
        self.channel: Any = None
        self.seqs: list[int] = [0]  # channel publish seq -> global seq (both from 1)
        self.done = bytearray(1)
        self.upto = 0  # every channel seq up to here is confirmed


class WireClient:
    def __init__(self, cfg: WireConfig) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.tags: list[int] = [0]  # global seq -> delivery tag (seq starts at 1)
        self.done = bytearray(cfg.n + 2)  # confirmed global seqs
        self.acked_upto = 0
        self.rng = random.Random(12)
        self.channel: Any = None  # the consuming channel
        count = len(cfg.keys) if cfg.channels == "per_key" else 1
        self.publishers = [_Publisher() for _ in range(count)]
        self.failed: str | None = None
        params = pika.URLParameters(cfg.url)
        params.client_properties = {"connection_name": "dlq-router bench wire client"}
        self.connection = pika.SelectConnection(
            params,
            on_open_callback=self._on_open,
            on_open_error_callback=lambda _c, e: self._fail(f"cannot connect: {e}"),
            on_close_callback=lambda _c, _r: self.connection.ioloop.stop(),
        )
        if cfg.coalesce:
            Coalescer.install(self.connection)

    def run(self) -> Stats:
        self.connection.ioloop.call_later(self.cfg.timeout, lambda: self._fail("timeout"))
        self.connection.ioloop.start()
        if self.failed:
            raise SystemExit(f"wire client: {self.failed}")
        return self.stats

    def _fail(self, why: str) -> None:
        self.failed = why
        if self.connection.is_open:
            self.connection.close()
        else:
            self.connection.ioloop.stop()

    def _on_open(self, connection: Any) -> None:
        if self.cfg.channels == "per_key":
            connection.channel(on_open_callback=self._on_consume_channel)
            for i, pub in enumerate(self.publishers):
                connection.channel(on_open_callback=functools.partial(self._on_pub_channel, pub, i))
        else:
            connection.channel(on_open_callback=functools.partial(self._on_pub_channel, None, 0))

    def _on_consume_channel(self, channel: Any) -> None:
        self.channel = channel
        self._maybe_consume()

    def _on_pub_channel(self, pub: _Publisher | None, i: int, channel: Any) -> None:
        if pub is None:  # one channel consumes and publishes, as the router does
            pub = self.publishers[0]
            self.channel = channel
        channel.add_on_return_callback(self._on_return)
        callback = functools.partial(self._on_confirm, pub)
        channel.confirm_delivery(callback, callback=lambda _f: self._confirming(pub, channel))

    def _confirming(self, pub: _Publisher, channel: Any) -> None:
        pub.channel = channel
        self._maybe_consume()

    def _maybe_consume(self) -> None:
        if self.channel is None or any(p.channel is None for p in self.publishers):
            return
        # Per-consumer prefetch, as the router sets it (quorum queues refuse a global one).
        self.channel.basic_qos(
            prefetch_count=self.cfg.window,
            callback=lambda _f: self.channel.basic_consume(self.cfg.queue, self._on_message),
        )

    def _on_message(self, _ch: Any, method: Any, props: spec.BasicProperties, body: bytes) -> None:
        cfg, st = self.cfg, self.stats
        st.delivered += 1
        headers = props.headers or {}
        if cfg.strip_x_death:
            headers = h.strip_broker_headers(headers)
        seq = st.published + 1
        if cfg.add_dlq:
            headers = {**headers, **retry_headers(cfg.route, seq, int(time.time() * 1000))}
        props.headers = headers
        keys = cfg.keys
        k = self.rng.randrange(len(keys)) if len(keys) > 1 else 0
        pub = self.publishers[k] if len(self.publishers) > 1 else self.publishers[0]
        pub.channel.basic_publish(cfg.exchange, keys[k], body, props, mandatory=cfg.mandatory)
        pub.seqs.append(seq)
        pub.done.append(0)
        st.published = seq
        self.tags.append(method.delivery_tag)

    def _on_return(self, _ch: Any, _method: Any, _props: Any, _body: bytes) -> None:
        self.stats.returns += 1

    def _on_confirm(self, pub: _Publisher, frame: Any) -> None:
        m = frame.method
        st = self.stats
        st.confirm_frames += 1
        if isinstance(m, spec.Basic.Nack):
            st.nacks += 1
            self._fail("the broker nacked a publish")
            return
        first = pub.upto + 1 if m.multiple else m.delivery_tag
        newly = [pub.seqs[s] for s in range(first, m.delivery_tag + 1) if not pub.done[s]]
        for s in range(first, m.delivery_tag + 1):
            pub.done[s] = 1
        while pub.upto + 1 < len(pub.done) and pub.done[pub.upto + 1]:
            pub.upto += 1
        for g in newly:
            self.done[g] = 1
        st.confirmed += len(newly)
        if self.cfg.ack == "each":
            for g in newly:
                self.channel.basic_ack(self.tags[g])
                st.ack_frames += 1
            self.acked_upto = self._prefix()
        else:
            upto = self._prefix()
            if upto > self.acked_upto:
                self.channel.basic_ack(self.tags[upto], multiple=True)
                st.ack_frames += 1
                self.acked_upto = upto
        if st.confirmed >= self.cfg.n:
            self.connection.close()

    def _prefix(self) -> int:
        """The highest global seq below which every publish is confirmed."""
        s = self.acked_upto
        while s + 1 < len(self.done) and self.done[s + 1]:
            s += 1
        return s


def main() -> None:
    cfg = WireConfig(**json.loads(sys.argv[1]))
    stats = WireClient(cfg).run()
    n = max(1, stats.confirmed)
    out = {
        **vars(stats),
        "confirm_frames_per_msg": round(stats.confirm_frames / n, 4),
        "ack_frames_per_msg": round(stats.ack_frames / n, 4),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
