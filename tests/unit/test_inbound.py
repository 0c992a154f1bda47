"""``rawframes.Inbound``: the reader of a connection's bytes, as the router uses it.

A stream of frames as RabbitMQ sends them (deliveries to registered and unregistered
consumers, confirms, returns with content, heartbeats, another channel's frames interleaved
with content, bodies in several frames or none) is cut into reads at arbitrary points; every
registered delivery and every confirm must come out once, in order, with its bytes, and
every other frame must reach pika's own processing, decoded as pika decodes it, in order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pika
import pika.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import spec

from dlq_router.backends.rabbitmq import rawframes, wire
from tests.unit.fake_connection import FakeConnection

FAST, OTHER = 1, 2  # the router's channel, and another one
REGISTERED, UNKNOWN = "ctag-router", "ctag-cancelled"


def describe(value: Any) -> tuple[Any, ...]:
    """A frame as pika would hand it on: kind, channel, and what it carries."""
    if isinstance(value, pika.frame.Method):
        m = value.method
        return (
            "pika-method",
            value.channel_number,
            type(m).__name__,
            getattr(m, "delivery_tag", 0),
        )
    if isinstance(value, pika.frame.Header):
        props = value.properties
        table = props.table if isinstance(props, wire.Properties | rawframes.Content) else None
        return ("pika-header", value.channel_number, value.body_size, table)
    if isinstance(value, pika.frame.Body):
        return ("pika-body", value.channel_number, value.fragment)
    if isinstance(value, pika.frame.Heartbeat):
        return ("pika-heartbeat",)
    return ("pika-other", type(value).__name__)


def props(i: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id=f"m-{i}", delivery_mode=2, headers={"i": i, "x-death": [{"count": 1}]}
    )


def table_of(p: pika.BasicProperties) -> bytes:
    header = pika.frame.Header(1, 0, p).marshal()
    return wire.Properties.parse(header, 19, len(header) - 1).table or b""


@dataclass
class Stream:
    data: bytes
    expected: list[tuple[Any, ...]]


MAX_BODY = 50  # body frames are cut at this size, so some bodies take several frames


def content(channel: int, body: bytes, p: pika.BasicProperties) -> list[bytes]:
    frames = [pika.frame.Header(channel, len(body), p).marshal()]
    for start in range(0, len(body), MAX_BODY):
        frames.append(pika.frame.Body(channel, body[start : start + MAX_BODY]).marshal())
    return frames


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """Frames and, for each, what must come out of the reader."""
    frames: list[bytes] = []
    expected: list[tuple[Any, ...]] = []
    for i in range(draw(st.integers(1, 12))):
        event = draw(
            st.sampled_from(
                ["deliver", "deliver", "unknown", "ack", "nack", "return", "heartbeat", "other"]
            )
        )
        body = draw(st.binary(max_size=130))
        p = props(i)
        if event in ("deliver", "unknown"):
            tag = REGISTERED if event == "deliver" else UNKNOWN
            deliver = spec.Basic.Deliver(tag, 1000 + i, False, "ex", "rk")
            parts = [pika.frame.Method(FAST, deliver).marshal(), *content(FAST, body, p)]
            if draw(st.booleans()):  # another channel's frame amid the content
                at = draw(st.integers(1, len(parts)))
                other = pika.frame.Method(OTHER, spec.Basic.Ack(7, False)).marshal()
                parts.insert(at, other)
            frames += parts
            last_fast = max(n for n, part in enumerate(parts) if part[1:3] == b"\x00\x01")
            for n, part in enumerate(parts):
                value = rawframes.read_frame(part)[1]
                if event == "unknown" or value.channel_number == OTHER:
                    expected.append(describe(value))
                elif n == last_fast:  # the delivery is complete with its last frame
                    expected.append(("deliver", 1000 + i, REGISTERED, table_of(p), body))
        elif event in ("ack", "nack"):
            multiple = draw(st.booleans())
            method = (
                spec.Basic.Ack(i, multiple)
                if event == "ack"
                else spec.Basic.Nack(i, multiple, requeue=False)
            )
            frames.append(pika.frame.Method(FAST, method).marshal())
            expected.append(("confirm", event == "ack", i, multiple))
        elif event == "return":
            ret = spec.Basic.Return(312, "NO_ROUTE", "ex", "rk")
            parts = [pika.frame.Method(FAST, ret).marshal(), *content(FAST, body, p)]
            frames += parts
            expected += [describe(rawframes.read_frame(part)[1]) for part in parts]
        elif event == "heartbeat":
            frames.append(pika.frame.Heartbeat().marshal())
            expected.append(("pika-heartbeat",))
        else:
            method = pika.frame.Method(OTHER, spec.Basic.Deliver(REGISTERED, i, False, "", ""))
            frames.append(method.marshal())
            expected.append(describe(method))
    return Stream(b"".join(frames), expected)


def reader(
    content: bool = False,
) -> tuple[rawframes.Inbound, FakeConnection, list[tuple[Any, ...]]]:
    """The router's reader; with ``content``, a replay connection's (a consumer given
    ``Content``, and content headers that reach pika as ``Content`` too)."""
    conn = FakeConnection(describe)
    inbound = rawframes.install(conn, content=content)
    out = conn.frames  # one list: the order across fast and pika paths is checked too

    def deliver(tag: int, consumer: str, p: Any, body: bytes) -> None:
        assert type(p) is (rawframes.Content if content else wire.Properties)
        out.append(("deliver", tag, consumer, p.table, body))

    def confirm(ack: bool, tag: int, multiple: bool) -> None:
        out.append(("confirm", ack, tag, multiple))

    inbound.channel = FAST
    inbound.register(REGISTERED, deliver, content=content)
    inbound.confirms[FAST] = confirm
    return inbound, conn, out


@settings(max_examples=300, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 5000), max_size=8), content=st.booleans())
def test_every_frame_comes_out_once_in_order_however_the_reads_are_cut(
    stream: Stream, cuts: list[int], content: bool
) -> None:
    inbound, conn, out = reader(content)
    points = sorted({c % (len(stream.data) + 1) for c in cuts} | {0, len(stream.data)})
    for start, stop in itertools.pairwise(points):
        inbound(stream.data[start:stop])
    assert out == stream.expected
    assert conn._frame_buffer == b""
    assert conn.bytes_received == len(stream.data)


def test_a_delivery_in_one_read_and_byte_by_byte_give_the_same_result() -> None:
    body = bytes(range(101))  # three body frames, the last of one byte
    deliver = spec.Basic.Deliver(REGISTERED, 5, False, "ex", "rk")
    data = b"".join([pika.frame.Method(FAST, deliver).marshal(), *content(FAST, body, props(5))])
    for step in (len(data), 1):
        inbound, conn, out = reader()
        for at in range(0, len(data), step):
            inbound(data[at : at + step])
        assert out == [("deliver", 5, REGISTERED, table_of(props(5)), body)]
        assert conn.frames_received == 5


def test_an_unregistered_consumer_goes_to_pika_and_registration_can_be_undone() -> None:
    inbound, _conn, out = reader()
    deliver = spec.Basic.Deliver(REGISTERED, 9, False, "ex", "rk")
    data = b"".join([pika.frame.Method(FAST, deliver).marshal(), *content(FAST, b"x", props(9))])
    inbound.unregister(REGISTERED)
    inbound(data)
    assert [entry[0] for entry in out] == ["pika-method", "pika-header", "pika-body"]


def test_a_frame_without_its_end_octet_raises_as_in_pika() -> None:
    inbound, conn, _out = reader()
    bad = bytearray(pika.frame.Method(FAST, spec.Basic.Ack(1, False)).marshal())
    bad[-1] = 0
    with pytest.raises(pika.exceptions.InvalidFrameError):
        inbound(bytes(bad))
    assert conn._frame_buffer == bytes(bad)  # nothing consumed


def test_the_after_hook_runs_once_per_read() -> None:
    inbound, _conn, _out = reader()
    calls: list[int] = []
    inbound.after = lambda: calls.append(1)
    inbound(pika.frame.Heartbeat().marshal())
    inbound(b"\x08\x00")  # half a frame: kept for the next read
    assert len(calls) == 2
